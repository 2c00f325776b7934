"""What real clients send: plain JSON without a Content-Type, named versions, tritonclient, and a
schema-driven fuzzer against the server's own OpenAPI document (never a 5xx)."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys

import grpc
import httpx
import numpy as np
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc

from pillars.serving.demo import v2_request
from tests.serving.toy import CLASSES, toy_rows


def test_plain_json_without_content_type_is_json(served):
    body = json.dumps(v2_request(toy_rows(2))).encode()
    response = httpx.post(f"{served.http}/v2/models/toy/infer", content=body)  # httpx sets no Content-Type
    assert "content-type" not in response.request.headers
    assert response.status_code == 200, response.text
    assert {o["name"] for o in response.json()["outputs"]} == {"probabilities", "label", "class_index"}


def test_the_served_version_answers_by_number_and_any_other_is_404(served):
    base = f"{served.http}/v2/models/toy/versions"
    answer = httpx.post(f"{base}/1/infer", json=v2_request(toy_rows(1)))
    assert answer.status_code == 200 and answer.json()["model_version"] == "1"
    assert httpx.get(f"{base}/1").json()["versions"] == ["1"]
    assert httpx.get(f"{base}/1/ready").json() == {"name": "toy", "ready": True}
    for method, path in (("POST", "/2/infer"), ("GET", "/2"), ("GET", "/2/ready"), ("POST", "/latest/infer")):
        response = httpx.request(method, f"{base}{path}", json=v2_request(toy_rows(1)))
        assert response.status_code == 404, (path, response.text)
        assert "serves version 1" in response.text


def test_grpc_model_version_is_answered_for_the_served_one_and_not_found_otherwise(served):
    rows = toy_rows(2)

    async def infer(version: str):
        async with grpc.aio.insecure_channel(served.grpc) as channel:
            stub = grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(channel)
            request = pb.ModelInferRequest(
                model_name="toy", model_version=version,
                inputs=[pb.ModelInferRequest.InferInputTensor(name="input-0", datatype="FP32", shape=[2, 4])],
                raw_input_contents=[rows.tobytes()])
            return await stub.ModelInfer(request)

    assert asyncio.run(infer("1")).model_version == "1"
    with pytest.raises(grpc.aio.AioRpcError) as error:
        asyncio.run(infer("7"))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND and "serves version 1" in error.value.details()


TRITON_GRPC = """
import sys
import numpy as np
import tritonclient.grpc as triton
rows = np.asarray(eval(sys.argv[2]), dtype=np.float32)
client = triton.InferenceServerClient(sys.argv[1])
tensor = triton.InferInput("input-0", list(rows.shape), "FP32")
tensor.set_data_from_numpy(rows)
print([v.decode() for v in client.infer("toy", [tensor], model_version="1").as_numpy("label").tolist()])
try:
    client.infer("toy", [tensor], model_version="2")
except triton.InferenceServerException as e:
    print(e.status(), e.message())
client.close()
"""


def test_tritonclient_http_json_and_binary_and_grpc_with_a_version(served):
    tritonclient_http = pytest.importorskip("tritonclient.http")
    rows = toy_rows(3, seed=5)
    expected = httpx.post(f"{served.http}/v2/models/toy/infer", json=v2_request(rows)).json()
    expected_labels = next(o for o in expected["outputs"] if o["name"] == "label")["data"]

    http = tritonclient_http.InferenceServerClient(served.http.removeprefix("http://"))
    try:
        assert http.is_server_ready() and http.is_model_ready("toy", "1")
        for binary in (False, True):
            tensor = tritonclient_http.InferInput("input-0", list(rows.shape), "FP32")
            tensor.set_data_from_numpy(rows, binary_data=binary)
            outputs = [tritonclient_http.InferRequestedOutput("label", binary_data=binary),
                       tritonclient_http.InferRequestedOutput("probabilities", binary_data=binary)]
            result = http.infer("toy", [tensor], model_version="1", outputs=outputs)
            labels = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("label").tolist()]
            assert labels == expected_labels and set(labels) <= set(CLASSES)
            assert result.as_numpy("probabilities").shape == (3, 3)
    finally:
        http.close()

    # tritonclient.grpc registers its own grpc_service.proto, which clashes with KServe's in one process.
    result = subprocess.run([sys.executable, "-c", TRITON_GRPC, served.grpc, repr(rows.tolist())],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    labels, refused = result.stdout.strip().splitlines()
    assert eval(labels) == expected_labels
    assert "NOT_FOUND" in refused and "serves version 1" in refused


def test_schemathesis_finds_no_server_error(served, tmp_path):
    """Every operation of the server's own /openapi.json, fuzzed from its schema: no 5xx."""
    command = [sys.executable, "-m", "schemathesis.cli", "run", f"{served.http}/openapi.json",
               "--checks", "not_a_server_error", "--max-examples", "10", "--seed", "1",
               "--request-timeout", "20", "--workers", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    sent = re.search(r"(\d+) generated, (\d+) passed", result.stdout)
    assert sent and int(sent.group(2)) >= 100 and int(sent.group(1)) == int(sent.group(2)), result.stdout[-2000:]
    ok = httpx.post(f"{served.http}/v2/models/toy/infer", json=v2_request(np.ones((1, 4))))
    assert ok.status_code == 200 and served.process.proc.poll() is None
