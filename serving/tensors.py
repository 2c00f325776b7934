"""Checking a request's tensors against the model's signature, and reading their data.

The signature-driven core of :mod:`pillars.serving.codec` (which frames V1, V2 REST and gRPC around it):

- :func:`check_declared`: the declared ``(name, datatype, shape)`` of every tensor against the
  :class:`pillars.components.task.Signature` and ``max_rows``, before any data is touched: every required
  input present, no unknown or repeated one, a datatype the input takes (a float input takes floats and
  integers, an integer input integers, ``BOOL`` and ``BYTES`` only themselves), a batch of the input's
  instance shape (``-1`` dimensions 1 to ``max_length``; a fixed shape may come flat), the same rows in
  every input. A model with a single input takes one tensor under any name.
- :func:`from_json`, :func:`split_bytes`, :func:`strings`: the data, bounded by the declared shape:
  numbers converted by numpy in one call; strings (JSON strings, length-prefixed binary elements, gRPC
  ``bytes_contents``) read one by one, each at most ``max_bytes`` long and UTF-8, as numpy unicode arrays.
- :func:`as_input`: the array as the task takes it (the spec's dtype, floats finite, integers in range).

Every error is a :class:`kserve.errors.InvalidInput` naming the input, or
:class:`pillars.serving.errors.TooManyRows` for more than ``max_rows`` rows.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from kserve.errors import InvalidInput

from pillars.components.task import Signature, TensorSpec
from pillars.serving.errors import TooManyRows

WIRE_DTYPES = {"BOOL": "|b1", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8", "INT8": "i1", "INT16": "<i2",
               "INT32": "<i4", "INT64": "<i8", "UINT8": "u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8"}
"""Numeric V2 datatypes and their little-endian numpy dtypes (the binary wire format)."""
FLOATS = ("FP16", "FP32", "FP64")
INTEGERS = ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")
BYTES_PREFIX = 4
"""The length prefix of one ``BYTES`` element in the binary extension and in raw gRPC contents."""


def accepted_datatypes(spec: TensorSpec) -> tuple[str, ...]:
    """The request datatypes an input takes: floats and integers for a float input, integers for an
    integer input, only ``BOOL`` or only ``BYTES`` for those."""
    if spec.datatype in FLOATS:
        return FLOATS + INTEGERS
    if spec.datatype in INTEGERS:
        return INTEGERS
    return (spec.datatype,)


@dataclass(frozen=True)
class Declared:
    """One input tensor as the request declares it, checked against its spec (no data touched yet)."""

    name: str
    """The name the request used (a single-input model takes any)."""
    spec: TensorSpec
    shape: list[int]
    """The declared shape, batch axis first."""
    instance: tuple[int, ...]
    """The shape of one instance as the model takes it (a flat fixed shape is reshaped to this)."""
    datatype: str

    @property
    def count(self) -> int:
        """Values (or strings) the tensor holds."""
        return math.prod(self.shape)

    @property
    def wire_dtype(self) -> np.dtype:
        return np.dtype(WIRE_DTYPES[self.datatype])


# ---- declared tensors -------------------------------------------------------------------------------

def check_declared(tensors: Sequence[tuple[Any, Any, Any]], signature: Signature,
                   max_rows: int) -> list[Declared]:
    """Check the declared ``(name, datatype, shape)`` of every tensor of a request against the signature.

    Raises:
        InvalidInput: an unknown, repeated or missing input, a datatype the input does not take, a shape
            that is not a batch of its instances, an empty batch, inputs with different row counts.
        TooManyRows: more than ``max_rows`` rows.
    """
    specs = {s.name: s for s in signature.inputs}
    if not tensors:
        raise InvalidInput(f'"inputs" must hold exactly one tensor per input of the model ({sorted(specs)}), '
                           "got none")
    single = len(signature.inputs) == 1 and len(tensors) == 1
    checked: list[Declared] = []
    for name, datatype, shape in tensors:
        if not isinstance(name, str):
            raise InvalidInput(f"input name must be a string, got {name!r}")
        spec = signature.inputs[0] if single else specs.get(name)
        if spec is None:
            raise InvalidInput(f"unknown input {name!r}; this model takes {sorted(specs)}")
        if any(d.spec.name == spec.name for d in checked):
            raise InvalidInput(f"input {name!r} is given twice: send exactly one tensor per input")
        checked.append(_check_tensor(name, spec, datatype, shape, max_rows))
    given = {d.spec.name for d in checked}
    missing = [s.name for s in signature.inputs if not s.optional and s.name not in given]
    if missing:
        optional = sorted(s.name for s in signature.inputs if s.optional)
        raise InvalidInput(f"input {missing[0]!r} is missing; this model takes {sorted(specs)}"
                           f"{f' (optional: {optional})' if optional else ''}")
    rows = checked[0].shape[0]
    for declared in checked[1:]:
        if declared.shape[0] != rows:
            raise InvalidInput(f"input {declared.name!r} has {declared.shape[0]} rows; input {checked[0].name!r} "
                               f"has {rows}: every input needs one row per instance")
    return checked


def _check_tensor(name: str, spec: TensorSpec, datatype: Any, shape: Any, max_rows: int) -> Declared:
    accepted = accepted_datatypes(spec)
    if not isinstance(datatype, str) or datatype.upper() not in accepted:
        shown = datatype.upper() if isinstance(datatype, str) else repr(datatype)
        other = " (or another numeric type)" if len(accepted) > 1 else ""
        raise InvalidInput(f"input {name!r} has datatype {shown}; expected {spec.datatype}{other}")
    if not isinstance(shape, (list, tuple)) or not all(isinstance(d, int) and not isinstance(d, bool)
                                                        for d in shape):
        raise InvalidInput(f"input {name!r}: shape must be a list of integers, got {shape!r}")
    shape = list(shape)
    if any(d < 0 for d in shape):
        raise InvalidInput(f"input {name!r}: shape {shape} has a negative dimension")
    if not shape or (len(shape) == len(spec.shape) and spec.shape):
        raise InvalidInput(f"input {name!r}: shape {shape} is not a batch; expected {_expected(spec)}")
    instance = instance_shape(name, spec, shape[1:], shape)
    if shape[0] == 0:
        raise InvalidInput(f"input {name!r}: empty batch: at least one instance is needed")
    if shape[0] > max_rows:
        raise TooManyRows(f"input {name!r} declares {shape[0]} rows; at most {max_rows} rows per request "
                          "are accepted (--max_rows)")
    return Declared(name, spec, shape, instance, datatype.upper())


def instance_shape(name: str, spec: TensorSpec, dims: Sequence[int], shape: Sequence[int]) -> tuple[int, ...]:
    """The model's shape of one instance for declared instance dimensions ``dims`` (of ``shape``).

    ``-1`` dimensions take 1 to ``max_length``; a fixed shape may also come flat (``[N, prod(shape)]``).

    Raises:
        InvalidInput: naming the input, the expected and the declared shape.
    """
    dims = list(dims)
    if len(dims) == len(spec.shape) and all(d == s or (s == -1 and 1 <= d <= spec.max_length)
                                            for d, s in zip(dims, spec.shape)):
        return tuple(dims)
    if -1 not in spec.shape and dims == [math.prod(spec.shape)]:
        return spec.shape  # a fixed shape, sent flat
    features = f" ({len(spec.labels)} features)" if spec.labels else ""
    instance = [f"1..{spec.max_length}" if s == -1 else s for s in spec.shape]
    raise InvalidInput(f"input {name!r}: each instance must have shape [{', '.join(map(str, instance))}]"
                       f"{features}; expected {_expected(spec)}, got shape {list(shape)}")


def _expected(spec: TensorSpec) -> str:
    dims = ["N", *(f"1..{spec.max_length}" if s == -1 else str(s) for s in spec.shape)]
    return f"[{', '.join(dims)}]"


# ---- data -------------------------------------------------------------------------------------------

def as_input(name: str, spec: TensorSpec, array: np.ndarray, rows: int, instance: tuple[int, ...]) -> np.ndarray:
    """``array`` as the model takes it: ``[rows, *instance]`` of the spec's dtype, floats finite, integers
    within the spec's range.

    Raises:
        InvalidInput: NaN or Inf (or values beyond the type), integers out of range; naming the rows.
    """
    array = array.reshape(rows, *instance)
    if spec.datatype == "BYTES":
        return array
    target = np.dtype(WIRE_DTYPES[spec.datatype]).newbyteorder("=")
    if target.kind == "f":
        with np.errstate(over="ignore", invalid="ignore"):
            converted = array.astype(target)
        finite = np.isfinite(converted.reshape(rows, -1)).all(axis=1)
        if not finite.all():
            raise InvalidInput(f"input {name!r}: inputs contain NaN or Inf (or values beyond {spec.datatype}) in "
                               f"row(s) {np.flatnonzero(~finite)[:5].tolist()}")
        return converted
    if target.kind in "iu" and array.size:
        info = np.iinfo(target)
        low, high = int(array.min()), int(array.max())
        if low < info.min or high > info.max:
            raise InvalidInput(f"input {name!r}: values out of range for {spec.datatype} ({low} to {high})")
    return array.astype(target)


def from_json(declared: Declared, data: Any) -> np.ndarray:
    """JSON ``data`` (flat or nested) of a declared tensor; numbers for numeric inputs, strings for BYTES."""
    name = declared.name
    if declared.datatype == "BYTES":
        return strings(declared, flatten(name, data, declared.count))
    try:
        array = np.asarray(data)
    except (ValueError, TypeError, OverflowError) as e:
        raise InvalidInput(f"input {name!r}: data must be a flat or rectangular list of numbers: {e}") from e
    kinds = "b" if declared.datatype == "BOOL" else "iu" if declared.spec.datatype in INTEGERS else "iuf"
    if array.dtype.kind not in kinds:
        what = "JSON booleans" if kinds == "b" else "JSON integers" if kinds == "iu" else "JSON numbers"
        raise InvalidInput(f"input {name!r}: data must be {what}{first_non_number(data) if kinds != 'b' else ''}")
    if array.size != declared.count:
        raise InvalidInput(f"input {name!r}: {array.size} values do not fit the declared shape {declared.shape}")
    return array


def flatten(name: str, data: Any, count: int) -> list[Any]:
    """The leaves of a flat or nested JSON list, refused as soon as there are more than ``count``."""
    if not isinstance(data, list):
        raise InvalidInput(f"input {name!r}: data must be a list of strings, got {type(data).__name__}")
    leaves: list[Any] = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            leaves.append(value)
            if len(leaves) > count:
                raise InvalidInput(f"input {name!r}: more than {count} strings for the declared shape")
        else:
            stack.pop()
    if len(leaves) != count:
        raise InvalidInput(f"input {name!r}: {len(leaves)} strings do not fit the declared shape")
    return leaves


def strings(declared: Declared, values: list[Any]) -> np.ndarray:
    """Strings (``str``, or ``bytes`` as UTF-8) as a numpy unicode array, each at most ``max_bytes`` long."""
    name, limit = declared.name, declared.spec.max_bytes
    out: list[str] = []
    for i, value in enumerate(values):
        if isinstance(value, bytes):
            if len(value) > limit:
                raise InvalidInput(f"input {name!r}: element {i} is longer than {limit} bytes")
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInput(f"input {name!r}: element {i} is not UTF-8") from None
        elif isinstance(value, str):
            try:
                too_long = len(value) > limit or len(value.encode("utf-8")) > limit
            except UnicodeEncodeError:
                raise InvalidInput(f"input {name!r}: element {i} is not valid Unicode") from None
            if too_long:
                raise InvalidInput(f"input {name!r}: element {i} is longer than {limit} bytes")
        else:
            raise InvalidInput(f"input {name!r}: element {i} is a {type(value).__name__}, not a string")
        out.append(value)
    return np.asarray(out, dtype=str) if out else np.zeros(0, dtype="<U1")


def split_bytes(declared: Declared, chunk: bytes) -> np.ndarray:
    """The binary extension's (and raw gRPC's) ``BYTES``: each element a 4-byte little-endian length, then
    that many bytes; exactly ``count`` elements."""
    name, limit = declared.name, declared.spec.max_bytes
    values: list[bytes] = []
    offset = 0
    for i in range(declared.count):
        if offset + BYTES_PREFIX > len(chunk):
            raise InvalidInput(f"input {name!r}: the binary data ends before element {i} of {declared.count}")
        (length,) = struct.unpack_from("<I", chunk, offset)
        offset += BYTES_PREFIX
        if length > limit:
            raise InvalidInput(f"input {name!r}: element {i} is longer than {limit} bytes")
        if offset + length > len(chunk):
            raise InvalidInput(f"input {name!r}: the binary data ends inside element {i}")
        values.append(chunk[offset:offset + length])
        offset += length
    if offset != len(chunk):
        raise InvalidInput(f"input {name!r}: {len(chunk) - offset} bytes left after {declared.count} elements")
    return strings(declared, values)


def first_non_number(data: Any, limit: int = 100_000) -> str:
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
