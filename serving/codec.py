"""Turning protocol payloads into checked named inputs, and model outputs into protocol responses.

The framing of V1, V2 REST (JSON and the binary extension) and V2 gRPC; what is checked against the
signature, and how tensor data is read, lives in :mod:`pillars.serving.tensors`.

Everything here is driven by the model's :class:`pillars.components.task.Signature`: its named inputs
(Open Inference Protocol datatypes, per-instance shapes with ``-1`` dimensions up to ``max_length``,
``BYTES`` elements up to ``max_bytes``, optional inputs) and its outputs.

This is the edge, and the only place a request is checked. The declared names, datatypes, shapes and
row counts of every tensor are checked against the signature and ``max_rows`` before any tensor data is
decoded (for the REST binary extension the JSON header at the front of the body is all that is parsed
first): every required input present, no unknown one, a datatype the input accepts (a numeric input
takes any numeric datatype that converts without surprise: a float input takes floats and integers, an
integer input takes integers; ``BYTES`` only ``BYTES``), the instance shape (a fixed shape may also
come flat), the same number of rows in every input. Binary numeric tensors are then viewed with
:func:`numpy.frombuffer` and JSON numbers converted by numpy in one call; ``BYTES`` elements (JSON
strings, the binary extension's 4-byte little-endian length-prefixed elements, gRPC ``bytes_contents``
or raw) are read one by one, at most ``rows x values`` of them, each at most ``max_bytes`` long and
UTF-8. What comes out is one array per input, in the spec's shape and dtype family (strings as numpy
unicode arrays), that the task encodes unchecked.

A model with a single input takes one tensor under any name (as KServe's own runtimes do); a model with
several inputs takes them by name. V1 ``{"instances": [...]}``: a single-input model takes rows (lists
of numbers, objects keyed by the input's ``labels`` for a table, or plain strings for one ``BYTES``
input); a model with several inputs takes objects keyed by input name.

Bad input is a :class:`kserve.errors.InvalidInput` (HTTP 400, gRPC INVALID_ARGUMENT) naming the input
and what is wrong; too many rows, or a body larger than any request within ``max_rows`` can be, is
:class:`pillars.serving.errors.TooManyRows` (413, RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from kserve.errors import InvalidInput
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.infer_type import InferOutput, InferResponse, RequestedOutput

from pillars.components.task import Signature, TensorSpec
from pillars.serving.errors import TooManyRows
from pillars.serving.tensors import (
    BYTES_PREFIX,
    FLOATS,
    INTEGERS,
    WIRE_DTYPES,
    Declared,
    as_input,
    check_declared,
    first_non_number,
    from_json,
    instance_shape,
    split_bytes,
    strings,
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
    """A request checked at the edge: what the model runs, and how to answer.

    Attributes:
        inputs: one array per input the request carries (named as the signature), ``N`` rows each,
            ``1 <= N <= max_rows``, in the spec's instance shape; floats finite; strings as numpy unicode.
        protocol: ``v1`` or ``v2`` (REST or gRPC).
        request_id: the V2 request id, echoed in the response.
        outputs: the V2 output names to return, checked against the model's outputs.
        binary_outputs: answer V2 outputs in binary (REST: per output or ``binary_data_output``;
            gRPC: when the inputs came as raw bytes).
        output_parameters: per requested output, the parameters it came with (REST ``binary_data``).
        from_grpc: the request came over gRPC.
    """

    inputs: dict[str, np.ndarray]
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
        InvalidInput: ``inference-header-content-length`` is not a length within the body.
    """
    limit = json_body_limit(signature, max_rows)
    body_length = int(content_length) if content_length is not None and content_length.isdigit() else None
    if header_length is None:
        if body_length is not None and body_length > limit:
            raise TooManyRows(_json_too_long(body_length, max_rows))
        return None
    if not header_length.isdigit() or (body_length is not None and int(header_length) > body_length):
        raise InvalidInput(f"inference-header-content-length {header_length!r} is not a length within the "
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
        raise InvalidInput('expected a JSON object with an "inputs" list')
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput(f'"inputs" must be a list holding exactly one tensor per input of the model '
                           f"({sorted(s.name for s in signature.inputs)}), got "
                           f"{'none' if isinstance(inputs, list) else type(inputs).__name__}")
    if not all(isinstance(t, dict) for t in inputs):
        raise InvalidInput("an input tensor must be a JSON object with name, shape, datatype and data")
    declared = check_declared([(t.get("name"), t.get("datatype"), t.get("shape")) for t in inputs], signature,
                              max_rows)
    tensors = [_rest_tensor(t, d) for t, d in zip(inputs, declared, strict=True)]
    outputs, output_parameters = _requested_rest_outputs(request.get("outputs"), signature)
    parameters = request.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise InvalidInput("parameters must be an object")
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput(f"id must be a string, got {request_id!r}")
    return V2Header(tensors, request_id, outputs, output_parameters,
                    bool((parameters or {}).get("binary_data_output", False)))


def _rest_tensor(tensor: dict[str, Any], declared: Declared) -> RestTensor:
    name, params = declared.name, tensor.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise InvalidInput(f"input {name!r}: parameters must be an object")
    size = (params or {}).get("binary_data_size")
    if "data" in tensor and size is not None:
        raise InvalidInput(f"input {name!r} has both data and parameters.binary_data_size")
    if "data" in tensor:
        return RestTensor(declared, tensor["data"], None)
    if size is None:
        raise InvalidInput(f"input {name!r} has neither data nor parameters.binary_data_size")
    if not isinstance(size, int) or isinstance(size, bool):
        raise InvalidInput(f"input {name!r}: binary_data_size must be an integer, got {size!r}")
    if declared.datatype == "BYTES":
        low, high = BYTES_PREFIX * declared.count, (BYTES_PREFIX + declared.spec.max_bytes) * declared.count
        if not low <= size <= high:
            raise InvalidInput(f"input {name!r}: binary_data_size {size} does not fit {declared.count} strings "
                               f"of at most {declared.spec.max_bytes} bytes ({low} to {high} bytes)")
    else:
        expected = declared.count * declared.wire_dtype.itemsize
        if size != expected:
            raise InvalidInput(f"input {name!r}: binary_data_size {size!r} does not fit shape {declared.shape} of "
                               f"{declared.datatype} ({expected} bytes)")
    return RestTensor(declared, None, size)


def decode_v2_data(header: V2Header, binary: bytes) -> Batch:
    """The checked batch: JSON data converted by numpy, binary numbers viewed with ``np.frombuffer``,
    strings read element by element."""
    declared_size = sum(t.binary_size or 0 for t in header.tensors)
    if len(binary) != declared_size:
        names = [t.declared.name for t in header.tensors if t.binary_size is not None]
        raise InvalidInput(f"{len(binary)} bytes follow the JSON header; the binary_data_size of "
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
            array = (split_bytes(declared, chunk) if declared.datatype == "BYTES"
                     else np.frombuffer(chunk, dtype=declared.wire_dtype))
        inputs[declared.spec.name] = as_input(declared.name, declared.spec, array, declared.shape[0],
                                              declared.instance)
    return Batch(inputs, "v2", header.request_id, header.outputs, header.binary_outputs, header.output_parameters)


def parse_json(body: bytes, signature: Signature, max_rows: int) -> Any:
    """A JSON body, refused unparsed when it is longer than any request within ``max_rows`` can be.

    Raises:
        TooManyRows: the body is longer than :func:`json_body_limit`.
        InvalidInput: it is not JSON.
    """
    if len(body) > json_body_limit(signature, max_rows):
        raise TooManyRows(_json_too_long(len(body), max_rows))
    return loads(body)


def loads(text: bytes) -> Any:
    """JSON, or :class:`InvalidInput` saying why not."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as e:
        raise InvalidInput(f"the request is not valid JSON: {e}") from e


# ---- V2 gRPC ----------------------------------------------------------------------------------------

def decode_grpc(request: pb.ModelInferRequest, signature: Signature, max_rows: int) -> Batch:
    """A gRPC ``ModelInferRequest``: ``raw_input_contents`` (one per input, in order) or typed ``contents``."""
    declared = check_declared([(t.name, t.datatype, list(t.shape)) for t in request.inputs], signature, max_rows)
    raw = request.raw_input_contents
    if raw and (len(raw) != len(request.inputs) or any(t.HasField("contents") for t in request.inputs)):
        raise InvalidInput(f"give raw_input_contents for every input ({len(request.inputs)}, got {len(raw)}) "
                           "or contents for every input, not both")
    inputs: dict[str, np.ndarray] = {}
    for i, (tensor, d) in enumerate(zip(request.inputs, declared, strict=True)):
        if raw:
            if d.datatype == "BYTES":
                array = split_bytes(d, raw[i])
            else:
                expected = d.count * d.wire_dtype.itemsize
                if len(raw[i]) != expected:
                    raise InvalidInput(f"input {d.name!r}: {len(raw[i])} raw bytes do not fit shape {d.shape} of "
                                       f"{d.datatype} ({expected} bytes)")
                array = np.frombuffer(raw[i], dtype=d.wire_dtype)
        else:
            if d.datatype not in GRPC_CONTENTS:
                raise InvalidInput(f"input {d.name!r}: {d.datatype} travels only as raw_input_contents")
            values = getattr(tensor.contents, GRPC_CONTENTS[d.datatype])
            if len(values) != d.count:
                raise InvalidInput(f"input {d.name!r}: {len(values)} values do not fit shape {d.shape}")
            if d.datatype == "BYTES":
                array = strings(d, list(values))
            else:
                array = np.asarray(values, dtype=d.wire_dtype)  # bounded: the shape passed max_rows
        inputs[d.spec.name] = as_input(d.name, d.spec, array, d.shape[0], d.instance)
    known = [o.name for o in signature.outputs]
    outputs = [o.name for o in request.outputs] or known
    _check_output_names(outputs, known)
    return Batch(inputs, "v2", request.id or None, outputs, binary_outputs=bool(raw), from_grpc=True)


# ---- V1 ---------------------------------------------------------------------------------------------

def decode_v1(payload: Any, signature: Signature, max_rows: int) -> Batch:
    """The batch carried by a V1 ``{"instances": [...]}`` body.

    A single-input model takes rows: lists of numbers, objects keyed by the input's ``labels`` (a table's
    feature names), or strings for one ``BYTES`` input. A model with several inputs (or a single input
    without labels) takes objects keyed by input name. Numbers must be JSON numbers: ``"1.5"`` is refused.
    """
    if not isinstance(payload, dict) or "instances" not in payload:
        raise InvalidInput('expected a JSON object with an "instances" list')
    instances = payload["instances"]
    if not isinstance(instances, list):
        raise InvalidInput('"instances" must be a list')
    if not instances:
        raise InvalidInput("empty batch: at least one instance is needed")
    if len(instances) > max_rows:
        raise TooManyRows(f'"instances" has {len(instances)} rows; at most {max_rows} rows per request '
                          "are accepted (--max_rows)")
    specs = signature.inputs
    if len(specs) == 1:
        spec = specs[0]
        rows = [_v1_single(row, spec, i) for i, row in enumerate(instances)]
        return Batch({spec.name: _v1_input(spec, rows)}, "v1")
    if not all(isinstance(row, dict) for row in instances):
        raise InvalidInput(f"each instance must be an object keyed by input name ({[s.name for s in specs]})")
    known = {s.name for s in specs}
    for i, row in enumerate(instances):
        unknown = sorted(set(row) - known)
        if unknown:
            raise InvalidInput(f"instance {i} has unknown input(s) {unknown[:5]}; this model takes {sorted(known)}")
    inputs: dict[str, np.ndarray] = {}
    for spec in specs:
        present = sum(spec.name in row for row in instances)
        if present == 0 and spec.optional:
            continue
        if present < len(instances):
            first = next(i for i, row in enumerate(instances) if spec.name not in row)
            rule = "; an optional input is given in every instance or in none" if spec.optional else ""
            raise InvalidInput(f"input {spec.name!r} is missing in instance {first}{rule}")
        inputs[spec.name] = _v1_input(spec, [_labelled(row[spec.name], spec, i) for i, row in enumerate(instances)])
    return Batch(inputs, "v1")


def _v1_single(row: Any, spec: TensorSpec, index: int) -> Any:
    """One instance of a single-input model: the value itself, an object keyed by the input's name, or
    (for a table) an object keyed by its ``labels``."""
    if not isinstance(row, dict):
        return row
    if set(row) == {spec.name} and spec.name not in spec.labels:
        return _labelled(row[spec.name], spec, index)
    if spec.labels:
        return _row_from_mapping(row, spec.labels, index)
    raise InvalidInput(f"instance {index} has unknown input(s) {sorted(set(row) - {spec.name})[:5]}; this model "
                       f"takes one input {spec.name!r}: send its value, or an object keyed by {spec.name!r}")


def _labelled(value: Any, spec: TensorSpec, index: int) -> Any:
    """An input's value; an object keyed by the input's ``labels`` becomes the row in label order."""
    if isinstance(value, dict):
        if not spec.labels:
            raise InvalidInput(f"input {spec.name!r} in instance {index} is an object; it takes a "
                               f"{'string' if spec.datatype == 'BYTES' else 'number or list of numbers'}")
        return _row_from_mapping(value, spec.labels, index, spec.name)
    return value


def _v1_input(spec: TensorSpec, values: list[Any]) -> np.ndarray:
    name = spec.name
    if spec.datatype == "BYTES":
        try:
            array = np.asarray(values, dtype=object)
        except ValueError as e:
            raise InvalidInput(f"input {name!r}: instances have different lengths (shapes); a V1 batch is one "
                               "array: pad to one length or send one instance per request") from e
        dims = list(array.shape[1:])
        instance = instance_shape(name, spec, dims, array.shape)
        return as_input(name, spec, strings(_declared(name, spec, array.shape, instance, "BYTES"),
                                             array.reshape(-1).tolist()), len(array), instance)
    try:
        array = np.asarray(values)
    except ValueError as e:
        if "inhomogeneous" not in str(e):
            raise InvalidInput(f"input {name!r}: instances must be a rectangular list of numbers"
                               f"{first_non_number(values)}") from e
        raise InvalidInput(f"input {name!r}: instances have different lengths (shapes); a V1 batch is one "
                           "array: pad to one length or send one instance per request") from e
    except (TypeError, OverflowError) as e:
        raise InvalidInput(f"input {name!r}: instances must be a rectangular list of numbers"
                           f"{first_non_number(values)}") from e
    kinds = "iuf" if spec.datatype in FLOATS else "iu" if spec.datatype in INTEGERS else "b"
    if array.dtype.kind not in kinds:
        what = "integers" if kinds == "iu" else "booleans" if kinds == "b" else "numbers"
        raise InvalidInput(f"input {name!r}: instances must be a rectangular list of {what}"
                           f"{first_non_number(values) if kinds != 'b' else ''}")
    if array.ndim < 1:
        raise InvalidInput(f"input {name!r}: instances must be a list")
    instance = instance_shape(name, spec, array.shape[1:], array.shape)
    return as_input(name, spec, array, len(array), instance)


def _declared(name: str, spec: TensorSpec, shape: Sequence[int], instance: tuple[int, ...],
              datatype: str) -> Declared:
    return Declared(name, spec, list(shape), instance, datatype)


def _row_from_mapping(row: dict[str, Any], labels: Sequence[str], index: int, name: str = "") -> list[Any]:
    """A table's row from an object keyed by its feature names, in label order."""
    where = f"input {name!r} in instance {index}" if name else f"instance {index}"
    missing = [f for f in labels if f not in row]
    if missing:
        raise InvalidInput(f"{where} lacks feature(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}; "
                           f"the features are {list(labels[:10])}{' ...' if len(labels) > 10 else ''}")
    extra = sorted(set(row) - set(labels))
    if extra:
        raise InvalidInput(f"{where} has unknown feature(s) {extra[:5]}; the features are "
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
        return np.asarray(_plain_strings(np.asarray(data)), dtype=object).reshape(np.shape(data))
    return np.ascontiguousarray(data, dtype=np.dtype(WIRE_DTYPES[datatype]).newbyteorder("="))


def _plain_strings(data: np.ndarray) -> list[str]:
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in data.reshape(-1).tolist()]


def encode_v1(outputs: dict[str, np.ndarray], signature: Signature) -> dict[str, Any]:
    """A V1 ``{"predictions": [...]}``: the one output's value per row, or per row an object of outputs."""
    plain = {}
    for spec in signature.outputs:
        data = np.asarray(outputs[spec.name])
        if spec.datatype == "BYTES":
            plain[spec.name] = np.asarray(_plain_strings(data), dtype=object).reshape(data.shape).tolist()
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
        raise InvalidInput('"outputs" must be a list of objects with a "name"')
    if any(o.get("parameters") is not None and not isinstance(o["parameters"], dict) for o in outputs):
        raise InvalidInput("output parameters must be an object")
    names = [o["name"] for o in outputs] or known
    _check_output_names(names, known)
    return names, {o["name"]: dict(o.get("parameters") or {}) for o in outputs}


def _check_output_names(names: list[str], known: list[str]) -> None:
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InvalidInput(f"unknown output(s) {unknown[:5]}; this model has {known}")
