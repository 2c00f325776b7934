"""Any task's model is served by its signature: a toy task with a BYTES text, an INT64 id, a variable-length
FP32 history and an optional k, over V1, V2 REST (JSON and binary) and V2 gRPC with real clients; bad
inputs are 4xx naming the input; oversize requests are refused before decoding."""

from __future__ import annotations

import asyncio
import json
import struct
import subprocess
import sys
import time
from collections.abc import Iterator

import grpc
import httpx
import numpy as np
import pytest
from kserve import InferenceGRPCClient, InferInput, InferRequest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc

from pillars.components.model.predictor import Predictor, load_predictor
from pillars.serving.demo import query_once, v2_request
from tests.serving.conftest import Served, start_server
from tests.serving.test_metrics_and_batching import scrape
from tests.serving.toy_task import MAX_HISTORY, MAX_TEXT_BYTES, make_toy_model, toy_inputs

NAME = "multi"
MAX_ROWS = 64


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory):
    return make_toy_model(tmp_path_factory.mktemp("multi") / "model")


@pytest.fixture(scope="module")
def predictor(model_dir) -> Predictor:
    return load_predictor(model_dir)


@pytest.fixture(scope="module")
def multi(model_dir, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    log = tmp_path_factory.mktemp("multi-log") / "server.log"
    server = start_server(["--model_dir", str(model_dir), "--model_name", NAME, "--max_rows", str(MAX_ROWS),
                           "--drift_window", "100", "--drift_min_rows", "50", "--drift_interval_s", "0.2",
                           "--max_latency_ms", "5"], log, model=NAME)
    yield server
    server.process.stop()


def _url(server: Served) -> str:
    return f"{server.http}/v2/models/{NAME}/infer"


def _outputs(answer: dict) -> dict[str, np.ndarray]:
    return {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in answer["outputs"]}


def _assert_same(got: dict, expected: dict) -> None:
    assert set(got) == set(expected)
    for name, value in expected.items():
        if value.dtype.kind == "f":
            np.testing.assert_allclose(np.asarray(got[name], dtype=np.float32), value, rtol=1e-5, atol=1e-6)
        else:
            assert np.asarray(got[name]).tolist() == value.tolist(), name


EXPECTED_INPUTS = [
    {"name": "text", "datatype": "BYTES", "shape": [-1],
     "parameters": {"optional": False, "max_bytes": MAX_TEXT_BYTES}},
    {"name": "user_id", "datatype": "INT64", "shape": [-1], "parameters": {"optional": False}},
    {"name": "history", "datatype": "FP32", "shape": [-1, -1],
     "parameters": {"optional": False, "max_length": MAX_HISTORY}},
    {"name": "k", "datatype": "INT64", "shape": [-1], "parameters": {"optional": True}}]


def _grpc_parameters(raw: bytes) -> dict[str, object]:
    """Field 4 of a gRPC ``TensorMetadata`` (MLServer's ``map<string, InferParameter> parameters``), read
    off the wire by hand: KServe's proto keeps it as an unknown field."""
    def fields(data: bytes):
        i = 0
        while i < len(data):
            key, i = _read_varint(data, i)
            if key & 7 == 0:
                value, i = _read_varint(data, i)
                yield key >> 3, value
            else:
                size, i = _read_varint(data, i)
                yield key >> 3, data[i:i + size]
                i += size

    out: dict[str, object] = {}
    for number, entry in fields(raw):
        if number == 4:
            pair = dict(fields(entry))
            (kind, value), = dict(fields(pair[2])).items()
            out[pair[1].decode()] = bool(value) if kind == 1 else value
    return out


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        value |= (data[i] & 0x7F) << shift
        shift += 7
        i += 1
        if data[i - 1] < 0x80:
            return value, i


def test_metadata_lists_the_signature_with_what_a_valid_request_needs(multi):
    meta = httpx.get(f"{multi.http}/v2/models/{NAME}").json()
    assert meta["inputs"] == EXPECTED_INPUTS

    async def grpc_metadata():
        async with grpc.aio.insecure_channel(multi.grpc) as channel:
            stub = grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(channel)
            return await stub.ModelMetadata(pb.ModelMetadataRequest(name=NAME))

    over_grpc = asyncio.run(grpc_metadata())
    assert [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape),
             "parameters": _grpc_parameters(t.SerializeToString())} for t in over_grpc.inputs] == EXPECTED_INPUTS
    assert meta["outputs"] == [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                               {"name": "item_ids", "datatype": "INT64", "shape": [-1, -1]},
                               {"name": "scores", "datatype": "FP32", "shape": [-1, -1]}]


@pytest.mark.parametrize("history,k", [(4, None), (7, 3), (1, 1)])
def test_v2_json_answers_as_the_model_does_in_process(multi, predictor, history, k):
    inputs = toy_inputs(5, seed=history, history=history, k=k)
    answer = httpx.post(_url(multi), json=v2_request(inputs) | {"id": "r1"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["id"] == "r1"
    got = _outputs(answer.json())
    assert got["item_ids"].shape == (5, k or 2) and got["label"].dtype.kind == "U"
    _assert_same(got, predictor.predict(inputs))


def test_v1_takes_objects_keyed_by_input_name(multi, predictor):
    inputs = toy_inputs(3, seed=4, k=3)
    instances = [{"text": str(inputs["text"][i]), "user_id": int(inputs["user_id"][i]),
                  "history": inputs["history"][i].tolist(), "k": 3} for i in range(3)]
    answer = httpx.post(f"{multi.http}/v1/models/{NAME}:predict", json={"instances": instances})
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    expected = predictor.predict(inputs)
    assert [p["label"] for p in predictions] == expected["label"].tolist()
    assert [p["item_ids"] for p in predictions] == expected["item_ids"].tolist()
    np.testing.assert_allclose([p["scores"] for p in predictions], expected["scores"], rtol=1e-5, atol=1e-6)


def test_tritonclient_http_json_and_binary(multi, predictor):
    import tritonclient.http as triton

    inputs = toy_inputs(4, seed=5, history=3, k=3)
    expected = predictor.predict(inputs)
    client = triton.InferenceServerClient(multi.http.removeprefix("http://"))
    try:
        for binary in (False, True):
            tensors = []
            for name, datatype, value in (("text", "BYTES", inputs["text"].astype(object)),
                                          ("user_id", "INT64", inputs["user_id"]),
                                          ("history", "FP32", inputs["history"]), ("k", "INT64", inputs["k"])):
                tensor = triton.InferInput(name, list(value.shape), datatype)
                tensor.set_data_from_numpy(value, binary_data=binary)
                tensors.append(tensor)
            outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("label", "item_ids", "scores")]
            result = client.infer(NAME, tensors, outputs=outputs)
            labels = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("label").tolist()]
            assert labels == expected["label"].tolist()
            assert result.as_numpy("item_ids").tolist() == expected["item_ids"].tolist()
            np.testing.assert_allclose(result.as_numpy("scores"), expected["scores"], rtol=1e-5, atol=1e-6)
    finally:
        client.close()


def test_kserve_grpc_client_with_contents_and_raw_bytes(multi, predictor):
    inputs = toy_inputs(3, seed=6, history=5)
    expected = predictor.predict(inputs)

    async def infer(binary: bool):
        tensors = []
        for name, datatype, value in (("text", "BYTES", inputs["text"].astype(object)),
                                      ("user_id", "INT64", inputs["user_id"]), ("history", "FP32", inputs["history"])):
            tensor = InferInput(name, list(value.shape), datatype)
            tensor.set_data_from_numpy(value, binary_data=binary)
            tensors.append(tensor)
        async with InferenceGRPCClient(multi.grpc, timeout=10, retries=0) as client:
            result = await client.infer(InferRequest(model_name=NAME, infer_inputs=tensors))
        return {o.name: o.as_numpy() for o in result.outputs}

    for binary in (False, True):
        got = asyncio.run(infer(binary))
        got["label"] = np.asarray([v.decode() if isinstance(v, bytes) else v for v in got["label"].tolist()])
        _assert_same(got, expected)
    http_answer, grpc_answer = query_once(multi.http, multi.grpc, NAME, inputs)
    assert http_answer["label"] == grpc_answer["label"] == expected["label"].tolist()
    assert http_answer["item_ids"] == grpc_answer["item_ids"] == expected["item_ids"].tolist()


TRITON_GRPC = """
import sys
import numpy as np
import tritonclient.grpc as triton
client = triton.InferenceServerClient(sys.argv[1])
tensors = [triton.InferInput("text", [2], "BYTES"), triton.InferInput("user_id", [2], "INT64"),
           triton.InferInput("history", [2, 3], "FP32")]
tensors[0].set_data_from_numpy(np.array(["good great", "bad"], dtype=object))
tensors[1].set_data_from_numpy(np.array([1, 2], dtype=np.int64))
tensors[2].set_data_from_numpy(np.ones((2, 3), dtype=np.float32))
result = client.infer("multi", tensors)
print([v.decode() for v in result.as_numpy("label").tolist()], result.as_numpy("item_ids").tolist())
tensors[1].set_data_from_numpy(np.array([1, 99], dtype=np.int64))
try:
    client.infer("multi", tensors)
except triton.InferenceServerException as e:
    print(e.status(), e.message())
client.close()
"""


def test_tritonclient_grpc_raw_bytes_and_an_unknown_id(multi, predictor):
    # tritonclient.grpc registers its own grpc_service.proto, which clashes with KServe's in one process.
    result = subprocess.run([sys.executable, "-c", TRITON_GRPC, multi.grpc], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    answer, refused = result.stdout.strip().splitlines()
    expected = predictor.predict({"text": np.array(["good great", "bad"]), "user_id": np.array([1, 2]),
                                  "history": np.ones((2, 3), dtype=np.float32)})
    assert answer == f"{expected['label'].tolist()} {expected['item_ids'].tolist()}"
    assert "INVALID_ARGUMENT" in refused and "user_id" in refused and "99" in refused


def _tensor(name, datatype, shape, data):
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


GOOD = [_tensor("text", "BYTES", [2], ["good", "bad fine"]), _tensor("user_id", "INT64", [2], [1, 2]),
        _tensor("history", "FP32", [2, 2], [0.5, 1, 2, 3])]


def _with(name, tensor=None):
    """GOOD with input ``name`` replaced by ``tensor`` (or left out)."""
    return {"inputs": [t for t in GOOD if t["name"] != name] + ([tensor] if tensor else [])}


BAD = [
    ("unknown user id (the task's encode)", _with("user_id", _tensor("user_id", "INT64", [2], [1, 99])), 400,
     "user_id"),
    ("empty text (the task's encode)", _with("text", _tensor("text", "BYTES", [2], ["good", " "])), 400, "text"),
    ("k out of range (the task's encode)", {"inputs": GOOD + [_tensor("k", "INT64", [2], [0, 0])]}, 400, "'k'"),
    ("text as numbers", _with("text", _tensor("text", "FP32", [2], [1, 2])), 400, "text"),
    ("text not strings", _with("text", _tensor("text", "BYTES", [2], [1, 2])), 400, "text"),
    ("ids as floats", _with("user_id", _tensor("user_id", "FP32", [2], [1, 2])), 400, "user_id"),
    ("ids with fractions", _with("user_id", _tensor("user_id", "INT64", [2], [1.5, 2])), 400, "user_id"),
    ("history too long", _with("history", _tensor("history", "FP32", [2, MAX_HISTORY + 1],
                                                  [0.0] * 2 * (MAX_HISTORY + 1))), 400, "history"),
    ("history of nothing", _with("history", _tensor("history", "FP32", [2, 0], [])), 400, "history"),
    ("history NaN", _with("history", _tensor("history", "FP32", [2, 2], [1, "NaN", 2, 3])), 400, "history"),
    ("history overflows FP32", _with("history", _tensor("history", "FP64", [2, 2], [1, 1e300, 2, 3])), 400,
     "history"),
    ("missing input", _with("user_id"), 400, "'user_id' is missing"),
    ("unknown input", {"inputs": GOOD + [_tensor("color", "BYTES", [2], ["red", "blue"])]}, 400, "color"),
    ("rows differ", _with("user_id", _tensor("user_id", "INT64", [3], [1, 2, 3])), 400, "user_id"),
    ("text too long", _with("text", _tensor("text", "BYTES", [2], ["good", "a" * (MAX_TEXT_BYTES + 1)])), 400,
     "text"),
    ("input twice", {"inputs": GOOD + [GOOD[0]]}, 400, "twice"),
    ("too many rows", _with("history", _tensor("history", "FP32", [MAX_ROWS + 1, 2], [0.0])), 413, "--max_rows"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input_is_4xx_naming_the_input(multi, case):
    _, body, status, fragment = case
    response = httpx.post(_url(multi), json=body)
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"], response.text


@pytest.mark.parametrize("instances,fragment", [
    ([["good", 1, [1.0]]], "keyed by input name"),
    ([{"text": "good", "user_id": 1}], "'history' is missing"),
    ([{"text": "good", "user_id": 1, "history": [1.0], "k": 2}, {"text": "bad", "user_id": 1, "history": [2.0]}],
     "'k' is missing in instance 1"),
    ([{"text": "good", "user_id": 7, "history": [1.0]}], "user_id"),
    ([{"text": "good", "user_id": 1, "history": [1.0], "color": 1}], "color"),
    ([{"text": "good", "user_id": 1, "history": [1.0, 2.0]}, {"text": "bad", "user_id": 2, "history": [1.0]}],
     "'history': instances have different lengths (shapes); a batch is one array: pad to one length or "
     "send one instance per request"),
])
def test_bad_v1_input_is_400_naming_the_input(multi, instances, fragment):
    response = httpx.post(f"{multi.http}/v1/models/{NAME}:predict", json={"instances": instances})
    assert response.status_code == 400, response.text
    assert fragment in response.json()["error"]


def test_grpc_bad_input_is_invalid_argument_naming_the_input(multi):
    async def infer(user_ids):
        async with grpc.aio.insecure_channel(multi.grpc) as channel:
            stub = grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(channel)
            n = len(user_ids)
            tensors = [pb.ModelInferRequest.InferInputTensor(name="text", datatype="BYTES", shape=[n]),
                       pb.ModelInferRequest.InferInputTensor(name="user_id", datatype="INT64", shape=[n]),
                       pb.ModelInferRequest.InferInputTensor(name="history", datatype="FP32", shape=[n, 1])]
            tensors[0].contents.bytes_contents.extend([b"good"] * n)
            tensors[1].contents.int64_contents.extend(user_ids)
            tensors[2].contents.fp32_contents.extend([1.0] * n)
            return await stub.ModelInfer(pb.ModelInferRequest(model_name=NAME, inputs=tensors))

    assert asyncio.run(infer([1, 2])).outputs
    with pytest.raises(grpc.aio.AioRpcError) as error:
        asyncio.run(infer([1, 42]))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "user_id" in error.value.details()


def _binary(tensors: list[tuple[str, str, list[int], bytes]]) -> tuple[bytes, dict[str, str]]:
    header = json.dumps({"inputs": [{"name": n, "datatype": d, "shape": s, "parameters": {"binary_data_size": len(b)}}
                                    for n, d, s, b in tensors]}).encode()
    return header + b"".join(b for *_, b in tensors), {"inference-header-content-length": str(len(header))}


def _strings(*values: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def test_binary_strings_are_read_by_their_length_prefixes(multi, predictor):
    history = np.array([[1, 2], [3, 4]], dtype=np.float32)
    body, headers = _binary([("text", "BYTES", [2], _strings(b"good", "gr\u00e9at bad".encode())),
                             ("user_id", "INT64", [2], np.array([0, 4], dtype="<i8").tobytes()),
                             ("history", "FP32", [2, 2], history.tobytes())])
    answer = httpx.post(_url(multi), content=body, headers=headers)
    assert answer.status_code == 200, answer.text
    expected = predictor.predict({"text": np.array(["good", "gr\u00e9at bad"]), "user_id": np.array([0, 4]),
                                  "history": history})
    _assert_same(_outputs(answer.json()), expected)
    for strings, fragment in ((_strings(b"good", b"\xff\xfe"), "not UTF-8"),
                              (_strings(b"good") + struct.pack("<I", 50) + b"x", "ends inside element 1"),
                              (_strings(b"good", b"a" * (MAX_TEXT_BYTES + 1)), "longer than 64 bytes")):
        body, headers = _binary([("text", "BYTES", [2], strings),
                                 ("user_id", "INT64", [2], np.array([0, 4], dtype="<i8").tobytes()),
                                 ("history", "FP32", [2, 2], history.tobytes())])
        refused = httpx.post(_url(multi), content=body, headers=headers)
        assert refused.status_code == 400 and "'text'" in refused.text and fragment in refused.text, refused.text


def test_oversize_requests_are_refused_before_decoding(multi):
    rows = 100_000  # far beyond --max_rows 64, declared in a small header; the data is never read
    body, headers = _binary([("text", "BYTES", [rows], _strings(*[b"good"] * rows)),
                             ("user_id", "INT64", [rows], np.zeros(rows, dtype="<i8").tobytes()),
                             ("history", "FP32", [rows, 1], np.zeros(rows, dtype="<f4").tobytes())])
    refused = httpx.post(_url(multi), content=body, headers=headers)
    assert refused.status_code == 413 and f"{rows} rows" in refused.text
    # JSON: the limit follows the signature (64 rows of a 64-byte text, an id, 8 history values and k)
    padded = json.dumps(v2_request(toy_inputs(2))).encode()[:-1] + b" " * 300_000 + b"}"
    too_long = httpx.post(_url(multi), content=padded, headers={"content-type": "application/json"})
    assert too_long.status_code == 413 and "--max_rows" in too_long.text
    assert httpx.post(_url(multi), content=padded.replace(b" " * 300_000, b"")).status_code == 200

    async def grpc_big():  # the message limit follows the signature too: gRPC refuses it unparsed
        async with grpc.aio.insecure_channel(multi.grpc, options=[("grpc.max_send_message_length", -1)]) as channel:
            stub = grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(channel)
            tensor = pb.ModelInferRequest.InferInputTensor(name="text", datatype="BYTES", shape=[1])
            return await stub.ModelInfer(pb.ModelInferRequest(model_name=NAME, inputs=[tensor],
                                                              raw_input_contents=[b"x" * 500_000]))

    with pytest.raises(grpc.aio.AioRpcError) as error:
        asyncio.run(grpc_big())
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_concurrent_requests_of_different_shapes_each_get_their_own_answer(multi, predictor):
    cases = [toy_inputs(2, seed=s, history=1 + s % 4, k=None if s % 3 else 3) for s in range(24)]
    cases[5]["user_id"][1] = 77  # one bad request among them fails alone

    async def burst():
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=24)) as client:
            return await asyncio.gather(*(client.post(_url(multi), json=v2_request(c)) for c in cases))

    answers = asyncio.run(burst())
    for i, (inputs, answer) in enumerate(zip(cases, answers, strict=True)):
        if i == 5:
            assert answer.status_code == 400 and "77" in answer.text
            continue
        assert answer.status_code == 200, answer.text
        _assert_same(_outputs(answer.json()), predictor.predict(inputs))


def test_drift_is_measured_on_the_tasks_drift_features(multi):
    with httpx.Client(timeout=30) as client:
        for seed in range(10):
            assert client.post(_url(multi), json=v2_request(toy_inputs(10, seed=seed))).status_code == 200
    deadline = time.monotonic() + 20
    while True:
        series = scrape(multi)
        jsd = {dict(k)["feature"]: v for k, v in series.get("pillars_drift_feature_jsd", {}).items()
               if dict(k)["model"] == NAME}
        if jsd or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert set(jsd) == {"words", "history_mean", "history_length"}, series.get("pillars_drift_window_rows")
    rows = {dict(k)["model"]: v for k, v in series["pillars_drift_window_rows"].items()}
    assert rows[NAME] >= 50


def test_fuzzed_multi_input_requests_never_get_a_5xx(multi):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    leaves = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=80)
              | st.binary(max_size=8).map(lambda b: b.decode("latin-1")))
    values = st.recursive(leaves, lambda c: st.lists(c, max_size=6), max_leaves=30)
    tensor = st.fixed_dictionaries(
        {"name": st.sampled_from(["text", "user_id", "history", "k", "x"]),
         "datatype": st.sampled_from(["BYTES", "INT64", "FP32", "FP16", "UINT8", "BOOL", "bytes"]),
         "shape": st.lists(st.integers(0, 10) | st.sampled_from([-1, 2**40]), min_size=0, max_size=3)},
        optional={"data": values, "parameters": st.fixed_dictionaries(
            {"binary_data_size": st.integers(-1, 200) | values})})
    statuses: list[int] = []
    client = httpx.Client(timeout=30)

    @settings(max_examples=400, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(inputs=st.lists(tensor, max_size=5), tail=st.binary(max_size=40), binary=st.booleans())
    def send(inputs, tail, binary):
        header = json.dumps({"inputs": inputs}).encode()
        headers = {"inference-header-content-length": str(len(header))} if binary else {}
        response = client.post(_url(multi), content=header + (tail if binary else b""), headers=headers)
        statuses.append(response.status_code)
        assert response.status_code < 500, (response.status_code, response.text, inputs)

    try:
        send()
    finally:
        client.close()
    assert sum(400 <= s < 500 for s in statuses) > 0.9 * len(statuses)
    assert httpx.post(_url(multi), json=v2_request(toy_inputs(2))).status_code == 200
