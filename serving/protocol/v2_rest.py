"""V2 REST requests, JSON and the binary extension: the JSON part checked first, then the tensor data.

Part of the codec (:mod:`pillars.serving.protocol.codec` states the contract and re-exports every name here).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from pillars.components.task.contract import InputError, Signature
from pillars.serving.errors import TooManyRows
from pillars.serving.protocol.tensors import (
    BYTES_PREFIX,
    Declared,
    check_declared,
    from_buffer,
    from_json,
    split_bytes,
)
from pillars.serving.protocol.wire import Batch, check_output_names, json_body_limit, json_too_long, loads

Buffer = bytes | memoryview
"""The binary part of a body: the tensors are viewed in it (``np.frombuffer``), never copied out of it."""


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
            raise TooManyRows(json_too_long(body_length, max_rows))
        return None
    if not header_length.isdigit() or (body_length is not None and int(header_length) > body_length):
        raise InputError(f"inference-header-content-length {header_length!r} is not a length within the "
                         f"{body_length}-byte body")
    if int(header_length) > limit:
        raise TooManyRows(f"a JSON header of {header_length} bytes is longer than any request within "
                          f"{max_rows} rows (--max_rows)")
    return int(header_length)


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


async def read_binary_request(chunks: AsyncIterator[bytes], json_length: int, signature: Signature,
                              max_rows: int) -> tuple[V2Header, Buffer]:
    """Read the binary extension's JSON header from the front of the body and check it; only then read
    the tensor bytes (a request declaring too many rows or the wrong shape is refused before the rest of
    its body is read). The routed path and the fast path both read a binary request through here.

    Args:
        chunks: the body as it arrives; iterated again after the header (the rest of the body).

    Returns:
        the checked header and the bytes after it, as a view of the body when it came in one piece.

    Raises:
        InputError: the body ends inside the header, or the header is not JSON or not a valid request.
        TooManyRows: the header declares more than ``max_rows`` rows.
    """
    parts, size = [], 0
    async for chunk in chunks:
        parts.append(chunk)
        size += len(chunk)
        if size >= json_length:
            break
    head = parts[0] if len(parts) == 1 else b"".join(parts)
    if len(head) < json_length:
        raise InputError(f"the body ends before the {json_length}-byte JSON header does")
    view = memoryview(head)
    header = check_v2_header(loads(view[:json_length]), signature, max_rows)
    rest: list[Buffer] = [view[json_length:]]
    async for chunk in chunks:
        rest.append(chunk)
    return header, rest[0] if len(rest) == 1 else b"".join(rest)


def decode_v2_data(header: V2Header, binary: Buffer) -> Batch:
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
    check_output_names(names, known)
    return names, {o["name"]: dict(o.get("parameters") or {}) for o in outputs}
