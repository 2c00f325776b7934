"""The data profile: schema, per-feature statistics and histograms of the train split.

It is stored with every registered model and is the baseline the model server measures drift against.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

HISTOGRAM_BINS = 10
REFERENCE_ROWS = 200


def feature_profile(values: np.ndarray, bins: int = HISTOGRAM_BINS) -> dict[str, Any]:
    """Statistics and an equal-width histogram of one feature's (finite) values."""
    values = values[np.isfinite(values)]
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    edges = np.histogram_bin_edges(values, bins=bins, range=(lo, hi if hi > lo else lo + 1.0))
    counts, _ = np.histogram(values, bins=edges)
    quantiles = np.quantile(values, [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99]) if values.size else np.zeros(7)
    return {
        "dtype": "float32",
        "count": int(values.size),
        "mean": float(values.mean()) if values.size else 0.0,
        "std": float(values.std()) if values.size else 0.0,
        "min": lo,
        "max": hi,
        "quantiles": dict(zip(["p01", "p05", "p25", "p50", "p75", "p95", "p99"], map(float, quantiles))),
        "histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
    }


def build_profile(
    x_train: np.ndarray,
    y_train: np.ndarray,
    feature_names: Sequence[str],
    kind: str,
    classes: Sequence[str] | None,
    seed: int = 0,
) -> dict[str, Any]:
    """Profile of the train split: per-feature profiles, the label distribution and a small reference sample.

    Args:
        x_train: ``[N, F]`` raw (unstandardised) features.
        y_train: class indices for a classifier, values for a regressor.
        feature_names: the ``F`` column names.
        kind: ``classification`` or ``regression``.
        classes: class names for a classifier.
        seed: for drawing the reference sample.
    """
    features = {name: feature_profile(x_train[:, i]) for i, name in enumerate(feature_names)}
    if kind == "classification":
        counts = np.bincount(y_train.astype(np.int64), minlength=len(classes or []))
        label = {"classes": list(classes or []), "counts": counts.tolist(),
                 "shares": (counts / max(counts.sum(), 1)).tolist()}
    else:
        label = feature_profile(y_train.astype(np.float64))
    rng = np.random.default_rng(seed)
    take = rng.choice(len(x_train), size=min(REFERENCE_ROWS, len(x_train)), replace=False)
    return {
        "rows": int(len(x_train)),
        "schema": [{"name": name, "type": "float32"} for name in feature_names],
        "features": features,
        "label": label,
        "reference_sample": np.round(x_train[take], 6).tolist(),
    }
