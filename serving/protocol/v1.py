"""KServe V1 requests and responses: ``{"instances": [...]}`` in, ``{"predictions": [...]}`` out.

Part of the codec (:mod:`pillars.serving.protocol.codec` states the contract and re-exports every name here).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pillars.components.task.contract import InputError, Signature, TensorSpec, check_names
from pillars.serving.protocol.tensors import check_row_limit
from pillars.serving.protocol.wire import Batch, plain_strings


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
