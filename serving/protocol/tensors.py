"""Reading a V2 request's tensors into arrays, bounded by what it declares.

The wire side of :mod:`pillars.serving.protocol.codec` (which frames V1, V2 REST and gRPC around it). Whether the
arrays fit the model is decided once, by :func:`pillars.components.task.contract.check_inputs`; what is refused
here must be refused before any tensor data is decoded, or is about the wire format itself:

- :func:`check_declared`: every tensor's declared name, datatype (an Open Inference Protocol one) and shape
  (a list of non-negative integers); at most ``max_rows`` rows (:func:`check_row_limit`); then the
  contract's rules on names, shapes and rows (:func:`pillars.components.task.contract.check_declared`), so a
  request of the wrong shape is refused on its header alone, in the same words as the full check. A model
  with a single input takes one tensor under any name (as KServe's own runtimes do).
- :func:`from_json`, :func:`split_bytes`: the data, bounded by the declared shape: JSON numbers converted
  by numpy in one call (and to the declared datatype); strings (JSON strings, length-prefixed binary
  elements, gRPC ``bytes_contents``) read one by one, as numpy unicode arrays.

Every error is a :class:`pillars.components.task.contract.InputError` naming the input, or
:class:`pillars.serving.errors.TooManyRows` for more than ``max_rows`` rows.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pillars.components.task.accepted import AcceptedMemo
from pillars.components.task.contract import (
    DATATYPES,
    INTEGERS,
    NUMERIC_DTYPES,
    InputError,
    Signature,
    TensorSpec,
    as_datatype,
    as_strings,
    check_declared as check_contract,
    first_non_number,
)
from pillars.serving.errors import TooManyRows

BYTES_PREFIX = 4
"""The length prefix of one ``BYTES`` element in the binary extension and in raw gRPC contents."""


@dataclass(frozen=True)
class Declared:
    """One input tensor as the request declares it, its name and shape checked (no data touched yet)."""

    name: str
    """The input's name (a single-input model's one tensor is named as its input, whatever it was sent as)."""
    spec: TensorSpec
    shape: list[int]
    """The declared shape, batch axis first."""
    datatype: str

    @property
    def count(self) -> int:
        """Values (or strings) the tensor holds."""
        return math.prod(self.shape)

    @property
    def wire_dtype(self) -> np.dtype:
        return np.dtype(NUMERIC_DTYPES[self.datatype])


def check_row_limit(rows: int, max_rows: int) -> None:
    """Refuse a request of more than ``max_rows`` rows (every protocol, before decoding).

    Raises:
        TooManyRows: 413 / RESOURCE_EXHAUSTED.
    """
    if rows > max_rows:
        raise TooManyRows(f"{rows} rows; at most {max_rows} rows per request are accepted (--max_rows)")


ACCEPTED_KEPT = 256
"""At most this many accepted declarations are remembered by :func:`check_declared` (by signature and row limit)."""
_ACCEPTED: AcceptedMemo[list[Declared]] = AcceptedMemo(ACCEPTED_KEPT)


def check_declared(tensors: Sequence[tuple[Any, Any, Any]], signature: Signature, max_rows: int) -> list[Declared]:
    """Check the declared ``(name, datatype, shape)`` of every tensor of a request, before its data.

    The answer depends only on the declarations, the signature and ``max_rows``: an accepted declaration
    (``str`` name and datatype, a list or tuple of ``int`` dimensions) is remembered for that signature
    object and given again (the same :class:`Declared` objects: read-only); a refused one never is.

    Raises:
        InputError: a name, datatype or shape that is not one, or what the contract refuses on names,
            shapes and rows.
        TooManyRows: more than ``max_rows`` rows.
    """
    key = _declaration_key(tensors, signature, max_rows)
    known = _ACCEPTED.get(key, signature)
    if known is not None:
        return known
    return _ACCEPTED.put(key, signature, _check_declared(tensors, signature, max_rows))


def _declaration_key(tensors: Sequence[tuple[Any, Any, Any]], signature: Signature,
                     max_rows: int) -> tuple[Any, ...] | None:
    """What :func:`check_declared`'s answer depends on, hashable; None (always checked in full) when a
    name or datatype is not a ``str`` or a dimension not an ``int`` (``1.0 == 1``, ``True == 1``)."""
    parts = []
    for name, datatype, shape in tensors:
        if (type(name) is not str or type(datatype) is not str or type(shape) not in (list, tuple)
                or not all(type(d) is int for d in shape)):
            return None
        parts.append((name, datatype, tuple(shape)))
    return (id(signature), max_rows, *parts)  # the signature object is kept with the answer, and compared


def _check_declared(tensors: Sequence[tuple[Any, Any, Any]], signature: Signature, max_rows: int) -> list[Declared]:
    if not tensors:
        raise InputError(f'"inputs" must hold exactly one tensor per input of the model '
                         f"({sorted(s.name for s in signature.inputs)}), got none")
    single = len(signature.inputs) == 1 and len(tensors) == 1
    checked: list[tuple[str, str, list[int]]] = []
    for name, datatype, shape in tensors:
        if not isinstance(name, str):
            raise InputError(f"input name must be a string, got {name!r}")
        if not isinstance(datatype, str) or datatype.upper() not in DATATYPES:
            shown = datatype.upper() if isinstance(datatype, str) else repr(datatype)
            raise InputError(f"input {name!r} has datatype {shown}, which is not an Open Inference Protocol "
                             f"datatype ({', '.join(DATATYPES)})")
        if not isinstance(shape, (list, tuple)) or not all(isinstance(d, int) and not isinstance(d, bool)
                                                            for d in shape):
            raise InputError(f"input {name!r}: shape must be a list of integers, got {shape!r}")
        if any(d < 0 for d in shape):
            raise InputError(f"input {name!r}: shape {list(shape)} has a negative dimension")
        checked.append((signature.inputs[0].name if single else name, datatype.upper(), list(shape)))
    check_row_limit(max((shape[0] for _, _, shape in checked if shape), default=0), max_rows)
    check_contract(signature, [(name, shape) for name, _, shape in checked])
    specs = {s.name: s for s in signature.inputs}
    return [Declared(name, specs[name], shape, datatype) for name, datatype, shape in checked]


# ---- data -------------------------------------------------------------------------------------------

def from_json(declared: Declared, data: Any) -> np.ndarray:
    """JSON ``data`` (flat or nested) of a declared tensor, in its declared shape and datatype."""
    name = declared.name
    if declared.datatype == "BYTES":
        values = flatten(name, data, declared.count)
        return as_strings(name, declared.spec.max_bytes, values).reshape(declared.shape)
    try:
        array = np.asarray(data)
    except (ValueError, TypeError, OverflowError) as e:
        raise InputError(f"input {name!r}: data must be a flat or rectangular list of numbers: {e}") from e
    kinds = "b" if declared.datatype == "BOOL" else "iu" if declared.datatype in INTEGERS else "iuf"
    if array.dtype.kind not in kinds:
        what = "JSON booleans" if kinds == "b" else "JSON integers" if kinds == "iu" else "JSON numbers"
        found = first_non_number(data) if kinds != "b" else ""
        raise InputError(f"input {name!r}: data must be {what}{f', found {found}' if found else ''}")
    if array.size != declared.count:
        raise InputError(f"input {name!r}: {array.size} values do not fit the declared shape {declared.shape}")
    return as_datatype(name, array.reshape(declared.shape), declared.datatype)


def flatten(name: str, data: Any, count: int) -> list[Any]:
    """The leaves of a flat or nested JSON list, refused as soon as there are more than ``count``."""
    if not isinstance(data, list):
        raise InputError(f"input {name!r}: data must be a list of strings, got {type(data).__name__}")
    leaves: list[Any] = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            leaves.append(value)
            if len(leaves) > count:
                raise InputError(f"input {name!r}: more than {count} strings for the declared shape")
        else:
            stack.pop()
    if len(leaves) != count:
        raise InputError(f"input {name!r}: {len(leaves)} strings do not fit the declared shape")
    return leaves


def split_bytes(declared: Declared, chunk: bytes | memoryview) -> np.ndarray:
    """The binary extension's (and raw gRPC's) ``BYTES``: each element a 4-byte little-endian length, then
    that many bytes; exactly ``count`` elements, as a numpy unicode array of the declared shape."""
    name, limit = declared.name, declared.spec.max_bytes
    values: list[bytes] = []
    offset = 0
    for i in range(declared.count):
        if offset + BYTES_PREFIX > len(chunk):
            raise InputError(f"input {name!r}: the binary data ends before element {i} of {declared.count}")
        (length,) = struct.unpack_from("<I", chunk, offset)
        offset += BYTES_PREFIX
        if offset + length > len(chunk):
            raise InputError(f"input {name!r}: the binary data ends inside element {i}")
        values.append(bytes(chunk[offset:offset + length]))  # a memoryview's slice is a view
        offset += length
    if offset != len(chunk):
        raise InputError(f"input {name!r}: {len(chunk) - offset} bytes left after {declared.count} elements")
    return as_strings(name, limit, values).reshape(declared.shape)


def from_buffer(declared: Declared, chunk: bytes | memoryview) -> np.ndarray:
    """Binary numbers of a declared tensor (little-endian), viewed without copying, in its declared shape."""
    expected = declared.count * declared.wire_dtype.itemsize
    if len(chunk) != expected:
        raise InputError(f"input {declared.name!r}: {len(chunk)} bytes do not fit shape {declared.shape} of "
                         f"{declared.datatype} ({expected} bytes)")
    return np.frombuffer(chunk, dtype=declared.wire_dtype).reshape(declared.shape)
