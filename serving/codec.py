"""Turning protocol payloads into a checked numeric batch, and model outputs into protocol responses.

One input tensor (V2 REST and gRPC; any name, ``input-0`` in the metadata) of shape
``[N, n_features]`` (or ``[N, *input_shape]`` for images) and a numeric datatype; or V1
``{"instances": [...]}`` with rows as lists or as objects keyed by feature name.

This is the edge, and the only place a request is checked: the declared datatype, shape and row count
are checked against the model and ``max_rows`` before any tensor data is decoded (for the REST binary
extension the JSON header at the front of the body is all that is parsed first); binary tensors are
then viewed with :func:`numpy.frombuffer` and JSON data converted by numpy in one call, never element by
element in Python. What comes out is a float32 ``[N, n_features]`` batch the model runs unchecked.
Bad input is a :class:`kserve.errors.InvalidInput` (HTTP 400, gRPC INVALID_ARGUMENT) naming what is
wrong; too many rows is :class:`pillars.serving.errors.TooManyRows` (413, RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from kserve.errors import InvalidInput
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.infer_type import InferOutput, InferResponse, RequestedOutput

from pillars.components.models import ModelConfig
from pillars.serving.errors import TooManyRows

INPUT_NAME = "input-0"
NUMERIC_DATATYPES = {"FP16": "<f2", "FP32": "<f4", "FP64": "<f8", "INT8": "i1", "INT16": "<i2", "INT32": "<i4",
                     "INT64": "<i8", "UINT8": "u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8"}
"""V2 datatypes a model input accepts, and their little-endian numpy dtypes (the binary wire format)."""
GRPC_CONTENTS = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT8": "int_contents",
                 "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
                 "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
                 "UINT64": "uint64_contents"}
"""The ``InferTensorContents`` field that carries each datatype (FP16 travels only as raw bytes)."""
JSON_BYTES_PER_VALUE = 64
"""Most bytes one number may take in a JSON body, separators and indentation included: a JSON body longer
than ``JSON_BYTES_PER_VALUE x max_rows x values per row`` (plus :data:`JSON_OVERHEAD_BYTES`) cannot be a
request the server would accept, and is refused before it is parsed."""
JSON_OVERHEAD_BYTES = 64 * 1024
GRPC_BYTES_PER_VALUE = 10
"""Most bytes one value takes in a gRPC request (an INT64 varint in ``int64_contents``; raw FP64 is 8)."""


@dataclass
class Batch:
    """A request checked at the edge: what the model runs, and how to answer.

    Attributes:
        rows: float32 ``[N, n_features]``, finite, ``1 <= N <= max_rows``.
        protocol: ``v1`` or ``v2`` (REST or gRPC).
        request_id: the V2 request id, echoed in the response.
        outputs: the V2 output names to return, checked against the model's outputs.
        binary_outputs: answer V2 outputs in binary (REST: per output or ``binary_data_output``;
            gRPC: when the inputs came as raw bytes).
        output_parameters: per requested output, the parameters it came with (REST ``binary_data``).
        from_grpc: the request came over gRPC.
        input_name: the input tensor's name (``instances`` for V1), for error messages.
    """

    rows: np.ndarray
    protocol: str = "v2"
    request_id: str | None = None
    outputs: list[str] = field(default_factory=list)
    binary_outputs: bool = False
    output_parameters: dict[str, dict[str, Any]] = field(default_factory=dict)
    from_grpc: bool = False
    input_name: str = INPUT_NAME


def input_metadata(config: ModelConfig) -> list[dict[str, Any]]:
    """The model's input tensor as V2 model metadata lists it."""
    shape = config.input_shape if config.architecture == "cnn" else [config.n_features]
    return [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, *shape]}]


def output_metadata(config: ModelConfig) -> list[dict[str, Any]]:
    """The model's output tensors as V2 model metadata lists them."""
    if config.kind == "classification":
        return [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(config.classes or [])]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": "class_index", "datatype": "INT64", "shape": [-1]},
        ]
    return [{"name": "value", "datatype": "FP32", "shape": [-1]}]



def value_shape(config: ModelConfig) -> list[int]:
    """The shape of one instance: ``[n_features]``, or ``input_shape`` for a CNN (either is accepted)."""
    return list(config.input_shape) if config.architecture == "cnn" else [config.n_features]


def json_body_limit(config: ModelConfig, max_rows: int) -> int:
    """Longest JSON body (V1, or V2 without the binary extension) a request within ``max_rows`` can need."""
    return JSON_BYTES_PER_VALUE * max_rows * config.n_features + JSON_OVERHEAD_BYTES


def grpc_message_limit(config: ModelConfig, max_rows: int) -> int:
    """Largest gRPC request a request within ``max_rows`` can be: larger messages are refused by gRPC
    itself (RESOURCE_EXHAUSTED) before they are parsed."""
    return GRPC_BYTES_PER_VALUE * max_rows * config.n_features + JSON_OVERHEAD_BYTES


def check_tensor(name: Any, datatype: Any, shape: Any, config: ModelConfig,
                 max_rows: int) -> tuple[list[int], np.dtype]:
    """Check a declared tensor against the model before its data is touched.

    Returns:
        The shape and the numpy dtype of the tensor's data.

    Raises:
        InvalidInput: not a numeric datatype, not a batch of instances of the model's shape, empty.
        TooManyRows: more than ``max_rows`` rows.
    """
    if not isinstance(name, str):
        raise InvalidInput(f"input name must be a string, got {name!r}")
    if not isinstance(datatype, str) or datatype.upper() not in NUMERIC_DATATYPES:
        shown = datatype.upper() if isinstance(datatype, str) else repr(datatype)
        raise InvalidInput(f"input {name!r} has datatype {shown}; expected FP32 (or another numeric type)")
    checked = _check_shape(name, shape)
    instance = checked[1:]
    n = config.n_features
    if instance != [n] and instance != list(config.input_shape):
        expected = [n] if instance == [] or len(config.input_shape) == 1 else f"[{n}] or {config.input_shape}"
        raise InvalidInput(f"input {name!r}: each instance must have shape {expected} ({n} features), "
                           f"declared shape {checked}")
    if checked[0] == 0:
        raise InvalidInput(f"input {name!r}: empty batch: at least one instance is needed")
    if checked[0] > max_rows:
        raise TooManyRows(f"input {name!r} declares {checked[0]} rows; at most {max_rows} rows per request "
                          "are accepted (--max_rows)")
    return checked, np.dtype(NUMERIC_DATATYPES[datatype.upper()])


@dataclass(frozen=True)
class V2Header:
    """A V2 REST request checked up to its tensor data (what the JSON part declares)."""

    tensor: dict[str, Any]
    name: str
    shape: list[int]
    dtype: np.dtype
    binary_size: int | None  # None: the data is JSON, in ``tensor["data"]``
    request_id: str | None
    outputs: list[str]
    output_parameters: dict[str, dict[str, Any]]
    binary_outputs: bool


def json_part_length(header_length: str | None, content_length: str | None, config: ModelConfig,
                     max_rows: int) -> int | None:
    """Before any of the body is read: the length of its JSON part for the binary extension (None: all JSON).

    Raises:
        TooManyRows: the JSON part is longer than any request within ``max_rows`` can need.
        InvalidInput: ``inference-header-content-length`` is not a length within the body.
    """
    limit = json_body_limit(config, max_rows)
    body_length = int(content_length) if content_length is not None and content_length.isdigit() else None
    if header_length is None:
        if body_length is not None and body_length > limit:
            raise TooManyRows(f"a JSON request body of {body_length} bytes holds more than {max_rows} rows of "
                              f"{config.n_features} values (--max_rows); send fewer rows, or binary tensors")
        return None
    if not header_length.isdigit() or (body_length is not None and int(header_length) > body_length):
        raise InvalidInput(f"inference-header-content-length {header_length!r} is not a length within the "
                           f"{body_length}-byte body")
    if int(header_length) > limit:
        raise TooManyRows(f"a JSON header of {header_length} bytes is longer than any request within "
                          f"{max_rows} rows (--max_rows)")
    return int(header_length)


def check_v2_header(request: Any, config: ModelConfig, max_rows: int) -> V2Header:
    """Check the JSON part of a V2 REST request (the whole body, or the binary extension's header): one
    input tensor whose declared datatype, shape and rows fit the model, the requested outputs, the id.

    Nothing of the tensor data is converted here.
    """
    if not isinstance(request, dict):
        raise InvalidInput('expected a JSON object with an "inputs" list')
    tensor = _only_input(request.get("inputs"))
    name, params = tensor.get("name"), tensor.get("parameters")
    shape, dtype = check_tensor(name, tensor.get("datatype"), tensor.get("shape"), config, max_rows)
    if params is not None and not isinstance(params, dict):
        raise InvalidInput(f"input {name!r}: parameters must be an object")
    size = (params or {}).get("binary_data_size")
    if "data" in tensor and size is not None:
        raise InvalidInput(f"input {name!r} has both data and parameters.binary_data_size")
    if "data" not in tensor:
        expected = math.prod(shape) * dtype.itemsize
        if size is None:
            raise InvalidInput(f"input {name!r} has neither data nor parameters.binary_data_size")
        if size != expected or isinstance(size, bool):
            raise InvalidInput(f"input {name!r}: binary_data_size {size!r} does not fit shape {shape} of "
                               f"{tensor['datatype'].upper()} ({expected} bytes)")
    outputs, output_parameters = _requested_rest_outputs(request.get("outputs"), config)
    parameters = request.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise InvalidInput("parameters must be an object")
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput(f"id must be a string, got {request_id!r}")
    return V2Header(tensor, name, shape, dtype, size, request_id, outputs, output_parameters,
                    bool((parameters or {}).get("binary_data_output", False)))


def decode_v2_data(header: V2Header, binary: bytes, config: ModelConfig) -> Batch:
    """The checked batch: JSON data converted by numpy, or the binary bytes viewed with ``np.frombuffer``."""
    if header.binary_size is None:
        if binary:
            raise InvalidInput(f"input {header.name!r}: {len(binary)} bytes follow the JSON header, but no "
                               "input declares binary_data_size")
        array = _from_json(header.name, header.tensor["data"], header.shape)
    else:
        if len(binary) != header.binary_size:
            raise InvalidInput(f"input {header.name!r}: {len(binary)} bytes follow the JSON header; "
                               f"binary_data_size is {header.binary_size}")
        array = np.frombuffer(binary, dtype=header.dtype).reshape(header.shape)
    return Batch(_as_rows(header.name, array, config), "v2", header.request_id, header.outputs,
                 header.binary_outputs, header.output_parameters, input_name=header.name)


def parse_json(body: bytes, config: ModelConfig, max_rows: int) -> Any:
    """A JSON body, refused unparsed when it is longer than any request within ``max_rows`` can be.

    Raises:
        TooManyRows: the body is longer than :func:`json_body_limit`.
        InvalidInput: it is not JSON.
    """
    if len(body) > json_body_limit(config, max_rows):
        raise TooManyRows(f"a JSON request body of {len(body)} bytes holds more than {max_rows} rows of "
                          f"{config.n_features} values (--max_rows); send fewer rows, or binary tensors")
    return loads(body)


def loads(text: bytes) -> Any:
    """JSON, or :class:`InvalidInput` saying why not."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as e:
        raise InvalidInput(f"the request is not valid JSON: {e}") from e


def decode_grpc(request: pb.ModelInferRequest, config: ModelConfig, max_rows: int) -> Batch:
    """A gRPC ``ModelInferRequest`` (``raw_input_contents`` or typed ``contents``)."""
    if len(request.inputs) != 1:
        raise InvalidInput(f"expected exactly one input tensor ({INPUT_NAME!r}), got {len(request.inputs)}")
    tensor = request.inputs[0]
    shape, dtype = check_tensor(tensor.name, tensor.datatype, list(tensor.shape), config, max_rows)
    datatype = tensor.datatype.upper()
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1 or tensor.HasField("contents"):
            raise InvalidInput(f"input {tensor.name!r}: give either one raw_input_contents or contents, not both")
        raw = request.raw_input_contents[0]
        expected = math.prod(shape) * dtype.itemsize
        if len(raw) != expected:
            raise InvalidInput(f"input {tensor.name!r}: {len(raw)} raw bytes do not fit shape {shape} of "
                               f"{datatype} ({expected} bytes)")
        array = np.frombuffer(raw, dtype=dtype).reshape(shape)
    else:
        if datatype not in GRPC_CONTENTS:
            raise InvalidInput(f"input {tensor.name!r}: {datatype} travels only as raw_input_contents")
        values = getattr(tensor.contents, GRPC_CONTENTS[datatype])
        if len(values) != math.prod(shape):
            raise InvalidInput(f"input {tensor.name!r}: {len(values)} values do not fit shape {shape}")
        array = np.asarray(values, dtype=dtype).reshape(shape)  # bounded: the shape passed max_rows
    known = [o["name"] for o in output_metadata(config)]
    outputs = [o.name for o in request.outputs] or known
    _check_output_names(outputs, known)
    return Batch(_as_rows(tensor.name, array, config), "v2", request.id or None, outputs,
                 binary_outputs=bool(request.raw_input_contents), from_grpc=True, input_name=tensor.name)


def decode_v1(payload: Any, config: ModelConfig, max_rows: int) -> Batch:
    """The batch carried by a V1 ``{"instances": [...]}`` body (rows as lists or feature-keyed objects).

    Values must be JSON numbers: strings such as ``"1.5"`` are refused, not converted.
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
    if all(isinstance(row, dict) for row in instances):
        instances = [_row_from_mapping(row, config, i) for i, row in enumerate(instances)]
    try:
        array = np.asarray(instances)
    except (ValueError, TypeError, OverflowError) as e:
        raise InvalidInput(f'"instances" must be a rectangular list of numbers: {e}') from e
    if array.dtype.kind not in "iuf":
        raise InvalidInput(f'"instances" must be a rectangular list of numbers{_first_non_number(instances)}')
    if array.ndim < 2 or (list(array.shape[1:]) != [config.n_features]
                          and list(array.shape[1:]) != list(config.input_shape)):
        raise InvalidInput(f"each instance must have {config.n_features} features"
                           f"{'' if array.ndim < 2 else f', got shape {list(array.shape[1:])}'}")
    return Batch(_as_rows("instances", array, config), "v1", input_name="instances")


def encode_v2(batch: Batch, outputs: dict[str, np.ndarray], model_name: str, version: str) -> InferResponse:
    """A V2 response with the requested outputs, typed as the metadata says."""
    tensors = []
    for name in batch.outputs:
        data = outputs[name]
        datatype = "BYTES" if name == "label" else ("INT64" if name == "class_index" else "FP32")
        tensor = InferOutput(name=name, shape=list(data.shape), datatype=datatype)
        tensor.set_data_from_numpy(data.astype(object) if datatype == "BYTES" else data, binary_data=False)
        tensors.append(tensor)
    requested = None if batch.from_grpc or not batch.output_parameters else [
        RequestedOutput(name, batch.output_parameters.get(name) or {}) for name in batch.outputs]
    return InferResponse(
        response_id=batch.request_id or str(uuid.uuid4()), model_name=model_name, model_version=version,
        infer_outputs=tensors, from_grpc=batch.from_grpc, use_binary_outputs=batch.binary_outputs,
        requested_outputs=requested,
    )


def encode_v1(outputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """A V1 ``{"predictions": [...]}``: label, class index and probabilities per row, or values."""
    if "value" in outputs:
        return {"predictions": outputs["value"].tolist()}
    return {"predictions": [
        {"label": str(label), "class_index": int(index), "probabilities": probs}
        for label, index, probs in zip(outputs["label"], outputs["class_index"],
                                       outputs["probabilities"].tolist(), strict=True)
    ]}


def _check_shape(name: str, shape: Any) -> list[int]:
    if not isinstance(shape, (list, tuple)) or not all(isinstance(d, int) and not isinstance(d, bool)
                                                        for d in shape):
        raise InvalidInput(f"input {name!r}: shape must be a list of integers, got {shape!r}")
    if any(d < 0 for d in shape):
        raise InvalidInput(f"input {name!r}: shape {list(shape)} has a negative dimension")
    if len(shape) < 2:
        raise InvalidInput(f"input {name!r}: shape {list(shape)} is not a batch; expected [N, features]")
    return list(shape)


def _only_input(inputs: Any) -> dict[str, Any]:
    if not isinstance(inputs, list) or len(inputs) != 1:
        count = len(inputs) if isinstance(inputs, list) else "no list"
        raise InvalidInput(f'"inputs" must hold exactly one input tensor ({INPUT_NAME!r}), got {count}')
    if not isinstance(inputs[0], dict):
        raise InvalidInput("an input tensor must be a JSON object with name, shape, datatype and data")
    return inputs[0]


def _from_json(name: str, data: Any, shape: list[int]) -> np.ndarray:
    """JSON ``data`` (flat or nested) as an array of ``shape``; only numbers are accepted."""
    try:
        array = np.asarray(data)
    except (ValueError, TypeError, OverflowError) as e:
        raise InvalidInput(f"input {name!r}: data must be a flat or rectangular list of numbers: {e}") from e
    if array.dtype.kind not in "iuf":
        raise InvalidInput(f"input {name!r}: data must be JSON numbers{_first_non_number(data)}")
    if array.size != math.prod(shape):
        raise InvalidInput(f"input {name!r}: {array.size} values do not fit the declared shape {shape}")
    return array.reshape(shape)  # cast once, to float32, by _as_rows


def _first_non_number(data: Any, limit: int = 100_000) -> str:
    """``, found str 'NaN'`` for the first value that is no JSON number (for the error message only)."""
    stack, seen = [data], 0
    while stack and seen < limit:
        value = stack.pop()
        seen += 1
        if isinstance(value, list):
            stack.extend(reversed(value))
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            return f", found {type(value).__name__} {str(value)[:20]!r}"
        elif isinstance(value, int) and not -2**63 <= value < 2**64:
            return f", found an integer out of range ({str(value)[:20]})"
    return ""


def _as_rows(name: str, array: np.ndarray, config: ModelConfig) -> np.ndarray:
    """``[N, n_features]`` float32, with every value finite."""
    with np.errstate(over="ignore", invalid="ignore"):
        rows = array.astype(np.float32).reshape(array.shape[0], config.n_features)
    if not np.isfinite(rows).all():
        bad = np.flatnonzero(~np.isfinite(rows).all(axis=1))
        raise InvalidInput(f"input {name!r}: inputs contain NaN or Inf (or values beyond float32) in row(s) "
                           f"{bad[:5].tolist()}")
    return rows


def _requested_rest_outputs(outputs: Any, config: ModelConfig) -> tuple[list[str], dict[str, dict[str, Any]]]:
    known = [o["name"] for o in output_metadata(config)]
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


def _row_from_mapping(row: dict[str, Any], config: ModelConfig, index: int) -> list[Any]:
    missing = [f for f in config.feature_names if f not in row]
    if missing:
        raise InvalidInput(f"instance {index} lacks feature(s) {missing[:5]}"
                           f"{' ...' if len(missing) > 5 else ''}")
    extra = sorted(set(row) - set(config.feature_names))
    if extra:
        raise InvalidInput(f"instance {index} has unknown feature(s) {extra[:5]}")
    return [row[f] for f in config.feature_names]
