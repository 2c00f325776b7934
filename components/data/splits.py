"""The prepared data's format: what the data step (:mod:`pillars.components.data.prepare`) writes and
training, evaluation, the gate and registration read, without importing the step itself.

Each split is an ``.npz`` file of the task's named arrays (``allow_pickle=False``: strings are numpy unicode
arrays); the metadata JSON names the task (``package.module:attribute`` and its arguments) and carries
what preprocessing learned, the data hash, the split sizes and the drift profile. It is a typed value,
:class:`PreparedMetadata`, parsed once where it is read (:func:`load_metadata`) and checked once where it is
written (:func:`save_metadata`); it still reads as a mapping of its JSON keys (``metadata["prep"]``), as it
did when it was a plain dict.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pillars.components.data.shards import load_examples, read_layout
from pillars.components.errors import DataError
from pillars.components.records import from_fields
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


@dataclasses.dataclass(frozen=True)
class PreparedMetadata(Mapping[str, Any]):
    """What the data step learned and every later step reads: the task, what preprocessing learned, the data's
    identity and sizes, and the drift profile.

    Also a read-only mapping of its JSON keys (``metadata["prep"]``, ``metadata.get("table")``), so code
    written against the plain dict it used to be keeps working.

    Attributes:
        task: the task reference, ``package.module:attribute``.
        task_name: the model name the task registers under by default.
        task_args: the task's constructor arguments (JSON).
        kind: the task's kind (``classification``, ``regression``, ...).
        info: what the task's ``load_data`` said about the data (source, class names, cleaning report).
        prep: what preprocessing learned from the train split (JSON).
        signature: the task's signature for ``prep``, as :meth:`Signature.to_dict` writes it.
        data_hash: a short hash of the data (the task's own, else of every split's arrays).
        split_rows: rows per split (``train``, ``val``, ``test``).
        seed: the split seed.
        source: where the data came from.
        profile: the train split's drift profile (:mod:`pillars.components.data.profile`).
        table: for the table data step, how shard rows become examples (:mod:`pillars.components.data.shards`).
        engine: the data step's engine (``pandas`` or ``spark``); None when the data step did not say.
        spark_app_id: the Spark application that prepared the data, when Spark did.
        feedback: the production labels added to the train split (``source``, ``rows``, ``without_inputs``;
            :func:`pillars.components.data.feedback.lineage`), when the run took any.
    """

    task: str
    task_name: str
    task_args: dict[str, Any]
    kind: str
    info: dict[str, Any]
    prep: dict[str, Any]
    signature: dict[str, Any]
    data_hash: str
    split_rows: dict[str, int]
    seed: int
    source: str
    profile: dict[str, Any]
    table: dict[str, Any] | None = None
    engine: str | None = None
    spark_app_id: str | None = None
    feedback: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PreparedMetadata:
        """The metadata from its JSON object (``task_args`` and ``table`` as written, or absent).

        Raises:
            DataError: not prepared-data metadata: a key missing or unknown, naming it.
        """
        if isinstance(data, PreparedMetadata):
            return data
        if not isinstance(data, Mapping):
            raise DataError(f"the prepared-data metadata is a {type(data).__name__}, not a JSON object")
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
        missing = [name for name in required if name not in data]
        if missing:
            raise DataError(f"not prepared-data metadata: missing {missing}")
        try:
            return from_fields(cls, data, "the prepared-data metadata")
        except ValueError as e:
            raise DataError(str(e)) from e

    @classmethod
    def from_json(cls, text: str) -> PreparedMetadata:
        """The metadata from the JSON :meth:`to_json` writes.

        Raises:
            DataError: not JSON, or not prepared-data metadata.
        """
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise DataError(f"the prepared-data metadata is not JSON: {e}") from e

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: every field, but the optional ones only when set (as the data steps wrote them)."""
        data = dataclasses.asdict(self)
        return {k: v for k, v in data.items() if v is not None or k not in _OPTIONAL}

    def to_json(self) -> str:
        """The metadata as the data step writes it."""
        return json.dumps(self.to_dict(), indent=1)

    def task_instance(self) -> Task:
        """The task the data was prepared by (its reference and arguments)."""
        return task_of(self)

    def __getitem__(self, key: str) -> Any:
        if key not in _KEYS or (key in _OPTIONAL and getattr(self, key) is None):
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


_KEYS = frozenset(f.name for f in dataclasses.fields(PreparedMetadata))
_OPTIONAL = frozenset(f.name for f in dataclasses.fields(PreparedMetadata) if f.default is not dataclasses.MISSING)


def save_metadata(path: str | Path, metadata: Mapping[str, Any]) -> None:
    """Write the metadata (with profile) as JSON; a plain mapping is checked to be metadata first.

    Raises:
        DataError: ``metadata`` is not prepared-data metadata (nothing is written).
    """
    Path(path).write_text(PreparedMetadata.from_dict(metadata).to_json())


def load_metadata(path: str | Path) -> PreparedMetadata:
    """Read metadata written by :func:`save_metadata`.

    Raises:
        DataError: the file does not hold prepared-data metadata.
    """
    return PreparedMetadata.from_json(Path(path).read_text())


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
    """The task a prepared data set was made by (its reference and arguments), from its metadata or any
    mapping with its ``task`` (and ``task_args``)."""
    return load_task(metadata["task"], metadata.get("task_args") or {})
