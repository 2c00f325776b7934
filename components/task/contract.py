"""The tensor contract: datatypes, a model's named inputs and outputs, and the one check of a batch.

One module decides whether a batch fits a model, so every entry point gives the same decision in the
same words: :meth:`pillars.components.model.predictor.Predictor.predict` (MLflow pyfunc, the gate, evaluation)
and the model server's V1, V2 REST (JSON and binary) and V2 gRPC paths, which parse their wire format
into arrays (:mod:`pillars.serving.protocol.codec`) and hand them to :func:`check_inputs`.

The rules, in the order they are checked:

1. names: no unknown input, none given twice, every required input present;
2. shape, per input in signature order: a batch (``[N, *instance]``, ``N >= 1``) of the input's instance
   shape; ``-1`` dimensions take 1 to ``max_length``; a fixed shape may also come flat
   (``[N, prod(shape)]``) and is reshaped;
3. rows: every input given has the same ``N`` (an optional input too: one row per instance);
4. datatype: a float input takes floats and integers, an integer input integers, ``BOOL`` and ``BYTES``
   only themselves (a boolean is not a number here);
5. values: converted to the input's datatype; floats finite (NaN, Inf or beyond the type refused, naming
   the rows), integers within the type's range, strings UTF-8 and at most ``max_bytes`` long each.

Steps 1-3 need only names and shapes: the server applies them (:func:`check_declared`) to what a request
declares, before decoding its tensors, and :func:`check_inputs` applies them again to the arrays, so the
two never disagree. Every refusal is an :class:`InputError` naming the input (HTTP 400, gRPC
INVALID_ARGUMENT). What comes out is one numpy array per input given, of the datatype's dtype
(strings as numpy unicode arrays) and the instance shape: what the task's ``encode`` takes unchecked.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pillars.components.errors import ConfigError, PillarsError
from pillars.components.task.accepted import AcceptedMemo

NUMERIC_DTYPES = {"BOOL": "|b1", "UINT8": "u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
                  "INT8": "i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
                  "FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}
"""The numeric Open Inference Protocol datatypes and their little-endian numpy dtypes (the binary wire)."""
DATATYPES = (*NUMERIC_DTYPES, "BYTES")
"""Every Open Inference Protocol tensor datatype."""
FLOATS = ("FP16", "FP32", "FP64")
INTEGERS = ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")
_BY_KIND_AND_SIZE = {(np.dtype(d).kind, np.dtype(d).itemsize): name for name, d in NUMERIC_DTYPES.items()}


class InputError(PillarsError, ValueError):
    """A prediction request's input does not fit the model (shape, type, NaN/Inf, empty batch, unknown id).

    Its message names the input; the model server answers it with 400 / INVALID_ARGUMENT.
    """


@functools.cache
def numpy_dtype(datatype: str) -> np.dtype:
    """The native-order numpy dtype of a numeric datatype (looked up once per datatype: every request asks)."""
    return np.dtype(NUMERIC_DTYPES[datatype]).newbyteorder("=")


def datatype_of(array: np.ndarray) -> str:
    """The datatype an array holds: ``FP32`` ..., ``BYTES`` for strings (numpy unicode or bytes, or an
    object array of ``str``/``bytes``), else numpy's name for it (``object``, ``complex128``)."""
    kind = array.dtype.kind
    if kind in "US" or (kind == "O" and all(isinstance(v, (str, bytes)) for v in array.reshape(-1).tolist())):
        return "BYTES"
    datatype = _BY_KIND_AND_SIZE.get((kind, array.dtype.itemsize))
    return datatype if datatype is not None else array.dtype.name  # the name only when needed: it is slow


def accepted_datatypes(datatype: str) -> tuple[str, ...]:
    """The datatypes an input of ``datatype`` takes: floats and integers for a float input, integers for an
    integer input, only ``BOOL`` or only ``BYTES`` for those."""
    if datatype in FLOATS:
        return FLOATS + INTEGERS
    if datatype in INTEGERS:
        return INTEGERS
    return (datatype,)


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One named input or output tensor.

    Attributes:
        name: the tensor's name on the wire (V2 ``inputs[].name``, V1 instance key).
        datatype: an Open Inference Protocol datatype (``FP32``, ``INT64``, ``BYTES``, ...).
        shape: the shape of ONE instance (the batch axis is not included); ``-1`` is a dimension of any
            length from 1 to ``max_length``. ``()`` is one scalar (or one string) per instance.
        optional: an input a request may leave out (the task's ``encode`` supplies the default).
        max_length: the longest a ``-1`` dimension may be (requests are refused by size before decoding).
        max_bytes: for ``BYTES`` inputs, the longest one element may be, in bytes.
        labels: names of the values along the last axis (a table's feature names): a V1 instance may be an
            object keyed by them, and MLflow pyfunc takes them as DataFrame columns.
        description: for people reading the model metadata.
    """

    name: str
    datatype: str
    shape: tuple[int, ...] = ()
    optional: bool = False
    max_length: int = 0
    max_bytes: int = 4096
    labels: tuple[str, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        if self.datatype not in DATATYPES:
            raise ConfigError(f"tensor {self.name!r}: datatype must be one of {', '.join(DATATYPES)}, "
                              f"got {self.datatype!r}")
        if any(d == 0 or d < -1 for d in self.shape):
            raise ConfigError(f"tensor {self.name!r}: dimensions are positive, or -1 for any length; got {self.shape}")
        if -1 in self.shape and self.max_length < 1:
            raise ConfigError(f"tensor {self.name!r}: a -1 dimension needs max_length (the longest accepted)")

    @property
    def max_values(self) -> int:
        """Most values one instance may hold (variable dimensions at ``max_length``)."""
        return math.prod(self.max_length if d == -1 else d for d in self.shape)

    def to_dict(self) -> dict[str, Any]:
        """As V2 model metadata lists a tensor (``shape`` with the batch axis ``-1`` in front)."""
        return {"name": self.name, "datatype": self.datatype, "shape": [-1, *self.shape]}


@dataclasses.dataclass(frozen=True)
class Signature:
    """The model's inputs and outputs."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def __post_init__(self) -> None:
        for kind, specs in (("input", self.inputs), ("output", self.outputs)):
            names = [s.name for s in specs]
            if not names:
                raise ConfigError(f"a signature needs at least one {kind}")
            if len(set(names)) != len(names):
                raise ConfigError(f"{kind} names must be unique, got {names}")

    def input(self, name: str) -> TensorSpec:
        """The input named ``name`` (KeyError when there is none)."""
        return {s.name: s for s in self.inputs}[name]

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": [dataclasses.asdict(s) for s in self.inputs],
                "outputs": [dataclasses.asdict(s) for s in self.outputs]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Signature:
        def specs(items: Sequence[Mapping[str, Any]]) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(**{**item, "shape": tuple(item.get("shape", ())),
                                       "labels": tuple(item.get("labels", ()))}) for item in items)
        return cls(specs(data["inputs"]), specs(data["outputs"]))


# ---- names, shapes, rows (what a request declares) ------------------------------------------------------

def check_names(signature: Signature, names: Sequence[str]) -> None:
    """No unknown input, none twice, every required input present.

    Raises:
        InputError: naming the unknown, repeated or (first) missing input.
    """
    known = [s.name for s in signature.inputs]
    unknown = sorted({n for n in names if n not in known})
    if unknown:
        raise InputError(f"unknown input(s) {unknown[:5]}; this model takes {sorted(known)}")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InputError(f"input {twice[0]!r} is given twice: send exactly one tensor per input")
    missing = [s.name for s in signature.inputs if not s.optional and s.name not in names]
    if missing:
        optional = sorted(s.name for s in signature.inputs if s.optional)
        raise InputError(f"input {missing[0]!r} is missing; this model takes {sorted(known)}"
                         f"{f' (optional: {optional})' if optional else ''}")


def instance_shape(spec: TensorSpec, shape: Sequence[int]) -> tuple[int, ...]:
    """The model's shape of one instance of a batch of ``shape`` (batch axis first).

    Raises:
        InputError: an empty batch, a shape that is not a batch, or instances of another shape.
    """
    shape = list(shape)
    if shape and shape[0] == 0:
        raise InputError(f"input {spec.name!r}: empty batch: at least one instance is needed")
    if not shape or (spec.shape and len(shape) == len(spec.shape)):
        raise InputError(f"input {spec.name!r}: shape {shape} is not a batch; expected {_expected(spec)}")
    dims = shape[1:]
    if len(dims) == len(spec.shape) and all(d == s or (s == -1 and 1 <= d <= spec.max_length)
                                            for d, s in zip(dims, spec.shape)):
        return tuple(dims)
    if -1 not in spec.shape and dims == [math.prod(spec.shape)]:
        return spec.shape  # a fixed shape, sent flat
    features = f" ({len(spec.labels)} features)" if spec.labels else ""
    instance = [f"1..{spec.max_length}" if s == -1 else s for s in spec.shape]
    raise InputError(f"input {spec.name!r}: each instance must have shape [{', '.join(map(str, instance))}]"
                     f"{features}; expected {_expected(spec)}, got shape {shape}")


def _expected(spec: TensorSpec) -> str:
    dims = ["N", *(f"1..{spec.max_length}" if s == -1 else str(s) for s in spec.shape)]
    return f"[{', '.join(dims)}]"


ACCEPTED_HEADERS_KEPT = 256
"""At most this many accepted names-and-shapes are remembered by :func:`check_declared`."""
_ACCEPTED_HEADERS: AcceptedMemo[dict[str, tuple[int, ...]]] = AcceptedMemo(ACCEPTED_HEADERS_KEPT)


def check_declared(signature: Signature, tensors: Sequence[tuple[str, Sequence[int]]]) -> dict[str, tuple[int, ...]]:
    """Rules 1-3 on ``(name, shape)`` pairs: the names, each shape, equal rows. Returns each input's
    instance shape, in signature order.

    The answer depends only on the signature and the pairs, so an accepted set of names and shapes (of
    ``str`` names and ``int`` dimensions) is remembered for that signature object; a refused one never is.

    Raises:
        InputError: naming the input and what is wrong.
    """
    key = _header_key(signature, tensors)
    known = _ACCEPTED_HEADERS.get(key, signature)
    if known is not None:
        return known
    return _ACCEPTED_HEADERS.put(key, signature, _check_declared(signature, tensors))


def _header_key(signature: Signature, tensors: Sequence[tuple[str, Sequence[int]]]) -> tuple[Any, ...] | None:
    """What :func:`check_declared`'s answer depends on, hashable; None when a name is not a ``str`` or a
    dimension not an ``int`` (``1.0 == 1`` and ``True == 1``: such pairs are always checked in full)."""
    pairs = []
    for name, shape in tensors:
        if type(name) is not str or type(shape) not in (list, tuple) or not all(type(d) is int for d in shape):
            return None
        pairs.append((name, tuple(shape)))
    return (id(signature), *pairs)  # the signature object itself is kept with the answer, and compared


def _check_declared(signature: Signature,
                    tensors: Sequence[tuple[str, Sequence[int]]]) -> dict[str, tuple[int, ...]]:
    names = [name for name, _ in tensors]
    check_names(signature, names)
    shapes = dict(tensors)
    instances = {s.name: instance_shape(s, shapes[s.name]) for s in signature.inputs if s.name in shapes}
    if not instances:
        return instances  # a model whose inputs are all optional: its task says what it needs
    first, *others = instances
    for name in others:
        if shapes[name][0] != shapes[first][0]:
            raise InputError(f"input {name!r} has {shapes[name][0]} rows; input {first!r} has {shapes[first][0]}: "
                             "every input needs one row per instance")
    return instances


# ---- the whole check -------------------------------------------------------------------------------------

def check_inputs(signature: Signature, arrays: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The batch ``arrays`` (named array-likes, one row per instance) as the model takes it, or why not.

    An input given as None counts as not given.

    Returns:
        One array per input given, ``[N, *instance]`` of its datatype's dtype (strings: numpy unicode).

    Raises:
        InputError: the first rule (module docstring) the batch breaks, naming the input.
    """
    given = {name: value for name, value in arrays.items() if value is not None}
    check_names(signature, list(given))
    converted = {s.name: _as_array(s, given[s.name]) for s in signature.inputs if s.name in given}
    instances = check_declared(signature, [(name, array.shape) for name, array in converted.items()])
    result: dict[str, np.ndarray] = {}
    for spec in signature.inputs:
        if spec.name in converted:
            array = converted[spec.name]
            value = given[spec.name]
            result[spec.name] = _values(spec, array.reshape(len(array), *instances[spec.name]), value)
    return result


def _as_array(spec: TensorSpec, value: Any) -> np.ndarray:
    """``value`` as a numpy array (lists converted; strings kept as objects for a ``BYTES`` input)."""
    if isinstance(value, np.ndarray) and not (value.dtype.kind == "O" and spec.datatype != "BYTES"):
        return value
    if isinstance(value, np.ndarray):
        value = value.tolist()  # objects for a numeric input: numbers, or strings, as a list would be
    try:
        return np.asarray(value, dtype=object if spec.datatype == "BYTES" else None)
    except ValueError as e:
        if "inhomogeneous" in str(e):
            raise InputError(f"input {spec.name!r}: instances have different lengths (shapes); a batch is one "
                             "array: pad to one length or send one instance per request") from e
        raise InputError(f"input {spec.name!r}: not a rectangular array{_found(value)}") from e
    except (TypeError, OverflowError) as e:
        raise InputError(f"input {spec.name!r}: not a rectangular array{_found(value)}") from e


def _values(spec: TensorSpec, array: np.ndarray, value: Any) -> np.ndarray:
    """Rules 4 and 5: ``array`` (already in the instance shape) of the spec's datatype, checked."""
    if spec.datatype == "BYTES" and array.dtype.kind in "US":
        return as_strings(spec.name, spec.max_bytes, array)
    if spec.datatype == "BYTES" and array.dtype.kind == "O":
        values = array.reshape(-1).tolist()
        if any(isinstance(v, (str, bytes)) for v in values) or not _numbers(values):
            return as_strings(spec.name, spec.max_bytes, array)
        array = np.asarray(values).reshape(array.shape)  # numbers only (a JSON list): judged by their datatype
    datatype = datatype_of(array)
    accepted = accepted_datatypes(spec.datatype)
    if datatype not in accepted:
        other = (" (or another numeric type)" if spec.datatype in FLOATS else
                 " (or another integer type)" if spec.datatype in INTEGERS else "")
        found = _found(value) if datatype in ("BYTES", "object") else ""
        raise InputError(f"input {spec.name!r} has datatype {datatype}; expected {spec.datatype}{other}{found}")
    return as_datatype(spec.name, array, spec.datatype, finite=True)


def _numbers(values: list[Any]) -> bool:
    return bool(values) and all(isinstance(v, (bool, int, float)) for v in values)


def as_datatype(name: str, array: np.ndarray, datatype: str, finite: bool = False) -> np.ndarray:
    """Numbers as ``datatype``'s dtype: integers must fit the type; floats beyond it become Inf, refused
    (with NaN) when ``finite``.

    Raises:
        InputError: integers out of range, or (``finite``) NaN or Inf, naming the rows.
    """
    target = numpy_dtype(datatype)
    if target.kind in "iu" and array.size and array.dtype.kind in "iu":
        info = np.iinfo(target)
        low, high = int(array.min()), int(array.max())
        if low < info.min or high > info.max:
            raise InputError(f"input {name!r}: values out of range for {datatype} ({low} to {high})")
    if target.kind == "f":
        if array.dtype == target:  # nothing to convert, so nothing to overflow (the binary and gRPC paths)
            converted = array
        else:
            with np.errstate(over="ignore", invalid="ignore"):
                converted = array.astype(target, copy=False)
        if finite and converted.size and not np.isfinite(converted).all():  # rows only when one is bad
            ok = np.isfinite(converted.reshape(len(converted), -1)).all(axis=1)
            if not ok.all():
                raise InputError(f"input {name!r}: NaN or Inf (or values beyond {datatype}) in "
                                 f"row(s) {np.flatnonzero(~ok)[:5].tolist()}")
        return converted
    return array.astype(target, copy=False)


def as_strings(name: str, max_bytes: int, values: np.ndarray | Sequence[Any]) -> np.ndarray:
    """Strings (``str``, or ``bytes`` as UTF-8) as a numpy unicode array of the same shape, each at most
    ``max_bytes`` long in UTF-8.

    Raises:
        InputError: an element that is not a string, not UTF-8, or too long, naming it.
    """
    array = values if isinstance(values, np.ndarray) else np.asarray(values, dtype=object)
    out: list[str] = []
    for i, value in enumerate(array.reshape(-1).tolist()):
        if isinstance(value, bytes):
            if len(value) > max_bytes:
                raise InputError(f"input {name!r}: element {i} is longer than {max_bytes} bytes")
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                raise InputError(f"input {name!r}: element {i} is not UTF-8") from None
        elif isinstance(value, str):
            try:
                too_long = len(value) > max_bytes or len(value.encode("utf-8")) > max_bytes
            except UnicodeEncodeError:
                raise InputError(f"input {name!r}: element {i} is not valid Unicode") from None
            if too_long:
                raise InputError(f"input {name!r}: element {i} is longer than {max_bytes} bytes")
        else:
            raise InputError(f"input {name!r}: element {i} is a {type(value).__name__}, not a string")
        out.append(value)
    strings = np.asarray(out, dtype=str) if out else np.zeros(0, dtype="<U1")
    return strings.reshape(array.shape)


def first_non_number(data: Any, limit: int = 100_000) -> str:
    """``str 'NaN'``: the first value of (nested lists) ``data`` that is no number, or ``""``."""
    stack, seen = [data], 0
    while stack and seen < limit:
        value = stack.pop()
        seen += 1
        if isinstance(value, (list, tuple)):
            stack.extend(reversed(value))
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{type(value).__name__} {str(value)[:20]!r}"
        elif isinstance(value, int) and not -2**63 <= value < 2**64:
            return f"an integer out of range ({str(value)[:20]})"
    return ""


def _found(value: Any) -> str:
    """``: found str 'a'`` for the first value of ``value`` that is no number (for messages only)."""
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[:1000].tolist()
    first = first_non_number(value)
    return f": found {first}" if first else ""
