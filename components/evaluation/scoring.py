"""A model's outputs on a whole split through the served path (encode, model, decode), without holding the
split's inputs when the split may be larger than memory.

A split is either named arrays in memory (or an ``.npz`` file of them, :func:`pillars.components.data.splits.
save_split`), or a folder of Parquet shards written by the table data step
(:mod:`pillars.components.data.shards`). The folder is *streamed*: its rows are read :data:`PREDICT_BATCH`
at a time, each batch goes through the model, and only the outputs asked for and the target are kept, in
arrays allocated once for the split. For the stock tabular classifier that is about 32 bytes a row against
the 128 of its 32 float32 features, so evaluation, calibration and the gate run where the split does not fit.

:func:`task_metrics` hands a scored split to the task's own ``evaluate``. For a streamed split the task gets
the split's target column only, and a ``predict`` that answers that same object with the outputs already
computed: the stock classification and regression tasks (and any task that scores ``predict(examples)``
against its target column) work unchanged. A task whose ``evaluate`` needs the inputs themselves cannot be
scored streaming: its split is not a table source (only table-source tasks get Parquet shards).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Union

import numpy as np

from pillars.components.data.shards import (check_same_schema, example_batches, read_layout, shard_files,
                                            split_rows)
from pillars.components.data.splits import load_split
from pillars.components.errors import DataError
from pillars.components.model.predictor import Predictor
from pillars.components.task import Examples, Outputs
from pillars.components.task.examples import input_columns, row_count, take

PREDICT_BATCH = 1024
"""Rows per forward pass while scoring."""

Split = Union[Examples, str, Path]
"""Named arrays in memory, an ``.npz`` split file, or a folder of Parquet shards (streamed)."""


@dataclasses.dataclass(frozen=True)
class Scored:
    """A split and the model's outputs on every row of it.

    Attributes:
        examples: the whole split (in memory), or only its target column (streamed).
        outputs: the outputs kept, one row per example, in the split's order.
        streamed: whether the split was read from shards batch by batch.
    """

    examples: Examples
    outputs: Outputs
    streamed: bool


def is_streamed(split: Split) -> bool:
    """Whether ``split`` is a folder of Parquet shards, which is scored without loading it."""
    return isinstance(split, (str, Path)) and Path(split).is_dir()


def batched_predict(predictor: Predictor, batch: int = PREDICT_BATCH) -> Callable[[Examples], Outputs]:
    """The served path (encode, model, decode) over a split's input columns, ``batch`` rows at a time."""
    def predict(examples: Examples) -> Outputs:
        inputs = input_columns(predictor.signature, examples)
        parts = [predictor.predict_checked(take(inputs, slice(i, i + batch)))
                 for i in range(0, row_count(inputs), batch)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    return predict


def _shards(folder: str | Path) -> tuple[dict, list[Path]]:
    """A shard folder's layout and files, the files checked to share one schema."""
    files = shard_files(folder)
    check_same_schema(files)
    return read_layout(folder), files


def score(predictor: Predictor, split: Split, keep: Sequence[str] | None = None,
          batch: int = PREDICT_BATCH) -> Scored:
    """The outputs of ``predictor`` on every row of ``split`` (see the module's docstring).

    Args:
        keep: the output names to keep (default: all); the others are dropped batch by batch.
    """
    if not is_streamed(split):
        examples = load_split(split) if isinstance(split, (str, Path)) else split
        outputs = batched_predict(predictor, batch)(examples)
        return Scored(examples, {k: v for k, v in outputs.items() if keep is None or k in keep}, streamed=False)
    table, files = _shards(split)
    target = table["target"]
    rows = sum(split_rows(files))
    kept: dict[str, np.ndarray] = {}
    targets = np.empty(0)
    done = 0
    for examples in example_batches(files, table, batch):
        out = predictor.predict_checked(input_columns(predictor.signature, examples))
        n = len(examples[target])
        if done == 0:  # allocated once for the split: appended batches would fragment the heap
            kept = {k: np.empty((rows, *np.shape(v)[1:]), dtype=np.asarray(v).dtype) for k, v in out.items()
                    if keep is None or k in keep}
            targets = np.empty((rows, *examples[target].shape[1:]), dtype=examples[target].dtype)
        for k in kept:
            kept[k][done:done + n] = out[k]
        targets[done:done + n] = examples[target]
        done += n
    if done != rows:
        raise DataError(f"{split}: the shards' footers count {rows} rows but {done} were read")
    return Scored({target: targets}, kept, streamed=True)


def task_metrics(predictor: Predictor, scored: Scored) -> dict[str, float]:
    """The task's own metrics (``task.evaluate``) of a scored split, without predicting it again."""
    fallback = batched_predict(predictor)

    def predict(examples: Examples) -> Outputs:
        if examples is scored.examples:
            return scored.outputs
        if scored.streamed:
            raise DataError(f"task {predictor.config.task}: a split of Parquet shards is scored streaming, so its "
                            "evaluate must call predict(examples) with the examples it was given")
        return fallback(examples)

    return predictor.task.evaluate(predict, scored.examples, predictor.prep)


def sample_rows(split: Split, rows: int, seed: int = 0, batch: int = PREDICT_BATCH) -> Examples:
    """At most about ``rows`` rows of ``split``, each kept with the same chance (seeded), in the split's order:
    the whole split when it has no more rows than that. A streamed split is read batch by batch, so memory is
    about the sample's."""
    if not is_streamed(split):
        examples = load_split(split) if isinstance(split, (str, Path)) else split
        total = row_count(examples)
        if total <= rows:
            return examples
        keep = np.random.default_rng(seed).random(total) < rows / total
        return take(examples, keep)
    table, files = _shards(split)
    total = sum(split_rows(files))
    share = min(1.0, rows / max(total, 1))
    rng = np.random.default_rng(seed)
    parts: list[Examples] = []
    for examples in example_batches(files, table, batch):
        if share < 1.0:
            examples = take(examples, rng.random(row_count(examples)) < share)
        parts.append(examples)
    if not parts:
        return {}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
