"""Table sources, part of the task API (version 1, an addition): a task whose data is a table too big for
one machine gives its data as a *source* (files the data step reads with pandas or Spark) instead of
in-memory arrays.

A task opts in by returning a :class:`TableSource` from :meth:`Task.table_source` and implementing
:meth:`Task.fit_table_preprocessing`, which learns its preprocessing from the train split's
:class:`TableStatistics` (computed by the engine, never by loading the split). The data step then
cleans, splits (seeded hash of each row), fills missing values, profiles and writes Parquet shards
(:mod:`pillars.components.data.shards`); training streams them. Such a task's drift features are its
raw feature columns and its one input is the feature matrix (``[N, *input_shape]`` FP32).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pillars.components.errors import ConfigError

KINDS = ("classification", "regression")


@dataclasses.dataclass(frozen=True)
class TableSource:
    """Where a task's table is and how its rows become examples.

    Attributes:
        source: a CSV or Parquet file, or a folder of them (all its files are the table), local or ``s3://``.
        label_column: the label's column; every other column is a numeric feature.
        kind: ``classification`` (the label's values become classes) or ``regression`` (a numeric label).
        input_name: the task's input (its signature's name), given the feature matrix.
        target_name: the examples' target name the task's ``targets`` reads.
        input_shape: each row's instance shape (default: ``[features]``).
        key_column: a column that identifies a row; the split hashes it alone ("": the whole row).
    """

    source: str
    label_column: str
    kind: str
    input_name: str = "input-0"
    target_name: str = "label"
    input_shape: tuple[int, ...] | None = None
    key_column: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"a table source's kind must be one of {KINDS}, got {self.kind!r}")
        if not self.source:
            raise ConfigError("a table source needs a source: pass --param source=PATH")
        if not self.label_column:
            raise ConfigError("a label column is needed for your own data: pass --param label_column=NAME")


@dataclasses.dataclass(frozen=True)
class TableStatistics:
    """What the data step learned from the train split of a table, for :meth:`Task.fit_table_preprocessing`.

    Attributes:
        feature_names: the feature columns, in table order.
        input_shape: each row's instance shape.
        mean, std: each feature's mean and population standard deviation (after the missing-value policy).
        classes: the class names (classification; sorted label values as strings), else None.
        target_mean, target_std: the label's mean and population standard deviation (regression), else None.
        rows: the train split's rows.
    """

    feature_names: list[str]
    input_shape: list[int]
    mean: list[float]
    std: list[float]
    classes: list[str] | None
    target_mean: float | None
    target_std: float | None
    rows: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
