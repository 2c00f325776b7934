"""The fast V2 path's responses are byte for byte what KServe's ``InferResponse`` gives (REST JSON, REST with
the binary extension, and gRPC)."""

from __future__ import annotations

import asyncio
import struct

import numpy as np
import orjson
import pytest
from kserve.model_repository import ModelRepository
from kserve.protocol.dataplane import DataPlane

from pillars.components.errors import PillarsError
from pillars.components.task.contract import Signature, TensorSpec, numpy_dtype
from pillars.serving.model import PillarsModel
from pillars.serving.protocol import codec, fast_path
from pillars.serving.protocol.rest import serving_error_handler
from pillars.serving.settings import ServingSettings
from tests.serving.toy import make_classifier, toy_rows

SIGNATURE = Signature(
    inputs=(TensorSpec("x", "FP32", (3,)),),
    outputs=(TensorSpec("probabilities", "FP32", (2,)), TensorSpec("class_index", "INT64"),
             TensorSpec("label", "BYTES"), TensorSpec("value", "FP64"), TensorSpec("flag", "BOOL")))
OUTPUTS = {
    "probabilities": np.array([[0.1, 0.9], [1 / 3, 2 / 3]], dtype=np.float32),
    "class_index": np.array([1, 0], dtype=np.int64),
    "label": np.array(["malignant", "bénin ✓"]),
    "value": np.array([1e-300, -2.5]),
    "flag": np.array([True, False]),
}


def _batch(**kwargs) -> codec.Batch:
    return codec.Batch({"x": np.zeros((2, 3), np.float32)}, "v2", **kwargs)


def _kserve_rest(batch: codec.Batch, outputs=OUTPUTS) -> tuple[bytes, dict[bytes, bytes]]:
    """What the routed path answers: KServe's ``InferResponse.to_rest`` as ``V2Routes.infer`` sends it."""
    encoded, json_size = codec.encode_v2(batch, outputs, SIGNATURE, "m", "3").to_rest()
    if json_size is None:
        return orjson.dumps(encoded), {b"content-type": b"application/json"}
    return encoded, {b"content-type": b"application/octet-stream",
                     b"inference-header-content-length": str(json_size).encode()}


ALL = [s.name for s in SIGNATURE.outputs]


@pytest.mark.parametrize("kwargs", [
    {"request_id": "r-1", "outputs": ALL},
    {"request_id": "r-2", "outputs": ["label", "class_index"]},
    {"request_id": "b-1", "outputs": ALL, "binary_outputs": True},
    {"request_id": "b-2", "outputs": ["label", "probabilities"], "binary_outputs": True},
    {"request_id": "p-1", "outputs": ["probabilities", "label"],
     "output_parameters": {"probabilities": {"binary_data": True}, "label": {}}},
    {"request_id": "p-2", "outputs": ALL, "binary_outputs": True,  # per output overrides the request's flag
     "output_parameters": {"label": {"binary_data": True}, "flag": {"binary_data": False}, "value": {}}},
    {"request_id": "p-3", "outputs": ["value", "flag"],
     "output_parameters": {"value": {"binary_data": True}, "flag": {"binary_data": True}}},
    {"request_id": "p-4", "outputs": ["class_index"], "output_parameters": {"class_index": {}}},
])
def test_rest_response_is_kserves_byte_for_byte(kwargs):
    batch = _batch(**kwargs)
    body, headers = fast_path.encode_rest(batch, OUTPUTS, SIGNATURE, "m", "3")
    assert (body, dict(headers)) == _kserve_rest(batch)


def test_binary_outputs_are_the_arrays_bytes_after_the_json_part():
    batch = _batch(request_id="b-3", outputs=["probabilities", "label"], binary_outputs=True)
    body, headers = fast_path.encode_rest(batch, OUTPUTS, SIGNATURE, "m", "3")
    json_size = int(dict(headers)[b"inference-header-content-length"])
    assert dict(headers)[b"content-type"] == b"application/octet-stream"
    described = orjson.loads(body[:json_size])["outputs"]
    strings = b"\x09\x00\x00\x00malignant" + b"\x0a\x00\x00\x00" + "bénin ✓".encode()  # 10 bytes in UTF-8
    assert [o["parameters"] for o in described] == [{"binary_data_size": 16}, {"binary_data_size": len(strings)}]
    assert np.array_equal(np.frombuffer(body[json_size:json_size + 16], np.float32).reshape(2, 2),
                          OUTPUTS["probabilities"])
    assert body[json_size + 16:] == strings


def test_string_outputs_of_bytes_are_decoded_as_kserve_decodes_them():
    outputs = OUTPUTS | {"label": np.array([b"ok", b"\xff\xfe"], dtype=object)}
    batch = _batch(request_id="r-3", outputs=["label"])
    ours = orjson.loads(fast_path.encode_rest(batch, outputs, SIGNATURE, "m", "3")[0])
    assert ours == orjson.loads(_kserve_rest(batch, outputs)[0])
    assert ours["outputs"][0]["data"] == ["ok", "\ufffd\ufffd"]
    binary = _batch(request_id="r-4", outputs=["label"], binary_outputs=True)
    assert fast_path.encode_rest(binary, outputs, SIGNATURE, "m", "3")[0] == _kserve_rest(binary, outputs)[0]


@pytest.mark.parametrize("outputs", [[s.name for s in SIGNATURE.outputs], ["value"]])
def test_grpc_response_is_kserves_byte_for_byte(outputs):
    batch = _batch(request_id="g-1", outputs=outputs)
    batch.from_grpc = True
    ours = fast_path.encode_grpc(batch, OUTPUTS, SIGNATURE, "m", "3")
    theirs = codec.encode_v2(batch, OUTPUTS, SIGNATURE, "m", "3").to_grpc()
    assert ours.SerializeToString(deterministic=True) == theirs.SerializeToString(deterministic=True)


@pytest.mark.parametrize("outputs", [[s.name for s in SIGNATURE.outputs], ["probabilities"]])
def test_grpc_raw_response_is_kserves_byte_for_byte(outputs):
    batch = _batch(request_id="g-2", outputs=outputs, binary_outputs=True)
    batch.from_grpc = True
    ours = fast_path.encode_grpc(batch, OUTPUTS, SIGNATURE, "m", "3")
    theirs = codec.encode_v2(batch, OUTPUTS, SIGNATURE, "m", "3").to_grpc()
    assert ours.SerializeToString(deterministic=True) == theirs.SerializeToString(deterministic=True)
    assert np.array_equal(np.frombuffer(ours.raw_output_contents[0], np.float32).reshape(2, 2),
                          OUTPUTS["probabilities"])


# ---- the binary extension through FastV2App, in process ------------------------------------------------

MAX_ROWS = 8


@pytest.fixture(scope="module")
def fast_app(tmp_path_factory: pytest.TempPathFactory):
    """FastV2App over a loaded toy model; the app behind it (the routed FastAPI path) records what reached it."""
    model_dir = make_classifier(tmp_path_factory.mktemp("fast-binary") / "model")
    model = PillarsModel("toy", ServingSettings(model_dir=model_dir, drift=False, max_rows=MAX_ROWS,
                                                max_latency_ms=1))
    model.load()
    repository = ModelRepository()
    repository.update(model)
    routed: list[str] = []

    async def routed_app(scope, receive, send):
        routed.append(scope["path"])
        await send({"type": "http.response.start", "status": 599, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    yield fast_path.FastV2App(routed_app, DataPlane(repository), {PillarsError: serving_error_handler}), routed
    model.stop()


def _call(app, body_chunks: list[bytes], headers: dict[str, str]) -> tuple[int, dict[bytes, bytes], bytes, int]:
    """POST /v2/models/toy/infer with the body in ``body_chunks``; (status, headers, body, chunks read)."""
    scope = {"type": "http", "method": "POST", "path": "/v2/models/toy/infer", "query_string": b"",
             "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}
    pending, sent = list(body_chunks), []

    async def receive():
        if not pending:
            return {"type": "http.disconnect"}
        chunk = pending.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start, = (m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body, len(body_chunks) - len(pending)


def _binary_request(rows: np.ndarray, **parameters) -> tuple[bytes, bytes, dict[str, str]]:
    data = rows.tobytes()
    header = orjson.dumps({"id": "bin-1", "inputs": [{"name": "input-0", "shape": list(rows.shape),
                                                      "datatype": "FP32",
                                                      "parameters": {"binary_data_size": len(data)}}],
                           **({"parameters": parameters} if parameters else {})})
    headers = {"inference-header-content-length": str(len(header)), "content-length": str(len(header) + len(data)),
               "content-type": "application/octet-stream"}
    return header, data, headers


def _json_answer(app, rows: np.ndarray) -> dict:
    body = orjson.dumps({"id": "bin-1", "inputs": [{"name": "input-0", "shape": list(rows.shape), "datatype": "FP32",
                                                    "data": rows.reshape(-1).tolist()}]})
    status, _, answer, _ = _call(app, [body], {"content-length": str(len(body)), "content-type": "application/json"})
    assert status == 200, answer
    return orjson.loads(answer)


def test_a_binary_request_is_answered_by_the_fast_path_as_its_json_twin(fast_app):
    app, routed = fast_app
    rows = toy_rows(5, seed=7)
    header, data, headers = _binary_request(rows)
    # header and tensors split across messages, the header itself cut in two
    status, _, answer, _ = _call(app, [header[:10], header[10:] + data[:7], data[7:]], headers)
    assert status == 200, answer
    assert orjson.loads(answer) == _json_answer(app, rows) and routed == []


def test_binary_outputs_asked_for_come_back_binary_on_the_fast_path(fast_app):
    app, routed = fast_app
    rows = toy_rows(3, seed=8)
    header, data, headers = _binary_request(rows, binary_data_output=True)
    status, response_headers, answer, _ = _call(app, [header + data], headers)
    assert status == 200 and response_headers[b"content-type"] == b"application/octet-stream"
    json_size = int(response_headers[b"inference-header-content-length"])
    described, offset, expected = orjson.loads(answer[:json_size]), json_size, _json_answer(app, rows)
    for output, twin in zip(described["outputs"], expected["outputs"], strict=True):
        size = output["parameters"]["binary_data_size"]
        chunk, offset = answer[offset:offset + size], offset + size
        if output["datatype"] == "BYTES":
            values = []
            while chunk:
                (length,) = struct.unpack_from("<I", chunk)
                values.append(chunk[4:4 + length].decode())
                chunk = chunk[4 + length:]
        else:
            values = np.frombuffer(chunk, dtype=numpy_dtype(output["datatype"])).tolist()
        assert (output["name"], output["shape"], values) == (twin["name"], twin["shape"], twin["data"])
    assert offset == len(answer) and routed == []


def test_a_binary_header_declaring_too_many_rows_is_refused_before_its_tensors_are_read(fast_app):
    app, routed = fast_app
    rows = np.zeros((MAX_ROWS + 1, 4), dtype=np.float32)
    header, data, headers = _binary_request(rows)
    status, _, answer, chunks_read = _call(app, [header, data[:16], data[16:]], headers)
    assert status == 413 and orjson.loads(answer) == {
        "error": f"{MAX_ROWS + 1} rows; at most {MAX_ROWS} rows per request are accepted (--max_rows)"}
    assert chunks_read == 1 and routed == []


def test_binary_tensors_are_viewed_in_the_body_not_copied():
    signature = Signature(inputs=(TensorSpec("input-0", "FP32", (4,)),), outputs=(TensorSpec("y", "FP32"),))
    rows = toy_rows(2)
    header, data, _ = _binary_request(rows)
    body = header + data

    async def one_piece():
        yield body

    parsed, binary = asyncio.run(codec.read_binary_request(one_piece(), len(header), signature, MAX_ROWS))
    array = codec.decode_v2_data(parsed, binary).inputs["input-0"]
    assert np.array_equal(array, rows) and np.shares_memory(array, np.frombuffer(body, np.uint8))
