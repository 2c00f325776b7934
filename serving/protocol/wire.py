"""What every protocol shares: the parsed :class:`Batch`, JSON size limits and parsing, tensor metadata, and
the V2 response (REST and gRPC alike).

Part of the codec (:mod:`pillars.serving.protocol.codec` states the contract and re-exports every name here).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from kserve.protocol.infer_type import InferOutput, InferResponse, RequestedOutput

from pillars.components.task.contract import InputError, Signature, TensorSpec, numpy_dtype
from pillars.serving.errors import TooManyRows

JSON_BYTES_PER_VALUE = 64
"""Most bytes one number may take in a JSON body, separators and indentation included."""
JSON_BYTES_PER_STRING_BYTE = 6
"""Most bytes one byte of a string may take in JSON (a control character escaped as ``\\u0000``)."""
JSON_OVERHEAD_BYTES = 64 * 1024


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


def json_body_limit(signature: Signature, max_rows: int) -> int:
    """Longest JSON body (V1, or V2 without the binary extension) a request within ``max_rows`` can need."""
    per_row = sum(spec.max_values * (JSON_BYTES_PER_STRING_BYTE * spec.max_bytes + 16 if spec.datatype == "BYTES"
                                     else JSON_BYTES_PER_VALUE) for spec in signature.inputs)
    return per_row * max_rows + JSON_OVERHEAD_BYTES


def json_too_long(length: int, max_rows: int) -> str:
    return (f"a JSON request body of {length} bytes is longer than any request of at most {max_rows} rows "
            "can be (--max_rows); send fewer rows, or binary tensors")


def parse_json(body: bytes, signature: Signature, max_rows: int) -> Any:
    """A JSON body, refused unparsed when it is longer than any request within ``max_rows`` can be.

    Raises:
        TooManyRows: the body is longer than :func:`json_body_limit`.
        InputError: it is not JSON.
    """
    if len(body) > json_body_limit(signature, max_rows):
        raise TooManyRows(json_too_long(len(body), max_rows))
    return loads(body)


def loads(text: bytes) -> Any:
    """JSON, or :class:`InputError` saying why not."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as e:
        raise InputError(f"the request is not valid JSON: {e}") from e


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


def encode_v2(batch: Batch, outputs: dict[str, np.ndarray], signature: Signature, model_name: str,
              version: str) -> InferResponse:
    """A V2 response with the requested outputs, typed as the signature says, under the batch's request id
    (set on every answered request by :meth:`pillars.serving.model.PillarsModel.prepare_response`)."""
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
        response_id=batch.request_id, model_name=model_name, model_version=version,
        infer_outputs=tensors, from_grpc=batch.from_grpc, use_binary_outputs=batch.binary_outputs,
        requested_outputs=requested,
    )


def _wire_output(data: np.ndarray, datatype: str) -> np.ndarray:
    if datatype == "BYTES":
        return np.asarray(plain_strings(np.asarray(data)), dtype=object).reshape(np.shape(data))
    return np.ascontiguousarray(data, dtype=numpy_dtype(datatype))


def plain_strings(data: np.ndarray) -> list[str]:
    """A ``BYTES`` output's elements as ``str`` (bytes decoded as UTF-8, invalid bytes replaced), flat."""
    if data.dtype.kind == "U":  # numpy strings: tolist gives str already
        return data.reshape(-1).tolist()
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in data.reshape(-1).tolist()]


def check_output_names(names: list[str], known: list[str]) -> None:
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InputError(f"unknown output(s) {unknown[:5]}; this model has {known}")
