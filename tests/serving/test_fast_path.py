"""The fast V2 path's responses are byte for byte what KServe's ``InferResponse`` gives (REST JSON and gRPC)."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from pillars.components.task.contract import Signature, TensorSpec
from pillars.serving.protocol import codec, fast_path

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


@pytest.mark.parametrize("kwargs", [
    {"request_id": "r-1", "outputs": [s.name for s in SIGNATURE.outputs]},
    {"request_id": "r-2", "outputs": ["label", "class_index"]},
])
def test_json_response_is_kserves_byte_for_byte(kwargs):
    batch = _batch(**kwargs)
    ours = fast_path.encode_json(batch, OUTPUTS, SIGNATURE, "m", "3")
    theirs, json_size = codec.encode_v2(batch, OUTPUTS, SIGNATURE, "m", "3").to_rest()
    assert json_size is None and ours == orjson.dumps(theirs)


def test_string_outputs_of_bytes_are_decoded_as_kserve_decodes_them():
    outputs = OUTPUTS | {"label": np.array([b"ok", b"\xff\xfe"], dtype=object)}
    batch = _batch(request_id="r-3", outputs=["label"])
    ours = orjson.loads(fast_path.encode_json(batch, outputs, SIGNATURE, "m", "3"))
    theirs, _ = codec.encode_v2(batch, outputs, SIGNATURE, "m", "3").to_rest()
    assert ours == theirs and ours["outputs"][0]["data"] == ["ok", "\ufffd\ufffd"]


def test_binary_and_parameterised_outputs_are_left_to_kserve():
    assert fast_path.encode_json(_batch(outputs=["label"], binary_outputs=True), OUTPUTS, SIGNATURE, "m", "3") is None
    batch = _batch(request_id="r-4", outputs=["probabilities"],
                   output_parameters={"probabilities": {"binary_data": True}})
    assert fast_path.encode_json(batch, OUTPUTS, SIGNATURE, "m", "3") is None
    body, headers = fast_path.encode_rest(batch, OUTPUTS, SIGNATURE, "m", "3")
    json_size = int(dict(headers)[b"inference-header-content-length"])
    assert dict(headers)[b"content-type"] == b"application/octet-stream"
    assert orjson.loads(body[:json_size])["outputs"][0]["parameters"] == {"binary_data_size": 16}
    assert np.array_equal(np.frombuffer(body[json_size:], np.float32).reshape(2, 2), OUTPUTS["probabilities"])


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
