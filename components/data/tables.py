"""Preparing a task's table source (:class:`pillars.components.task.TableSource`): what both engines do,
and the pandas engine (the Spark engine, :mod:`pillars.components.data.spark`, does the same on a cluster
or ``local[*]``).

The steps, identical on both engines:

1. read the source: one CSV or Parquet file, or every such file of a folder (Parquet files must share a
   schema, every file must have the label column: refused naming the column or the file);
2. clean: drop rows without a label, then duplicate rows; every other column must be numeric;
3. split each row by its seeded hash (:mod:`pillars.components.data.hashsplit`);
4. the missing-value policy: ``drop`` removes rows with a missing feature (before anything is learned);
   ``median``/``mean`` fill from the train split's values, ``zero`` with 0;
5. statistics of the train split after filling: per feature count, mean, population std, min, max, the
   quantiles p01..p99 (exact, linear interpolation) and a 10-bin equal-width histogram whose bin is
   ``floor((x - min) * (10 / (max - min)))`` clipped to [0, 9]; the label's class counts or statistics;
   a reference sample of the train rows with the smallest row hashes;
6. write each split as Parquet shards (:mod:`pillars.components.data.shards`).

The data hash is order-free: the row count, the columns and the XOR of every kept row's hash, so the
engines (whose row order differs) agree on it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pillars.components.data import hashsplit
from pillars.components.data.profile import (
    HISTOGRAM_BINS,
    QUANTILE_NAMES,
    QUANTILES,
    REFERENCE_ROWS,
    histogram_counts,
)
from pillars.components.data.shards import LABEL, ROW_GROUP_ROWS, ROW_HASH, check_same_schema, feature_column
from pillars.components.errors import ConfigError, DataError
from pillars.components.task import DataParams, TableSource, TableStatistics

ENGINES = ("pandas", "spark")
"""The data step's engines: ``pandas`` in the step's own process, ``spark`` on Apache Spark."""
SUFFIXES = (".csv", ".parquet", ".pq")
ROWS_PER_SHARD = 1_000_000
"""Rows per Parquet file the pandas engine writes (Spark writes one file per partition)."""


@dataclasses.dataclass
class TableResult:
    """What preparing a table gives: the statistics preprocessing is learned from, the data info, the drift
    profile, the rows of each split and the metadata's ``table`` entry (how shards become examples)."""

    statistics: TableStatistics
    info: dict[str, Any]
    profile: dict[str, Any]
    split_rows: dict[str, int]
    table: dict[str, Any]
    membership_hashes: dict[str, int] = dataclasses.field(default_factory=dict)
    """Per split, the XOR of its row hashes (a cheap check that two engines put the same rows there)."""


def check_engine(engine: str) -> str:
    """``engine`` when it is one of :data:`ENGINES`, else a ConfigError naming them."""
    if engine not in ENGINES:
        raise ConfigError(f"engine must be one of {ENGINES}, got {engine!r}")
    return engine


def table_files(source: str) -> list[str]:
    """The files of a local table source: the file itself, or every CSV/Parquet file of a folder (sorted).

    Raises:
        DataError: missing, empty folder, unsupported type, or a folder mixing CSV and Parquet.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in SUFFIXES and not p.name.startswith(("_", ".")))
        if not files:
            raise DataError(f"no CSV or Parquet file in folder {source}")
        if len({p.suffix == ".csv" for p in files}) > 1:
            raise DataError(f"folder {source} mixes CSV and Parquet files; give one kind")
        return [str(p) for p in files]
    if not path.is_file():
        raise DataError(f"data file {source} does not exist")
    if path.suffix not in SUFFIXES:
        raise DataError(f"{source}: unsupported file type {path.suffix!r}; use .csv or .parquet")
    return [str(path)]


def check_table_files(files: Sequence[str], label_column: str) -> list[str]:
    """The columns every file shares (from headers and footers only).

    Raises:
        DataError: a file lacks the label column (naming the file), or Parquet schemas differ (naming the column).
    """
    if files[0].endswith(".csv"):
        headers = {f: [str(c) for c in pd.read_csv(f, nrows=0).columns] for f in files}
    else:
        check_same_schema(files)
        headers = {f: pq.read_schema(f).names for f in files}
    for name, columns in headers.items():
        if label_column not in columns:
            raise DataError(f"label column {label_column!r} not in {name}; columns are: {', '.join(columns)}")
    first = headers[files[0]]
    for name, columns in headers.items():
        if columns != first:
            raise DataError(f"the columns of {name} ({', '.join(columns)}) differ from those of {files[0]} "
                            f"({', '.join(first)})")
    return first


def class_order(values: Sequence[Any]) -> tuple[list[Any], list[str]]:
    """The label's distinct values in class order and their class names.

    Numbers sort by value and are named as integers when every one is integral (``1.0`` and ``1`` are both
    class ``"1"``: a CSV column read with and without missing values); other values sort by text.
    """
    numeric = all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in values)
    if numeric:
        ordered = sorted(values, key=float)
        integral = all(float(v).is_integer() for v in ordered)
        return ordered, [str(int(v)) if integral else str(v) for v in ordered]
    ordered = sorted(values, key=str)
    return ordered, [str(v) for v in ordered]


def check_classes(values: Sequence[Any], source: TableSource) -> None:
    """A classifier's label has at least two values, else a DataError naming the one."""
    if len(values) < 2:
        raise DataError(f"label column {source.label_column!r} of {source.source} has only one class "
                        f"({values[0]!r}); a classifier needs at least two" if values else
                        f"label column {source.label_column!r} of {source.source} has no values")


def numpy_column_stats(values: np.ndarray) -> dict[str, Any]:
    """The statistics of :func:`column_profile` over finite float64 values (what Spark computes the same way)."""
    values = values[np.isfinite(values)]
    if not values.size:
        return {"count": 0, "mean": 0.0, "std": 0.0, "min": 0.0, "max": 0.0, "quantiles": [0.0] * 7,
                "counts": [0] * HISTOGRAM_BINS}
    lo, hi = float(values.min()), float(values.max())
    return {"count": int(values.size), "mean": float(values.mean()), "std": float(values.std()),
            "min": lo, "max": hi, "quantiles": [float(q) for q in np.quantile(values, QUANTILES)],
            "counts": histogram_counts(values, lo, hi)}


def column_profile(stats: Mapping[str, Any]) -> dict[str, Any]:
    """A feature's profile (the format of :func:`pillars.components.data.profile.feature_profile`) from its stats."""
    lo, hi = stats["min"], stats["max"]
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, HISTOGRAM_BINS + 1)
    return {"dtype": "float32", "count": stats["count"], "mean": stats["mean"], "std": stats["std"],
            "min": lo, "max": hi, "quantiles": dict(zip(QUANTILE_NAMES, stats["quantiles"])),
            "histogram": {"edges": edges.tolist(), "counts": list(stats["counts"])}}


def data_hash(columns: Sequence[str], rows: int, xor: int) -> str:
    """The order-free hash of a prepared table (see the module docstring)."""
    blob = json.dumps({"columns": list(columns), "rows": int(rows), "xor": int(xor) & 0xFFFFFFFFFFFFFFFF})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def assemble(source: TableSource, params: DataParams, columns: list[str], classes: list[str] | None,
             feature_stats: list[dict[str, Any]], label_stats: dict[str, Any], fill: list[float],
             split_rows: dict[str, int], split_xor: dict[str, int], reference: list[list[float]],
             report: dict[str, Any], engine: str, extra: Mapping[str, Any] | None = None) -> TableResult:
    """The result both engines build from what they computed (the statistics, profile, info and hash)."""
    names = [c for c in columns if c != source.label_column]
    shape = list(source.input_shape or [len(names)])
    if int(np.prod(shape)) != len(names):
        raise DataError(f"{source.source}: {len(names)} feature columns do not fit the input shape {shape}")
    if split_rows["train"] == 0 or split_rows["val"] == 0 or split_rows["test"] == 0:
        raise DataError(f"{source.source}: too few usable rows to split train/val/test ({split_rows})")
    xor = 0
    for value in split_xor.values():
        xor ^= int(value)
    rows = sum(split_rows.values())
    statistics = TableStatistics(
        feature_names=names, input_shape=shape, mean=[s["mean"] for s in feature_stats],
        std=[s["std"] for s in feature_stats], classes=classes,
        target_mean=label_stats.get("mean") if source.kind == "regression" else None,
        target_std=(label_stats.get("std") or 1.0) if source.kind == "regression" else None,
        rows=split_rows["train"])
    if source.kind == "classification":
        counts = np.asarray(label_stats["class_counts"], dtype=np.int64)
        label: dict[str, Any] = {"classes": list(classes or []), "counts": counts.tolist(),
                                 "shares": (counts / max(counts.sum(), 1)).tolist()}
    else:
        label = column_profile(label_stats)
    profile = {"rows": split_rows["train"], "kind": source.kind,
               "schema": [{"name": n, "type": "float32"} for n in names],
               "features": {n: column_profile(s) for n, s in zip(names, feature_stats)},
               "label": label, "reference_sample": reference}
    report = {**report, "missing_policy": params.missing_policy, "fill_values": fill, "split": "seeded row hash"}
    info = {"source": source.source, "feature_names": names, "input_shape": shape, "classes": classes,
            "cleaning": report, "data_hash": data_hash(columns, rows, xor), "engine": engine,
            "rows": rows, **(extra or {})}
    table = {"format": "parquet", "input": source.input_name, "target": source.target_name,
             "input_shape": shape, "feature_names": names, "kind": source.kind}
    return TableResult(statistics, info, profile, split_rows, table, dict(split_xor))


# ---- the pandas engine ------------------------------------------------------------------------------------


def prepare_table_pandas(source: TableSource, params: DataParams, out_dir: str | Path) -> TableResult:
    """Prepare a table in this process and write ``out_dir/{train,val,test}/part-*.parquet``.

    Raises:
        DataError: the table is missing, unreadable, lacks the label, has non-numeric features or too few rows.
        ConfigError: ``balance`` (not supported on a table source) or an unknown missing policy.
    """
    if params.balance:
        raise ConfigError("balance is not supported for a table source (engine pandas or spark); leave it false")
    if source.source.startswith("s3://"):
        raise ConfigError("the pandas engine reads a table source from local files; use engine=spark for s3://")
    files = table_files(source.source)
    columns = check_table_files(files, source.label_column)
    # round_trip: the nearest double to each number, as Spark parses it (pandas' default parser is not exact)
    frames = [pd.read_csv(f, float_precision="round_trip") if f.endswith(".csv") else pd.read_parquet(f)
              for f in files]
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    report: dict[str, Any] = {"rows_in": int(len(frame))}
    missing_label = frame[source.label_column].isna()
    frame = frame.loc[~missing_label]
    report["dropped_missing_label"] = int(missing_label.sum())
    before = len(frame)
    frame = frame.drop_duplicates().reset_index(drop=True)
    report["dropped_duplicates"] = int(before - len(frame))
    names = [c for c in columns if c != source.label_column]
    bad = [n for n in names if not pd.api.types.is_numeric_dtype(frame[n]) and not pd.api.types.is_bool_dtype(frame[n])]
    if bad:
        raise DataError(f"non-numeric values in feature column(s) {', '.join(bad)} of {source.source}; "
                        "encode them as numbers or drop them")
    hashed = hashsplit.normalised(frame[[source.key_column]] if source.key_column else frame, source.label_column)
    hashes = hashsplit.row_hashes(hashed, params.seed)
    x = frame[names].to_numpy(dtype=np.float32)
    if params.missing_policy == "drop":
        keep = ~np.isnan(x).any(axis=1)
        report["dropped_missing_features"] = int((~keep).sum())
        x, frame, hashes = x[keep], frame.loc[keep], hashes[keep]
    codes = hashsplit.split_codes(hashes, params.val_fraction, params.test_fraction)
    labels = frame[source.label_column].to_numpy()
    classes: list[str] | None = None
    if source.kind == "classification":
        values, classes = class_order(pd.unique(labels).tolist())
        check_classes(values, source)
        index = {v: i for i, v in enumerate(values)}
        y = np.fromiter((index[v] for v in labels.tolist()), dtype=np.int64, count=len(labels))
    else:
        numeric = pd.to_numeric(pd.Series(labels), errors="coerce")
        if numeric.isna().any():
            raise DataError(f"label column {source.label_column!r} of {source.source} must be numeric for regression")
        y = numeric.to_numpy(dtype=np.float32)
    train = codes == 0
    fill = _fill_values(x[train], params.missing_policy)
    x = np.where(np.isnan(x), fill.astype(np.float32), x).astype(np.float32)
    feature_stats = [numpy_column_stats(x[train, i].astype(np.float64)) for i in range(len(names))]
    if source.kind == "classification":
        label_stats: dict[str, Any] = {"class_counts": np.bincount(y[train], minlength=len(classes or [])).tolist()}
    else:
        label_stats = numpy_column_stats(y[train].astype(np.float64))
    signed = hashsplit.as_signed(hashes)
    train_rows = np.flatnonzero(train)
    first = train_rows[np.argsort(signed[train_rows], kind="stable")[:REFERENCE_ROWS]]
    reference = np.round(x[first].astype(np.float64), 6).tolist()
    split_rows, split_xor = {}, {}
    out = Path(out_dir)
    for code, name in enumerate(hashsplit.SPLITS):
        rows = np.flatnonzero(codes == code)
        split_rows[name] = int(rows.size)
        split_xor[name] = int(np.bitwise_xor.reduce(signed[rows])) if rows.size else 0
        _write_split(out / name, x[rows], y[rows], signed[rows])
    return assemble(source, params, columns, classes, feature_stats, label_stats, fill.tolist(), split_rows,
                    split_xor, reference, report, "pandas")


def _fill_values(x_train: np.ndarray, policy: str) -> np.ndarray:
    """Per-feature fill from the train split (NaN skipped); 0 for a feature with no value there."""
    if policy in ("zero", "drop") or not np.isnan(x_train).any():
        return np.zeros(x_train.shape[1], dtype=np.float64)
    values = x_train.astype(np.float64)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            fill = np.nanmedian(values, axis=0) if policy == "median" else np.nanmean(values, axis=0)
    return np.nan_to_num(fill)


def _write_split(folder: Path, x: np.ndarray, y: np.ndarray, hashes: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for part, start in enumerate(range(0, max(len(x), 1), ROWS_PER_SHARD)):
        stop = start + ROWS_PER_SHARD
        arrays = {feature_column(i): pa.array(x[start:stop, i]) for i in range(x.shape[1])}
        arrays[LABEL] = pa.array(y[start:stop])
        arrays[ROW_HASH] = pa.array(hashes[start:stop])
        pq.write_table(pa.table(arrays), folder / f"part-{part:05d}.parquet", row_group_size=ROW_GROUP_ROWS)
