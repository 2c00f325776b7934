"""V2 gRPC requests: ``raw_input_contents`` or typed ``contents``, and the metadata of a tensor.

Part of the codec (:mod:`pillars.serving.protocol.codec` states the contract and re-exports every name here).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

from pillars.components.task.contract import InputError, Signature, as_datatype, as_strings
from pillars.serving.protocol.tensors import check_declared, from_buffer, split_bytes
from pillars.serving.protocol.wire import JSON_OVERHEAD_BYTES, Batch, check_output_names

GRPC_CONTENTS = {"BOOL": "bool_contents", "FP32": "fp32_contents", "FP64": "fp64_contents",
                 "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
                 "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
                 "UINT32": "uint_contents", "UINT64": "uint64_contents", "BYTES": "bytes_contents"}
"""The ``InferTensorContents`` field that carries each datatype (FP16 travels only as raw bytes)."""


GRPC_BYTES_PER_VALUE = 10
"""Most bytes one value takes in a gRPC request (an INT64 varint in ``int64_contents``; raw FP64 is 8)."""


def grpc_message_limit(signature: Signature, max_rows: int) -> int:
    """Largest gRPC request a request within ``max_rows`` can be: larger messages are refused by gRPC
    itself (RESOURCE_EXHAUSTED) before they are parsed."""
    per_row = sum(spec.max_values * (spec.max_bytes + GRPC_BYTES_PER_VALUE if spec.datatype == "BYTES"
                                     else GRPC_BYTES_PER_VALUE) for spec in signature.inputs)
    return per_row * max_rows + JSON_OVERHEAD_BYTES


def decode_grpc(request: pb.ModelInferRequest, signature: Signature, max_rows: int) -> Batch:
    """A gRPC ``ModelInferRequest``: ``raw_input_contents`` (one per input, in order) or typed ``contents``."""
    declared = check_declared([(t.name, t.datatype, list(t.shape)) for t in request.inputs], signature, max_rows)
    raw = request.raw_input_contents
    if raw and (len(raw) != len(request.inputs) or any(t.HasField("contents") for t in request.inputs)):
        raise InputError(f"give raw_input_contents for every input ({len(request.inputs)}, got {len(raw)}) "
                         "or contents for every input, not both")
    inputs: dict[str, np.ndarray] = {}
    for i, (tensor, d) in enumerate(zip(request.inputs, declared, strict=True)):
        if raw:
            array = split_bytes(d, raw[i]) if d.datatype == "BYTES" else from_buffer(d, raw[i])
        else:
            if d.datatype not in GRPC_CONTENTS:
                raise InputError(f"input {d.name!r}: {d.datatype} travels only as raw_input_contents")
            values = getattr(tensor.contents, GRPC_CONTENTS[d.datatype])
            if len(values) != d.count:
                raise InputError(f"input {d.name!r}: {len(values)} values do not fit shape {d.shape}")
            if d.datatype == "BYTES":
                array = as_strings(d.name, d.spec.max_bytes, list(values)).reshape(d.shape)
            else:  # bounded: the shape passed max_rows; int_contents are int32, wider than INT8/16
                array = as_datatype(d.name, np.asarray(values).reshape(d.shape), d.datatype)
        inputs[d.name] = array
    known = [o.name for o in signature.outputs]
    outputs = [o.name for o in request.outputs] or known
    check_output_names(outputs, known)
    return Batch(inputs, "v2", request.id or None, outputs, binary_outputs=bool(raw), from_grpc=True)


def grpc_tensor_metadata(tensor: dict[str, Any]) -> pb.ModelMetadataResponse.TensorMetadata:
    """One tensor of :func:`tensor_metadata` as gRPC ``TensorMetadata``, its ``parameters`` in field 4.

    KServe's proto has no ``parameters`` on ``TensorMetadata``; MLServer's does (``map<string,
    InferParameter> parameters = 4``). The entries are written as that field: MLServer's clients read them,
    KServe's keep them as an unknown field (and re-serialize them unchanged).
    """
    message = pb.ModelMetadataResponse.TensorMetadata(name=tensor["name"], datatype=tensor["datatype"],
                                                      shape=tensor["shape"])
    extra = bytearray()
    for key, value in tensor.get("parameters", {}).items():
        param = (pb.InferParameter(bool_param=value) if isinstance(value, bool) else
                 pb.InferParameter(int64_param=value) if isinstance(value, int) else
                 pb.InferParameter(string_param=str(value))).SerializeToString()
        entry = _length_delimited(1, key.encode()) + _length_delimited(2, param)
        extra += _length_delimited(4, entry)
    message.MergeFromString(bytes(extra))
    return message


def _length_delimited(field_number: int, payload: bytes) -> bytes:
    return _varint(field_number << 3 | 2) + _varint(len(payload)) + payload


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)
