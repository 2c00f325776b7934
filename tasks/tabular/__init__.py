"""Tables and small images: the MLP and CNN tasks, written on the public task API like any user's task.

Data is a built-in scikit-learn data set (``breast_cancer``, ``digits`` as 1x8x8 images, ``diabetes``)
or the user's CSV/Parquet table (local or ``s3://``) with a label column. Cleaning: rows without a label
and duplicate rows are dropped; missing feature values are filled by ``missing_policy`` from the train
split; a classifier's train split may be oversampled (``balance``); the split is stratified and seeded.

The model (:class:`pillars.tasks.tabular.network.PillarsNet`) standardises raw features with the train-split
statistics held as buffers, so the served model takes raw features; ``preprocessing.json`` keeps the feature
names, input shape, class names and the same statistics.

Serving: one input ``input-0`` FP32 ``[N, features]`` (or ``[N, 1, 8, 8]`` images, also accepted flat); V1
instances may be objects keyed by feature name.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from pillars.tasks.tabular.datasets import BUILTIN_PREFIX, RawData, as_float_matrix, load_builtin, load_table
from pillars.components.errors import ConfigError, DataError
from pillars.tasks.tabular.network import ModelConfig, PillarsNet
from pillars.components.task import (
    ClassificationTask,
    DataParams,
    Dataset,
    Examples,
    Preprocessing,
    RegressionTask,
    TableSource,
    TableStatistics,
    Task,
    TensorSpec,
)

INPUT = "input-0"
LABEL = "label"
MISSING_POLICIES = ("median", "mean", "zero", "drop")
ARCHITECTURES = ("mlp", "cnn")


@dataclasses.dataclass
class _Tabular:
    """What the classifier and the regressor share: reading, cleaning and splitting a table."""

    builtin: str = ""
    """A scikit-learn data set shipped with the package, or empty for the user's ``source`` table."""
    architecture: str = "mlp"
    hidden_sizes: list[int] = dataclasses.field(default_factory=lambda: [128, 64])
    dropout: float = 0.1
    thresholds: dict[str, float] = dataclasses.field(default_factory=dict)
    description: str = ""
    cnn_channels: list[int] = dataclasses.field(default_factory=lambda: [32, 64])
    """Widths of the CNN's two convolutions (``architecture="cnn"``)."""

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")

    def _raw(self, params: DataParams) -> RawData:
        if params.source.startswith(BUILTIN_PREFIX):  # the origin a run records for a built-in data set
            return load_builtin(params.source.removeprefix(BUILTIN_PREFIX))
        if params.source:
            return load_table(params.source, params.label_column or LABEL)
        if not self.builtin:
            raise DataError("this task needs your data: pass --param source=PATH and label_column=NAME")
        return load_builtin(self.builtin)

    def load_data(self, params: DataParams) -> Dataset:
        """Load, clean, split (stratified for classifiers), impute from the train split, maybe balance.

        Raises:
            DataError: empty data, a missing label column, non-numeric features, one class only,
                too few rows to split.
        """
        if params.missing_policy not in MISSING_POLICIES:
            raise ConfigError(f"missing_policy must be one of {MISSING_POLICIES}, got {params.missing_policy!r}")
        raw = self._raw(params)
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
        y, classes = self._labels(frame[raw.label_column], raw)
        splits, stratified = _split(x, y, self.kind == "classification", params)
        report["stratified"] = stratified
        fill = _fill_values(splits["train"][0], params.missing_policy)
        splits = {name: (_impute(xs, fill), ys) for name, (xs, ys) in splits.items()}
        if params.balance and self.kind == "classification":
            splits["train"] = _oversample(*splits["train"], seed=params.seed)
            report["balanced"] = True
        shape = raw.input_shape or [len(feature_names)]
        as_examples = {name: {INPUT: xs.reshape(len(xs), *shape), LABEL: ys} for name, (xs, ys) in splits.items()}
        info = {"source": raw.origin, "feature_names": feature_names, "input_shape": shape, "classes": classes,
                "cleaning": report, "data_hash": _hash(x, y)}
        return Dataset(as_examples["train"], as_examples["val"], as_examples["test"], info)

    def _labels(self, labels: pd.Series, raw: RawData) -> tuple[np.ndarray, list[str] | None]:
        raise NotImplementedError

    def table_source(self, params: DataParams) -> TableSource | None:
        """The user's table as a source for the data step's engines (``engine=spark``); None for a built-in
        data set, which is small and read into memory."""
        if not params.source or params.source.startswith(BUILTIN_PREFIX):
            return None
        return TableSource(params.source, params.label_column or LABEL, self.kind, INPUT, LABEL)

    def fit_table_preprocessing(self, statistics: TableStatistics, info: Mapping[str, Any]) -> Preprocessing:
        """The same preprocessing as :meth:`fit_preprocessing`, from the train split's statistics."""
        prep = {"feature_names": list(statistics.feature_names), "input_shape": list(statistics.input_shape),
                "mean": list(statistics.mean), "std": list(statistics.std)}
        if self.kind == "classification":
            return {**prep, "classes": list(statistics.classes or [])}
        return {**prep, "target_mean": float(statistics.target_mean or 0.0),
                "target_std": float(statistics.target_std or 1.0)}

    def _table_prep(self, train: Examples, info: Mapping[str, Any]) -> Preprocessing:
        x = np.asarray(train[INPUT], dtype=np.float32).reshape(len(train[INPUT]), -1)
        return {"feature_names": list(info["feature_names"]), "input_shape": list(info["input_shape"]),
                "mean": x.mean(axis=0).tolist(), "std": x.std(axis=0).tolist()}

    def inputs(self, prep: Preprocessing) -> tuple[TensorSpec, ...]:
        shape = tuple(prep["input_shape"]) if self.architecture == "cnn" else (len(prep["feature_names"]),)
        return (TensorSpec(INPUT, "FP32", shape, labels=tuple(prep["feature_names"]),
                           description="raw feature values (standardised inside the model)"),)

    def _net(self, prep: Preprocessing, kind: str) -> PillarsNet:
        config = ModelConfig(task=self.builtin or kind, kind=kind, architecture=self.architecture,
                             input_shape=list(prep["input_shape"]), feature_names=list(prep["feature_names"]),
                             classes=prep.get("classes"), hidden_sizes=list(self.hidden_sizes), dropout=self.dropout,
                             cnn_channels=list(self.cnn_channels))
        net = PillarsNet(config)
        net.standardize.fit(np.asarray(prep["mean"]), np.asarray(prep["std"]))
        if kind == "regression":
            net.target_mean.fill_(prep["target_mean"])
            net.target_std.fill_(prep["target_std"])
        return net

    def student(self) -> Task | None:
        """The distillation student: a quarter of the widths (MLP hidden sizes, or CNN channels), same
        data, inputs and outputs."""
        if self.architecture == "cnn":
            return dataclasses.replace(self, cnn_channels=[max(c // 4, 1) for c in self.cnn_channels])
        return dataclasses.replace(self, hidden_sizes=[max(h // 4, 1) for h in self.hidden_sizes])

    def encode(self, inputs: Examples, prep: Preprocessing) -> dict[str, torch.Tensor]:
        x = np.asarray(inputs[INPUT], dtype=np.float32)
        return {"x": torch.from_numpy(np.ascontiguousarray(x.reshape(len(x), -1)))}

    def drift_features(self, inputs: Examples, prep: Preprocessing) -> dict[str, np.ndarray]:
        x = np.asarray(inputs[INPUT], dtype=np.float64).reshape(len(inputs[INPUT]), -1)
        return {name: x[:, i] for i, name in enumerate(prep["feature_names"])}

    def drift_matrix(self, inputs: Examples, prep: Preprocessing) -> tuple[list[str], np.ndarray]:
        """The features are the input's columns: the input itself (as float64), not split and stacked again.
        A subclass with features of its own, or names that do not map one to one onto the columns, gets
        the stacked :meth:`drift_features`."""
        names = list(prep["feature_names"])
        x = np.asarray(inputs[INPUT], dtype=np.float64).reshape(len(inputs[INPUT]), -1)
        if (type(self).drift_features is not _Tabular.drift_features or len(set(names)) != len(names)
                or x.shape[1] < len(names)):
            return super().drift_matrix(inputs, prep)
        return names, x[:, :len(names)]


@dataclasses.dataclass
class TabularClassification(_Tabular, ClassificationTask):
    """An MLP (or, for images, a small CNN) classifier of a table's rows."""

    def _labels(self, labels: pd.Series, raw: RawData) -> tuple[np.ndarray, list[str] | None]:
        values = sorted(labels.unique(), key=lambda v: (str(type(v)), v))
        if len(values) < 2:
            raise DataError(f"label column {raw.label_column!r} of {raw.origin} has only one class "
                            f"({values[0]!r}); a classifier needs at least two")
        index = {v: i for i, v in enumerate(values)}
        names = [raw.class_names.get(v, str(v)) if raw.class_names else str(v) for v in values]
        return labels.map(index).to_numpy(dtype=np.int64), names

    def fit_preprocessing(self, train: Examples, info: Mapping[str, Any]) -> Preprocessing:
        return {**self._table_prep(train, info), **ClassificationTask.fit_preprocessing(self, train, info)}

    def build_model(self, prep: Preprocessing) -> nn.Module:
        return self._net(prep, "classification")


@dataclasses.dataclass
class TabularRegression(_Tabular, RegressionTask):
    """An MLP regressor of a table's numeric target."""

    def _labels(self, labels: pd.Series, raw: RawData) -> tuple[np.ndarray, list[str] | None]:
        values = pd.to_numeric(labels, errors="coerce")
        if values.isna().any():
            raise DataError(f"label column {raw.label_column!r} of {raw.origin} must be numeric for regression")
        return values.to_numpy(dtype=np.float32), None

    def fit_preprocessing(self, train: Examples, info: Mapping[str, Any]) -> Preprocessing:
        return {**self._table_prep(train, info), **RegressionTask.fit_preprocessing(self, train, info)}

    def build_model(self, prep: Preprocessing) -> nn.Module:
        return self._net(prep, "regression")


def _split(x: np.ndarray, y: np.ndarray, classification: bool, params: DataParams
           ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], bool]:
    from sklearn.model_selection import train_test_split  # seconds of imports: only in the data step

    n_holdout = params.val_fraction + params.test_fraction
    stratify = classification and np.bincount(y).min() >= 3
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
    if policy in ("zero", "drop") or not np.isnan(x_train).any():
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


breast_cancer: Task = TabularClassification(
    builtin="breast_cancer", thresholds={"accuracy": 0.9},
    description="Tabular binary classification (scikit-learn breast cancer, 30 features).")
digits: Task = TabularClassification(
    builtin="digits", architecture="cnn", thresholds={"accuracy": 0.85},
    description="Image classification of 1x8x8 handwritten digits (scikit-learn digits).")
diabetes: Task = TabularRegression(
    builtin="diabetes", thresholds={"r2": 0.2},
    description="Tabular regression of disease progression (scikit-learn diabetes, 10 features).")
tabular_classification: Task = TabularClassification(
    thresholds={"accuracy": 0.5},
    description="Your own CSV/Parquet (local or s3://) with a label column; MLP classifier.")
tabular_regression: Task = TabularRegression(
    description="Your own CSV/Parquet (local or s3://) with a numeric target column; MLP regressor.")


def classifier_of(feature_names: list[str], classes: list[str], mean: Any = 0.0, std: Any = 1.0,
                  hidden_sizes: list[int] | None = None, seed: int = 0
                  ) -> tuple[Task, str, Preprocessing, nn.Module]:
    """``(task, reference, prep, model)``: a (seeded, untrained) MLP classifier over named features with the
    given standardisation; ``pillars.components.model.predictor.save_model(*classifier_of(...), dir)`` saves it.
    For benchmarks and examples that need a served model without training one."""
    n = len(feature_names)
    reference = "pillars.tasks.tabular:TabularClassification"
    task = TabularClassification(hidden_sizes=list(hidden_sizes or [128, 64]))
    prep = {"feature_names": list(feature_names), "input_shape": [n], "classes": list(classes),
            "mean": np.broadcast_to(np.asarray(mean, dtype=np.float64), (n,)).tolist(),
            "std": np.broadcast_to(np.asarray(std, dtype=np.float64), (n,)).tolist()}
    torch.manual_seed(seed)
    return task, reference, prep, task.build_model(prep).eval()
