"""Turning protocol payloads into a numeric batch and model outputs into protocol responses.

One input tensor (V2 REST and gRPC; any name, ``input-0`` in the metadata) of shape
``[N, n_features]`` (or ``[N, *input_shape]`` for images) and a numeric datatype; or V1
``{"instances": [...]}`` with rows as lists or as objects keyed by feature name. Every problem is an
:class:`kserve.errors.InvalidInput` (HTTP 400, gRPC INVALID_ARGUMENT) naming what is wrong.
"""

from __future__ import annotations

import math
import uuid
from typing import Any

import numpy as np
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferOutput, InferRequest, InferResponse

from pillars.components.models import ModelConfig

INPUT_NAME = "input-0"
NUMERIC_DATATYPES = frozenset({"FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64",
                               "UINT8", "UINT16", "UINT32", "UINT64"})


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


def decode_v2(request: InferRequest) -> np.ndarray:
    """The batch carried by a V2 (REST or gRPC) request, as declared by its shape and datatype."""
    if len(request.inputs) != 1:
        raise InvalidInput(f"expected exactly one input tensor ({INPUT_NAME!r}), got {len(request.inputs)}")
    tensor: InferInput = request.inputs[0]
    datatype = str(tensor.datatype).upper()
    if datatype not in NUMERIC_DATATYPES:
        raise InvalidInput(f"input {tensor.name!r} has datatype {datatype}; expected FP32 (or another numeric type)")
    shape = _check_shape(tensor.name, tensor.shape)
    try:
        if tensor._raw_data is not None:  # gRPC raw_input_contents / REST binary extension
            expected = math.prod(shape) * np.dtype(_np_dtype(datatype)).itemsize
            if len(tensor._raw_data) != expected:
                raise InvalidInput(f"input {tensor.name!r}: {len(tensor._raw_data)} raw bytes do not fit "
                                   f"shape {shape} of {datatype} ({expected} bytes)")
        array = tensor.as_numpy()
    except InvalidInput:
        raise
    except (ValueError, TypeError, OverflowError) as e:
        raise InvalidInput(f"input {tensor.name!r}: data does not match shape {shape} and datatype "
                           f"{datatype}: {e}") from e
    if list(array.shape) != shape:
        raise InvalidInput(f"input {tensor.name!r}: data has shape {list(array.shape)}, declared {shape}")
    return array


def decode_v1(payload: Any, config: ModelConfig) -> np.ndarray:
    """The batch carried by a V1 ``{"instances": [...]}`` body (rows as lists or feature-keyed objects)."""
    if not isinstance(payload, dict) or "instances" not in payload:
        raise InvalidInput('expected a JSON object with an "instances" list')
    instances = payload["instances"]
    if not isinstance(instances, list):
        raise InvalidInput('"instances" must be a list')
    if instances and all(isinstance(row, dict) for row in instances):
        instances = [_row_from_mapping(row, config, i) for i, row in enumerate(instances)]
    try:
        return np.asarray(instances, dtype=np.float32)
    except (ValueError, TypeError, OverflowError) as e:
        raise InvalidInput(f'"instances" must be a rectangular list of numbers: {e}') from e


def requested_names(request: InferRequest, config: ModelConfig) -> list[str]:
    """Output names the request asked for (all when none), checked against the model's outputs."""
    known = [o["name"] for o in output_metadata(config)]
    if not request.request_outputs:
        return known
    names = [o.name for o in request.request_outputs]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InvalidInput(f"unknown output(s) {unknown}; this model has {known}")
    return names


def encode_v2(request: InferRequest, outputs: dict[str, np.ndarray], names: list[str],
              model_name: str, version: str) -> InferResponse:
    """A V2 response with the named outputs, typed as the metadata says."""
    tensors = []
    for name in names:
        data = outputs[name]
        datatype = "BYTES" if name == "label" else ("INT64" if name == "class_index" else "FP32")
        tensor = InferOutput(name=name, shape=list(data.shape), datatype=datatype)
        tensor.set_data_from_numpy(data.astype(object) if datatype == "BYTES" else data, binary_data=False)
        tensors.append(tensor)
    return InferResponse(
        response_id=request.id or str(uuid.uuid4()), model_name=model_name, model_version=version,
        infer_outputs=tensors, from_grpc=request.from_grpc,
        use_binary_outputs=request.use_binary_outputs,
        requested_outputs=request.request_outputs if not request.from_grpc else None,
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


def _np_dtype(datatype: str) -> str:
    return {"FP16": "float16", "FP32": "float32", "FP64": "float64"}.get(datatype, datatype.lower())


def _row_from_mapping(row: dict[str, Any], config: ModelConfig, index: int) -> list[Any]:
    missing = [f for f in config.feature_names if f not in row]
    if missing:
        raise InvalidInput(f"instance {index} lacks feature(s) {missing[:5]}"
                           f"{' ...' if len(missing) > 5 else ''}")
    extra = sorted(set(row) - set(config.feature_names))
    if extra:
        raise InvalidInput(f"instance {index} has unknown feature(s) {extra[:5]}")
    return [row[f] for f in config.feature_names]
