"""Step 1, data preparation: load, clean, split (stratified, seeded), fit normalisation on train, profile.

The splits are written raw (cleaned, imputed, not standardised) as ``.npz`` files with ``x`` and ``y``;
the train-split mean and standard deviation go into the metadata and become the model's input
standardisation layer, so the served model takes raw features and the profile describes raw inputs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from pillars.components.datasets import RawData, as_float_matrix, load_builtin, load_table
from pillars.components.errors import ConfigError, DataError
from pillars.components.profile import build_profile
from pillars.components.tasks import TaskSpec, get_task

MISSING_POLICIES = ("median", "mean", "zero", "drop")


@dataclasses.dataclass
class PrepareParams:
    """How to prepare the data (all are pipeline parameters)."""

    task: str = "breast_cancer"
    source: str = ""
    label_column: str = ""
    seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    missing_policy: str = "median"
    balance: bool = False

    def __post_init__(self) -> None:
        if self.missing_policy not in MISSING_POLICIES:
            raise ConfigError(f"missing_policy must be one of {MISSING_POLICIES}, got {self.missing_policy!r}")
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 < value < 0.5:
                raise ConfigError(f"{name} must be in (0, 0.5), got {value}")


@dataclasses.dataclass
class PreparedData:
    """The three splits plus the metadata every later step reads (``metadata`` holds the profile)."""

    splits: dict[str, tuple[np.ndarray, np.ndarray]]
    metadata: dict[str, Any]


def load_raw(task: TaskSpec, params: PrepareParams) -> RawData:
    """The task's built-in data set, or the user's table when a source is given."""
    if params.source:
        return load_table(params.source, params.label_column or "label")
    if task.builtin is None:
        raise DataError(f"task {task.name!r} needs your data: pass --param source=PATH and label_column=NAME")
    return load_builtin(task.builtin)


def prepare(params: PrepareParams) -> PreparedData:
    """Load, clean, split, impute, optionally balance, and profile the data.

    Raises:
        DataError: empty data, missing label column, non-numeric features, one class only,
            a split too small to train on.
        ConfigError: an unknown task or invalid parameter.
    """
    task = get_task(params.task)
    raw = load_raw(task, params)
    frame = raw.frame
    report: dict[str, Any] = {"rows_in": int(len(frame)), "missing_policy": params.missing_policy}

    missing_label = frame[raw.label_column].isna()
    frame = frame.loc[~missing_label]
    report["dropped_missing_label"] = int(missing_label.sum())
    before = len(frame)
    frame = frame.drop_duplicates()
    report["dropped_duplicates"] = int(before - len(frame))
    if frame.empty:
        raise DataError(f"{raw.origin} has no usable rows after removing missing labels and duplicates")

    features = frame.drop(columns=[raw.label_column])
    if features.shape[1] == 0:
        raise DataError(f"{raw.origin} has no feature columns besides the label {raw.label_column!r}")
    feature_names = [str(c) for c in features.columns]
    x = as_float_matrix(features, raw.origin)
    report["missing_values"] = {n: int(c) for n, c in zip(feature_names, np.isnan(x).sum(axis=0)) if c}
    if params.missing_policy == "drop":
        keep = ~np.isnan(x).any(axis=1)
        report["dropped_missing_features"] = int((~keep).sum())
        x, frame = x[keep], frame.loc[keep]
        if len(x) == 0:
            raise DataError(f"every row of {raw.origin} has a missing feature value (missing_policy=drop)")

    y, classes = _encode_labels(frame[raw.label_column], task, raw)
    data_hash = _hash(x, y)
    splits, stratified = _split(x, y, task, params)
    report["stratified"] = stratified
    fill = _fill_values(splits["train"][0], params.missing_policy)
    splits = {name: (_impute(xs, fill), ys) for name, (xs, ys) in splits.items()}
    if params.balance and task.kind == "classification":
        splits["train"] = _oversample(*splits["train"], seed=params.seed)
        report["balanced"] = True

    x_train, y_train = splits["train"]
    metadata = {
        "task": task.name,
        "kind": task.kind,
        "architecture": task.architecture,
        "source": raw.origin,
        "feature_names": feature_names,
        "input_shape": raw.input_shape or [len(feature_names)],
        "classes": classes,
        "normalization": {"mean": x_train.mean(axis=0).tolist(), "std": x_train.std(axis=0).tolist()},
        "target": None if task.kind == "classification" else
        {"mean": float(y_train.mean()), "std": float(y_train.std() or 1.0)},
        "data_hash": data_hash,
        "seed": params.seed,
        "split_rows": {name: int(len(s[1])) for name, s in splits.items()},
        "cleaning": report,
        "profile": build_profile(x_train, y_train, feature_names, task.kind, classes, params.seed),
    }
    return PreparedData(splits, metadata)


def _encode_labels(labels: pd.Series, task: TaskSpec, raw: RawData) -> tuple[np.ndarray, list[str] | None]:
    if task.kind == "regression":
        values = pd.to_numeric(labels, errors="coerce")
        if values.isna().any():
            raise DataError(f"label column {raw.label_column!r} of {raw.origin} must be numeric for regression")
        return values.to_numpy(dtype=np.float32), None
    values = sorted(labels.unique(), key=lambda v: (str(type(v)), v))
    if len(values) < 2:
        raise DataError(
            f"label column {raw.label_column!r} of {raw.origin} has only one class ({values[0]!r}); "
            "a classifier needs at least two"
        )
    index = {v: i for i, v in enumerate(values)}
    names = [raw.class_names.get(v, str(v)) if raw.class_names else str(v) for v in values]
    return labels.map(index).to_numpy(dtype=np.int64), names


def _split(x: np.ndarray, y: np.ndarray, task: TaskSpec, params: PrepareParams
           ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], bool]:
    n_holdout = params.val_fraction + params.test_fraction
    stratify = task.kind == "classification" and np.bincount(y).min() >= 3
    if len(y) * min(params.val_fraction, params.test_fraction) < 1 or len(y) < 10:
        raise DataError(f"only {len(y)} usable rows: at least 10 are needed to split train/val/test")
    x_train, x_rest, y_train, y_rest = train_test_split(
        x, y, test_size=n_holdout, random_state=params.seed, stratify=y if stratify else None)
    rest_stratify = stratify and np.bincount(y_rest).min() >= 2
    x_val, x_test, y_val, y_test = train_test_split(
        x_rest, y_rest, test_size=params.test_fraction / n_holdout, random_state=params.seed,
        stratify=y_rest if rest_stratify else None)
    return {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_test, y_test)}, bool(stratify)


def _fill_values(x_train: np.ndarray, policy: str) -> np.ndarray:
    if policy == "zero" or policy == "drop" or not np.isnan(x_train).any():
        return np.zeros(x_train.shape[1], dtype=np.float32)
    with np.errstate(all="ignore"):
        fill = np.nanmedian(x_train, axis=0) if policy == "median" else np.nanmean(x_train, axis=0)
    return np.nan_to_num(fill).astype(np.float32)


def _impute(x: np.ndarray, fill: np.ndarray) -> np.ndarray:
    missing = np.isnan(x)
    return np.where(missing, fill, x).astype(np.float32) if missing.any() else x


def _oversample(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random oversampling of minority classes (train split only) up to the majority count."""
    rng = np.random.default_rng(seed)
    counts = np.bincount(y)
    index = [np.flatnonzero(y == c) for c in range(len(counts)) if counts[c]]
    chosen = np.concatenate([np.concatenate([i, rng.choice(i, counts.max() - len(i))]) for i in index])
    rng.shuffle(chosen)
    return x[chosen], y[chosen]


def _hash(x: np.ndarray, y: np.ndarray) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(x).tobytes())
    digest.update(np.ascontiguousarray(y).tobytes())
    return digest.hexdigest()[:16]


def save_split(path: str | Path, x: np.ndarray, y: np.ndarray) -> None:
    """Write one split as ``.npz`` (``x`` float32 ``[N, F]``, ``y``); ``path`` is used as given."""
    with open(path, "wb") as f:
        np.savez(f, x=x, y=y)


def load_split(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a split written by :func:`save_split`."""
    with np.load(path, allow_pickle=False) as data:
        return data["x"], data["y"]


def save_metadata(path: str | Path, metadata: dict[str, Any]) -> None:
    """Write the metadata (with profile) as JSON."""
    Path(path).write_text(json.dumps(metadata, indent=1))


def load_metadata(path: str | Path) -> dict[str, Any]:
    """Read metadata written by :func:`save_metadata`."""
    return json.loads(Path(path).read_text())


def run_prepare(params: PrepareParams, train_path: str, val_path: str, test_path: str, metadata_path: str) -> str:
    """Prepare and write the three splits and the metadata; returns the data hash."""
    data = prepare(params)
    for name, path in (("train", train_path), ("val", val_path), ("test", test_path)):
        save_split(path, *data.splits[name])
    save_metadata(metadata_path, data.metadata)
    return str(data.metadata["data_hash"])
