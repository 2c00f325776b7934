"""The server speaks KServe V1, Open Inference Protocol V2 REST and V2 gRPC, as the specs say."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest
from kserve import InferenceGRPCClient, InferInput, InferRequest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

from pillars.components.model.predictor import load_predictor
from pillars.serving.demo import query_once, v2_request
from tests.serving.toy import CLASSES, N_FEATURES, toy_rows


def test_v2_health_and_server_metadata(served):
    assert httpx.get(f"{served.http}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{served.http}/v2/health/ready").json() == {"ready": True}
    assert httpx.get(f"{served.http}/v2/models/toy/ready").json() == {"name": "toy", "ready": True}
    meta = httpx.get(f"{served.http}/v2").json()
    assert meta["name"] and meta["version"]


def test_v2_model_metadata_lists_the_real_tensors(served):
    meta = httpx.get(f"{served.http}/v2/models/toy").json()
    assert meta["name"] == "toy"
    assert meta["inputs"] == [{"name": "input-0", "datatype": "FP32", "shape": [-1, N_FEATURES],
                               "parameters": {"optional": False}}]
    assert meta["outputs"] == [  # in the order of the task's signature
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
        {"name": "class_index", "datatype": "INT64", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(CLASSES)]},
    ]


def test_v2_infer_returns_named_typed_outputs_matching_the_model(served, registered_model, mlflow_server):
    rows = toy_rows(5, seed=1)
    body = v2_request(rows) | {"id": "req-1"}
    answer = httpx.post(f"{served.http}/v2/models/toy/infer", json=body).json()
    assert answer["id"] == "req-1" and answer["model_name"] == "toy" and answer["model_version"] == "1"
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert outputs["probabilities"]["shape"] == [5, 3] and outputs["probabilities"]["datatype"] == "FP32"
    assert outputs["label"]["datatype"] == "BYTES" and outputs["class_index"]["datatype"] == "INT64"
    probs = np.asarray(outputs["probabilities"]["data"]).reshape(5, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert outputs["label"]["data"] == [CLASSES[i] for i in outputs["class_index"]["data"]]
    assert outputs["class_index"]["data"] == probs.argmax(axis=1).tolist()


def test_v2_infer_returns_only_requested_outputs(served):
    body = v2_request(toy_rows(2)) | {"outputs": [{"name": "label"}]}
    answer = httpx.post(f"{served.http}/v2/models/toy/infer", json=body).json()
    assert [o["name"] for o in answer["outputs"]] == ["label"]


def test_v2_accepts_image_style_and_integer_inputs(served):
    ints = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "INT64", "data": [[5, 6, 4, 5]]}]}
    assert httpx.post(f"{served.http}/v2/models/toy/infer", json=ints).status_code == 200


def test_v1_model_health_and_predict(served):
    assert httpx.get(f"{served.http}/v1/models/toy").json() == {"name": "toy", "ready": True}
    rows = toy_rows(3, seed=2)
    answer = httpx.post(f"{served.http}/v1/models/toy:predict", json={"instances": rows.tolist()}).json()
    assert len(answer["predictions"]) == 3
    first = answer["predictions"][0]
    assert set(first) == {"label", "class_index", "probabilities"} and first["label"] in CLASSES
    by_name = [{f"f{i}": float(v) for i, v in enumerate(row)} for row in rows]
    named = httpx.post(f"{served.http}/v1/models/toy:predict", json={"instances": by_name}).json()
    assert [p["label"] for p in named["predictions"]] == [p["label"] for p in answer["predictions"]]
    # Keys in any order, rows and objects mixed, an object under the input's name: each row in label order.
    mixed = [dict(reversed(by_name[0].items())), rows[1].tolist(), {"input-0": by_name[2]}]
    again = httpx.post(f"{served.http}/v1/models/toy:predict", json={"instances": mixed})
    assert again.status_code == 200, again.text
    assert [p["probabilities"] for p in again.json()["predictions"]] == [
        p["probabilities"] for p in answer["predictions"]]
    for instance, fragment in (({"f0": 1, "f1": 2, "f2": 3}, "instance 0 lacks feature(s) ['f3']"),
                               (by_name[0] | {"f9": 1}, "instance 0 has unknown feature(s) ['f9']")):
        refused = httpx.post(f"{served.http}/v1/models/toy:predict", json={"instances": [instance]})
        assert refused.status_code == 400 and fragment in refused.json()["error"], refused.text


def test_grpc_all_six_rpcs_with_kserve_client(served):
    rows = toy_rows(4, seed=3)

    async def calls():
        async with InferenceGRPCClient(served.grpc, timeout=10, retries=0) as client:
            live = await client.is_server_live()
            ready = await client.is_server_ready()
            model_ready = await client.is_model_ready("toy")
            server_meta = await client._client_stub.ServerMetadata(pb.ServerMetadataRequest())
            model_meta = await client._client_stub.ModelMetadata(pb.ModelMetadataRequest(name="toy"))
            tensor = InferInput("input-0", list(rows.shape), "FP32")
            tensor.set_data_from_numpy(rows, binary_data=True)  # raw_input_contents
            result = await client.infer(InferRequest(model_name="toy", infer_inputs=[tensor]))
            return live, ready, model_ready, server_meta, model_meta, result

    live, ready, model_ready, server_meta, model_meta, result = asyncio.run(calls())
    assert live and ready and model_ready
    assert server_meta.name
    assert [t.name for t in model_meta.inputs] == ["input-0"]
    assert [t.name for t in model_meta.outputs] == ["label", "class_index", "probabilities"]
    outputs = {o.name: o.as_numpy() for o in result.outputs}
    assert outputs["probabilities"].shape == (4, 3)
    assert outputs["class_index"].tolist() == outputs["probabilities"].argmax(axis=1).tolist()


def test_rest_and_grpc_give_the_same_answer_as_the_model_in_process(served, registered_model, mlflow_server,
                                                                     tmp_path):
    import mlflow

    mlflow.set_tracking_uri(mlflow_server)
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri="models:/toy/1", dst_path=str(tmp_path))
    finally:
        mlflow.set_tracking_uri(None)
    expected = load_predictor(local).predict({"input-0": toy_rows(1, seed=4)})
    http_answer, grpc_answer = query_once(served.http, served.grpc, "toy", toy_rows(1, seed=4))
    assert http_answer["label"] == grpc_answer["label"] == expected["label"].tolist()
    np.testing.assert_allclose(http_answer["probabilities"], expected["probabilities"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grpc_answer["probabilities"], expected["probabilities"], rtol=1e-5, atol=1e-7)


def test_regressor_returns_values(served_with_auth):
    body = {"inputs": [{"name": "input-0", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}]}
    answer = httpx.post(f"{served_with_auth.http}/v2/models/reg/infer", json=body,
                        headers=served_with_auth.headers).json()
    assert [(o["name"], o["datatype"], o["shape"]) for o in answer["outputs"]] == [("value", "FP32", [2])]
    v1 = httpx.post(f"{served_with_auth.http}/v1/models/reg:predict", json={"instances": [[1, 2, 3]]},
                    headers=served_with_auth.headers).json()
    assert v1["predictions"] == pytest.approx(answer["outputs"][0]["data"][:1], rel=1e-5)


def test_the_downloaded_model_is_this_servers_only_copy(served):
    """A download left by a server that is gone was removed at start; only this server's copy is there (the
    fixture checks that stopping removes it too)."""
    assert served.temp_dir is not None
    copies = sorted(p.name for p in served.temp_dir.iterdir() if p.name.startswith("pillars-model-"))
    ours = [c for c in copies if c != "pillars-model-notes"]  # not one of ours by its name: kept
    assert len(copies) == 2 and len(ours) == 1 and ours[0].startswith(f"pillars-model-{served.process.proc.pid}-")
