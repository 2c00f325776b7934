"""The prepared data's format: what the data step (:mod:`pillars.components.data.prepare`) writes and
training, evaluation, the gate and registration read, without importing the step itself.

Each split is an ``.npz`` file of the task's named arrays (``allow_pickle=False``: strings are numpy unicode
arrays); the metadata JSON names the task (``package.module:attribute`` and its arguments) and carries
what preprocessing learned, the data hash, the split sizes and the drift profile.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pillars.components.data.shards import load_examples, read_layout
from pillars.components.errors import DataError
from pillars.components.task import Examples, Preprocessing, Task, load_task


def input_names(task: Task, prep: Preprocessing) -> list[str]:
    """The task's request input names, as its signature lists them."""
    return [s.name for s in task.signature(prep).inputs]


def inputs_of(task: Task, prep: Preprocessing, examples: Examples) -> Examples:
    """The columns of ``examples`` that are the task's inputs (optional ones only when present)."""
    return {n: examples[n] for n in input_names(task, prep) if n in examples}


def storable(split: Examples, where: str) -> Examples:
    """Every column as an array ``np.savez`` writes without pickle (strings as numpy unicode)."""
    result = {}
    for name, value in split.items():
        array = np.asarray(value)
        if array.dtype.kind == "O":
            try:
                array = array.astype(str) if all(isinstance(v, str) for v in array.reshape(-1)) else array
            except (TypeError, ValueError):
                pass
        if array.dtype.kind == "O":
            raise DataError(f"{where}: column {name!r} holds Python objects; give numbers or strings")
        result[name] = array
    return result


def save_split(path: str | Path, examples: Examples) -> None:
    """Write one split as ``.npz`` of its named arrays; ``path`` is used as given."""
    with open(path, "wb") as f:
        np.savez(f, **storable(examples, str(path)))


def load_split(path: str | Path) -> Examples:
    """Read a split written by :func:`save_split` (no pickle), or a folder of Parquet shards (the table data
    step's, :mod:`pillars.components.data.shards`) into memory as the task's examples."""
    if Path(path).is_dir():
        return load_examples(path, read_layout(path))
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def save_metadata(path: str | Path, metadata: dict[str, Any]) -> None:
    """Write the metadata (with profile) as JSON."""
    Path(path).write_text(json.dumps(metadata, indent=1))


def load_metadata(path: str | Path) -> dict[str, Any]:
    """Read metadata written by :func:`save_metadata`."""
    return json.loads(Path(path).read_text())


def lineage_tags(metadata: Mapping[str, Any]) -> dict[str, str]:
    """The data lineage a training run and its registered version carry as tags: the data step's engine,
    the rows of each split, when Spark prepared the data its application id, and when the train split took
    feedback rows their store, how many were added and how many labels had no inputs (not trainable)."""
    tags = {"pillars.data_engine": str(metadata.get("engine") or "pandas"),
            "pillars.data_rows": json.dumps(metadata.get("split_rows") or {}, sort_keys=True)}
    if metadata.get("spark_app_id"):
        tags["pillars.spark_app_id"] = str(metadata["spark_app_id"])
    feedback = metadata.get("feedback")
    if feedback:
        tags.update({"pillars.feedback_source": str(feedback["source"]),
                     "pillars.feedback_rows": str(feedback["rows"]),
                     "pillars.feedback_without_inputs": str(feedback["without_inputs"])})
    return tags


def task_of(metadata: Mapping[str, Any]) -> Task:
    """The task a prepared data set was made by (its reference and arguments, from the metadata)."""
    return load_task(metadata["task"], metadata.get("task_args") or {})
