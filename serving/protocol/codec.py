"""Parsing protocol payloads into named arrays, and model outputs into protocol responses.

The framing of V1, V2 REST (JSON and the binary extension) and V2 gRPC. Whether a batch fits the model is
decided in one place, :func:`pillars.components.task.contract.check_inputs`, which
:meth:`pillars.serving.model.PillarsModel.preprocess` applies to every :class:`Batch` this module returns,
whatever protocol it came in.

What is refused here is what must be refused before the tensor data is decoded, or is about the wire
format itself: a body longer than any request within ``max_rows`` can be (for the REST binary extension
the JSON header at the front of the body is all that is parsed first), more than ``max_rows`` rows, and
(:func:`pillars.serving.protocol.tensors.check_declared`) the declared names, datatypes, shapes and row counts,
judged by the contract's own rules so that a request of the wrong shape is refused on its header alone
in the same words as the full check. Binary numeric tensors are then viewed with :func:`numpy.frombuffer`
and JSON numbers converted by numpy in one call; ``BYTES`` elements (JSON strings, the binary extension's
4-byte little-endian length-prefixed elements, gRPC ``bytes_contents`` or raw) are read one by one, at
most ``rows x values`` of them.

A model with a single input takes one tensor under any name (as KServe's own runtimes do); a model with
several inputs takes them by name. V1 ``{"instances": [...]}``: a single-input model takes rows (lists
of numbers, objects keyed by the input's ``labels`` for a table, or plain strings for one ``BYTES``
input); a model with several inputs takes objects keyed by input name, each input given in every
instance or in none.

Bad input is a :class:`pillars.components.task.contract.InputError` (HTTP 400, gRPC INVALID_ARGUMENT) naming
the input and what is wrong; too many rows, or a body larger than any request within ``max_rows`` can
be, is :class:`pillars.serving.errors.TooManyRows` (413, RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.infer_type import InferOutput, InferResponse, RequestedOutput

from pillars.components.task.contract import (
    InputError,
    Signature,
    TensorSpec,
    as_datatype,
    as_strings,
    check_names,
    numpy_dtype,
)
from pillars.serving.errors import TooManyRows
from pillars.serving.protocol.tensors import (
    BYTES_PREFIX,
    Declared,
    check_declared,
    check_row_limit,
    from_buffer,
    from_json,
    split_bytes,
)

GRPC_CONTENTS = {"BOOL": "bool_contents", "FP32": "fp32_contents", "FP64": "fp64_contents",
                 "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
                 "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
                 "UINT32": "uint_contents", "UINT64": "uint64_contents", "BYTES": "bytes_contents"}
"""The ``InferTensorContents`` field that carries each datatype (FP16 travels only as raw bytes)."""
JSON_BYTES_PER_VALUE = 64
"""Most bytes one number may take in a JSON body, separators and indentation included."""
JSON_BYTES_PER_STRING_BYTE = 6
"""Most bytes one byte of a string may take in JSON (a control character escaped as ``\\u0000``)."""
JSON_OVERHEAD_BYTES = 64 * 1024
GRPC_BYTES_PER_VALUE = 10
"""Most bytes one value takes in a gRPC request (an INT64 varint in ``int64_contents``; raw FP64 is 8)."""


@dataclass
class Batch:
    """A parsed request: what the model runs, and how to answer.

    Attributes:
        inputs: what the request carries, per input name: arrays (V2, in the declared shape and datatype,
            strings as numpy unicode) or lists (V1), at most ``max_rows`` rows; checked against the
            signature by :func:`pillars.components.task.contract.check_inputs` before the model runs.
        protocol: ``v1`` or ``v2`` (REST or gRPC).
        request_id: the V2 request id, echoed in the response.
        outputs: the V2 output names to return, checked against the model's outputs.
        binary_outputs: answer V2 outputs in binary (REST: per output or ``binary_data_output``;
            gRPC: when the inputs came as raw bytes).
        output_parameters: per requested output, the parameters it came with (REST ``binary_data``).
        from_grpc: the request came over gRPC.
    """

    inputs: dict[str, Any]
    protocol: str = "v2"
    request_id: str | None = None
    outputs: list[str] = field(default_factory=list)
    binary_outputs: bool = False
    output_parameters: dict[str, dict[str, Any]] = field(default_factory=dict)
    from_grpc: bool = False

    @property
    def rows(self) -> int:
        return len(next(iter(self.inputs.values())))


# ---- size limits ------------------------------------------------------------------------------------

def json_body_limit(signature: Signature, max_rows: int) -> int:
    """Longest JSON body (V1, or V2 without the binary extension) a request within ``max_rows`` can need."""
    per_row = sum(spec.max_values * (JSON_BYTES_PER_STRING_BYTE * spec.max_bytes + 16 if spec.datatype == "BYTES"
                                     else JSON_BYTES_PER_VALUE) for spec in signature.inputs)
    return per_row * max_rows + JSON_OVERHEAD_BYTES


def grpc_message_limit(signature: Signature, max_rows: int) -> int:
    """Largest gRPC request a request within ``max_rows`` can be: larger messages are refused by gRPC
    itself (RESOURCE_EXHAUSTED) before they are parsed."""
    per_row = sum(spec.max_values * (spec.max_bytes + GRPC_BYTES_PER_VALUE if spec.datatype == "BYTES"
                                     else GRPC_BYTES_PER_VALUE) for spec in signature.inputs)
    return per_row * max_rows + JSON_OVERHEAD_BYTES


# ---- V2 REST ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RestTensor:
    """One V2 REST input: its declaration and where its data is (JSON ``data``, or binary bytes)."""

    declared: Declared
    data: Any
    binary_size: int | None


@dataclass(frozen=True)
class V2Header:
    """A V2 REST request checked up to its tensor data (what the JSON part declares)."""

    tensors: list[RestTensor]
    request_id: str | None
    outputs: list[str]
    output_parameters: dict[str, dict[str, Any]]
    binary_outputs: bool


def json_part_length(header_length: str | None, content_length: str | None, signature: Signature,
                     max_rows: int) -> int | None:
    """Before any of the body is read: the length of its JSON part for the binary extension (None: all JSON).

    Raises:
        TooManyRows: the JSON part is longer than any request within ``max_rows`` can need.
        InputError: ``inference-header-content-length`` is not a length within the body.
    """
    limit = json_body_limit(signature, max_rows)
    body_length = int(content_length) if content_length is not None and content_length.isdigit() else None
    if header_length is None:
        if body_length is not None and body_length > limit:
            raise TooManyRows(_json_too_long(body_length, max_rows))
        return None
    if not header_length.isdigit() or (body_length is not None and int(header_length) > body_length):
        raise InputError(f"inference-header-content-length {header_length!r} is not a length within the "
                         f"{body_length}-byte body")
    if int(header_length) > limit:
        raise TooManyRows(f"a JSON header of {header_length} bytes is longer than any request within "
                          f"{max_rows} rows (--max_rows)")
    return int(header_length)


def _json_too_long(length: int, max_rows: int) -> str:
    return (f"a JSON request body of {length} bytes is longer than any request of at most {max_rows} rows "
            "can be (--max_rows); send fewer rows, or binary tensors")


def check_v2_header(request: Any, signature: Signature, max_rows: int) -> V2Header:
    """Check the JSON part of a V2 REST request (the whole body, or the binary extension's header): the
    declared inputs against the signature, their data or binary sizes, the requested outputs, the id.

    Nothing of the tensor data is converted here.
    """
    if not isinstance(request, dict):
        raise InputError('expected a JSON object with an "inputs" list')
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InputError(f'"inputs" must be a list holding exactly one tensor per input of the model '
                         f"({sorted(s.name for s in signature.inputs)}), got "
                         f"{'none' if isinstance(inputs, list) else type(inputs).__name__}")
    if not all(isinstance(t, dict) for t in inputs):
        raise InputError("an input tensor must be a JSON object with name, shape, datatype and data")
    declared = check_declared([(t.get("name"), t.get("datatype"), t.get("shape")) for t in inputs], signature,
                              max_rows)
    tensors = [_rest_tensor(t, d) for t, d in zip(inputs, declared, strict=True)]
    outputs, output_parameters = _requested_rest_outputs(request.get("outputs"), signature)
    parameters = request.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise InputError("parameters must be an object")
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InputError(f"id must be a string, got {request_id!r}")
    return V2Header(tensors, request_id, outputs, output_parameters,
                    bool((parameters or {}).get("binary_data_output", False)))


def _rest_tensor(tensor: dict[str, Any], declared: Declared) -> RestTensor:
    name, params = declared.name, tensor.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise InputError(f"input {name!r}: parameters must be an object")
    size = (params or {}).get("binary_data_size")
    if "data" in tensor and size is not None:
        raise InputError(f"input {name!r} has both data and parameters.binary_data_size")
    if "data" in tensor:
        return RestTensor(declared, tensor["data"], None)
    if size is None:
        raise InputError(f"input {name!r} has neither data nor parameters.binary_data_size")
    if not isinstance(size, int) or isinstance(size, bool):
        raise InputError(f"input {name!r}: binary_data_size must be an integer, got {size!r}")
    if declared.datatype == "BYTES":
        low, high = BYTES_PREFIX * declared.count, (BYTES_PREFIX + declared.spec.max_bytes) * declared.count
        if not low <= size <= high:
            raise InputError(f"input {name!r}: binary_data_size {size} does not fit {declared.count} strings "
                             f"of at most {declared.spec.max_bytes} bytes ({low} to {high} bytes)")
    else:
        expected = declared.count * declared.wire_dtype.itemsize
        if size != expected:
            raise InputError(f"input {name!r}: binary_data_size {size!r} does not fit shape {declared.shape} of "
                             f"{declared.datatype} ({expected} bytes)")
    return RestTensor(declared, None, size)


def decode_v2_data(header: V2Header, binary: bytes) -> Batch:
    """The parsed batch: JSON data converted by numpy, binary numbers viewed with ``np.frombuffer``,
    strings read element by element."""
    declared_size = sum(t.binary_size or 0 for t in header.tensors)
    if len(binary) != declared_size:
        names = [t.declared.name for t in header.tensors if t.binary_size is not None]
        raise InputError(f"{len(binary)} bytes follow the JSON header; the binary_data_size of "
                         f"{names or 'no input'} add up to {declared_size}")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for tensor in header.tensors:
        declared = tensor.declared
        if tensor.binary_size is None:
            array = from_json(declared, tensor.data)
        else:
            chunk = binary[offset:offset + tensor.binary_size]
            offset += tensor.binary_size
            array = split_bytes(declared, chunk) if declared.datatype == "BYTES" else from_buffer(declared, chunk)
        inputs[declared.name] = array
    return Batch(inputs, "v2", header.request_id, header.outputs, header.binary_outputs, header.output_parameters)


def parse_json(body: bytes, signature: Signature, max_rows: int) -> Any:
    """A JSON body, refused unparsed when it is longer than any request within ``max_rows`` can be.

    Raises:
        TooManyRows: the body is longer than :func:`json_body_limit`.
        InputError: it is not JSON.
    """
    if len(body) > json_body_limit(signature, max_rows):
        raise TooManyRows(_json_too_long(len(body), max_rows))
    return loads(body)


def loads(text: bytes) -> Any:
    """JSON, or :class:`InputError` saying why not."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as e:
        raise InputError(f"the request is not valid JSON: {e}") from e


# ---- V2 gRPC ----------------------------------------------------------------------------------------

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
    _check_output_names(outputs, known)
    return Batch(inputs, "v2", request.id or None, outputs, binary_outputs=bool(raw), from_grpc=True)


# ---- V1 ---------------------------------------------------------------------------------------------

def decode_v1(payload: Any, signature: Signature, max_rows: int) -> Batch:
    """The inputs carried by a V1 ``{"instances": [...]}`` body, as one list of values per input.

    A single-input model takes rows: values, objects keyed by the input's ``labels`` (a table's feature
    names), or (for a ``BYTES`` input) strings. Otherwise (or as well) an instance is an object keyed by
    input name, and an input is given in every instance or in none. The values are judged by
    :func:`pillars.components.task.contract.check_inputs` (numbers must be JSON numbers: ``"1.5"`` is refused).
    """
    if not isinstance(payload, dict) or "instances" not in payload:
        raise InputError('expected a JSON object with an "instances" list')
    instances = payload["instances"]
    if not isinstance(instances, list):
        raise InputError('"instances" must be a list')
    if not instances:  # no rows, so no names: every required input, empty (the contract refuses it)
        return Batch({s.name: [] for s in signature.inputs if not s.optional}, "v1")
    check_row_limit(len(instances), max_rows)
    specs = signature.inputs
    if len(specs) == 1 and not all(_keyed_by_name(row, specs[0]) for row in instances):
        spec = specs[0]
        return Batch({spec.name: [_v1_single(row, signature, i) for i, row in enumerate(instances)]}, "v1")
    if not all(isinstance(row, dict) for row in instances):
        raise InputError(f"each instance must be an object keyed by input name ({[s.name for s in specs]})")
    by_name = {s.name: s for s in specs}
    names = list(dict.fromkeys(name for row in instances for name in row))
    columns: dict[str, list[Any]] = {}
    for name in names:
        spec = by_name.get(name)
        if spec is None:  # unknown: the contract names it
            columns[name] = [row[name] for row in instances if name in row]
            continue
        absent = next((i for i, row in enumerate(instances) if name not in row), None)
        if absent is not None:
            raise InputError(f"input {name!r} is missing in instance {absent}; an input is given in every "
                             "instance or in none")
        columns[name] = [_labelled(row[name], spec, i) for i, row in enumerate(instances)]
    return Batch(columns, "v1")


def _keyed_by_name(row: Any, spec: TensorSpec) -> bool:
    """A single-input model's instance given as an object keyed by names other than its labels."""
    return isinstance(row, dict) and not (spec.labels and spec.name not in row)


def _v1_single(row: Any, signature: Signature, index: int) -> Any:
    """One instance of a single-input model: the value itself, an object keyed by the input's name, or
    (for a table) an object keyed by its ``labels``."""
    spec = signature.inputs[0]
    if not isinstance(row, dict):
        return row
    if set(row) == {spec.name}:
        return _labelled(row[spec.name], spec, index)
    if not spec.labels:
        check_names(signature, list(row))  # names the unknown input
    return _row_from_mapping(row, spec.labels, index)


def _labelled(value: Any, spec: TensorSpec, index: int) -> Any:
    """An input's value; an object keyed by the input's ``labels`` becomes the row in label order."""
    if isinstance(value, dict):
        if not spec.labels:
            raise InputError(f"input {spec.name!r} in instance {index} is an object; it takes a "
                             f"{'string' if spec.datatype == 'BYTES' else 'number or list of numbers'}")
        return _row_from_mapping(value, spec.labels, index, spec.name)
    return value


def _row_from_mapping(row: dict[str, Any], labels: Sequence[str], index: int, name: str = "") -> list[Any]:
    """A table's row from an object keyed by its feature names, in label order."""
    where = f"input {name!r} in instance {index}" if name else f"instance {index}"
    missing = [f for f in labels if f not in row]
    if missing:
        raise InputError(f"{where} lacks feature(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}; "
                         f"the features are {list(labels[:10])}{' ...' if len(labels) > 10 else ''}")
    extra = sorted(set(row) - set(labels))
    if extra:
        raise InputError(f"{where} has unknown feature(s) {extra[:5]}; the features are "
                         f"{list(labels[:10])}{' ...' if len(labels) > 10 else ''}")
    return [row[f] for f in labels]


# ---- outputs ----------------------------------------------------------------------------------------

def tensor_metadata(specs: Sequence[TensorSpec], inputs: bool = True) -> list[dict[str, Any]]:
    """Tensors as V2 model metadata lists them: ``shape`` with the batch axis ``-1`` in front and, for
    inputs, ``parameters`` (:func:`tensor_parameters`) so a client can build a valid request from them alone."""
    return [spec.to_dict() | ({"parameters": tensor_parameters(spec)} if inputs else {}) for spec in specs]


def tensor_parameters(spec: TensorSpec) -> dict[str, Any]:
    """What the shape and datatype of an input do not say: ``optional``; ``max_length``, the longest a
    ``-1`` dimension may be; ``max_bytes``, the longest one ``BYTES`` element may be."""
    parameters: dict[str, Any] = {"optional": spec.optional}
    if -1 in spec.shape:
        parameters["max_length"] = spec.max_length
    if spec.datatype == "BYTES":
        parameters["max_bytes"] = spec.max_bytes
    return parameters


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


def encode_v2(batch: Batch, outputs: dict[str, np.ndarray], signature: Signature, model_name: str,
              version: str) -> InferResponse:
    """A V2 response with the requested outputs, typed as the signature says."""
    specs = {s.name: s for s in signature.outputs}
    tensors = []
    for name in batch.outputs:
        datatype = specs[name].datatype
        data = _wire_output(outputs[name], datatype)
        tensor = InferOutput(name=name, shape=list(data.shape), datatype=datatype)
        tensor.set_data_from_numpy(data, binary_data=False)
        tensors.append(tensor)
    requested = None if batch.from_grpc or not batch.output_parameters else [
        RequestedOutput(name, batch.output_parameters.get(name) or {}) for name in batch.outputs]
    return InferResponse(
        response_id=batch.request_id or str(uuid.uuid4()), model_name=model_name, model_version=version,
        infer_outputs=tensors, from_grpc=batch.from_grpc, use_binary_outputs=batch.binary_outputs,
        requested_outputs=requested,
    )


def _wire_output(data: np.ndarray, datatype: str) -> np.ndarray:
    if datatype == "BYTES":
        return np.asarray(plain_strings(np.asarray(data)), dtype=object).reshape(np.shape(data))
    return np.ascontiguousarray(data, dtype=numpy_dtype(datatype))


def plain_strings(data: np.ndarray) -> list[str]:
    """A ``BYTES`` output's elements as ``str`` (bytes decoded as UTF-8, invalid bytes replaced), flat."""
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in data.reshape(-1).tolist()]


def encode_v1(outputs: dict[str, np.ndarray], signature: Signature) -> dict[str, Any]:
    """A V1 ``{"predictions": [...]}``: the one output's value per row, or per row an object of outputs."""
    plain = {}
    for spec in signature.outputs:
        data = np.asarray(outputs[spec.name])
        if spec.datatype == "BYTES":
            plain[spec.name] = np.asarray(plain_strings(data), dtype=object).reshape(data.shape).tolist()
        else:
            plain[spec.name] = data.tolist()
    if len(plain) == 1:
        return {"predictions": next(iter(plain.values()))}
    names = list(plain)
    return {"predictions": [dict(zip(names, row, strict=True))
                            for row in zip(*(plain[n] for n in names), strict=True)]}


def _requested_rest_outputs(outputs: Any, signature: Signature) -> tuple[list[str], dict[str, dict[str, Any]]]:
    known = [o.name for o in signature.outputs]
    if outputs is None:
        return known, {}
    if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                                for o in outputs):
        raise InputError('"outputs" must be a list of objects with a "name"')
    if any(o.get("parameters") is not None and not isinstance(o["parameters"], dict) for o in outputs):
        raise InputError("output parameters must be an object")
    names = [o["name"] for o in outputs] or known
    _check_output_names(names, known)
    return names, {o["name"]: dict(o.get("parameters") or {}) for o in outputs}


def _check_output_names(names: list[str], known: list[str]) -> None:
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InputError(f"unknown output(s) {unknown[:5]}; this model has {known}")
