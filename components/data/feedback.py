"""Ground-truth labels sent to the model server, read back as extra training rows.

The model server appends one JSON line per labelled request id to ``<feedback_dir>/<model>.jsonl``
(:mod:`pillars.serving.monitoring.feedback`): the labels (one per row of the request), and the request's
inputs when the server still remembered them (``{"inputs": {name: rows}}``; null for an id it had forgotten,
or for inputs too large to keep). :func:`feedback_examples` turns the lines that carry inputs into a split
of the task's format (its input columns and its target column), ready to be concatenated with a train
split; lines without inputs cannot be trained on and are counted, not used.

A classifier's labels are class names (the server stores names, whatever the client sent); they become
class indices by ``classes``; a label naming an unknown class is an error naming the line, as is a line
that is not JSON.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pillars.components.errors import DataError
from pillars.components.task import Examples


@dataclass(frozen=True)
class FeedbackRows:
    """The trainable rows of a feedback file, and how many labels could not be used."""

    examples: Examples
    rows: int
    without_inputs: int
    """Labelled rows whose inputs the server did not keep (not trainable)."""


def feedback_examples(path: str | Path, input_names: Sequence[str], target_column: str,
                      classes: Sequence[str] | None = None) -> FeedbackRows:
    """The labelled rows of a feedback file as named arrays (``input_names`` and ``target_column``).

    Args:
        path: the server's ``<model>.jsonl``.
        input_names: the task's input columns (a line lacking one of them is not used).
        target_column: the task's target column.
        classes: a classifier's class names (labels become indices); None for a regressor (labels are numbers).

    Raises:
        DataError: a line is not JSON, or names a class not in ``classes`` (naming the line).
    """
    columns: dict[str, list] = {name: [] for name in input_names}
    targets: list = []
    without = 0
    index = {name: i for i, name in enumerate(classes or [])}
    with Path(path).open("rb") as f:
        for number, line in enumerate(f, 1):
            if not line.endswith(b"\n"):
                break  # an unfinished last line: never acknowledged to the client
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{number}: not a JSON line ({e})") from e
            labels = record.get("labels") or []
            inputs = record.get("inputs")
            if not inputs or any(name not in inputs or len(inputs[name]) != len(labels) for name in input_names):
                without += len(labels)
                continue
            for label in labels:
                if classes is not None and label not in index:
                    raise DataError(f"{path}:{number}: label {label!r} is not one of the classes {list(classes)[:20]}")
                targets.append(index[label] if classes is not None else float(label))
            for name in input_names:
                columns[name].extend(inputs[name])
    examples: Examples = {name: _array(values) for name, values in columns.items()}
    examples[target_column] = np.asarray(targets, dtype=np.int64 if classes is not None else np.float32)
    return FeedbackRows(examples, len(targets), without)


def _array(values: list) -> np.ndarray:
    """A column as the server received it: numbers as float32 (the tables' inputs) unless integer, strings as str."""
    array = np.asarray(values)
    return array.astype(np.float32) if array.dtype.kind == "f" else array
