"""The data profile: schema, per-feature statistics and histograms of the train split's drift features.

It is stored with every registered model and is the baseline the model server measures drift against.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

HISTOGRAM_BINS = 10
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
QUANTILE_NAMES = ("p01", "p05", "p25", "p50", "p75", "p95", "p99")
REFERENCE_ROWS = 200


def histogram_counts(values: np.ndarray, lo: float, hi: float) -> list[int]:
    """Counts of :data:`HISTOGRAM_BINS` equal-width bins over [lo, hi] by the bin formula both engines use."""
    scale = HISTOGRAM_BINS / (hi - lo if hi > lo else 1.0)
    bins = np.clip(np.floor((values - lo) * scale), 0, HISTOGRAM_BINS - 1).astype(np.int64)
    return np.bincount(bins, minlength=HISTOGRAM_BINS).tolist()


def feature_profile(values: np.ndarray, bins: int = HISTOGRAM_BINS) -> dict[str, Any]:
    """Statistics and an equal-width histogram of one feature's (finite) values."""
    values = values[np.isfinite(values)]
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    edges = np.histogram_bin_edges(values, bins=bins, range=(lo, hi if hi > lo else lo + 1.0))
    counts, _ = np.histogram(values, bins=edges)
    quantiles = np.quantile(values, QUANTILES) if values.size else np.zeros(len(QUANTILES))
    return {
        "dtype": "float32",
        "count": int(values.size),
        "mean": float(values.mean()) if values.size else 0.0,
        "std": float(values.std()) if values.size else 0.0,
        "min": lo,
        "max": hi,
        "quantiles": dict(zip(QUANTILE_NAMES, map(float, quantiles))),
        "histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
    }


def drift_profile(
    names: Sequence[str],
    matrix: np.ndarray,
    label: dict[str, Any] | None,
    kind: str,
    seed: int = 0,
) -> dict[str, Any]:
    """Profile of the train split's drift features: per-feature profiles, the label distribution and a small
    reference sample (rows of ``matrix``).

    Args:
        names: the ``F`` drift feature names (a task's :meth:`~pillars.components.task.Task.drift_features`).
        matrix: ``[N, F]`` float values of those features on the train split.
        label: the training targets' distribution (``Task.label_profile``), None when the task has none.
        kind: the task's kind (``classification``, ``regression``, ...).
        seed: for drawing the reference sample.
    """
    matrix = np.asarray(matrix, dtype=np.float64).reshape(len(matrix), len(names))
    features = {name: feature_profile(matrix[:, i]) for i, name in enumerate(names)}
    rng = np.random.default_rng(seed)
    take = rng.choice(len(matrix), size=min(REFERENCE_ROWS, len(matrix)), replace=False)
    return {
        "rows": int(len(matrix)),
        "kind": kind,
        "schema": [{"name": name, "type": "float32"} for name in names],
        "features": features,
        "label": label,
        "reference_sample": np.round(matrix[take], 6).tolist(),
    }


def build_profile(
    x_train: np.ndarray,
    y_train: np.ndarray,
    feature_names: Sequence[str],
    kind: str,
    classes: Sequence[str] | None,
    seed: int = 0,
) -> dict[str, Any]:
    """:func:`drift_profile` of a feature table ``x_train`` ``[N, F]`` with class indices (``classes`` given) or
    values ``y_train`` as the label (what the tabular tasks' drift features and label profile are)."""
    if kind == "classification":
        counts = np.bincount(np.asarray(y_train, dtype=np.int64), minlength=len(classes or []))
        label: dict[str, Any] | None = {"classes": list(classes or []), "counts": counts.tolist(),
                                        "shares": (counts / max(counts.sum(), 1)).tolist()}
    else:
        label = feature_profile(np.asarray(y_train, dtype=np.float64))
    return drift_profile(feature_names, np.asarray(x_train).reshape(len(x_train), -1), label, kind, seed)
