"""Drift that matters: permutation importance at training, the importance-weighted drift share in the monitor,
and the breast_cancer target (shift the two most important features: retrain; the two least: do not)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from pillars.components.data.profile import build_profile
from pillars.components.data.splits import save_split
from pillars.components.evaluation.importance import IMPORTANCE_KEY, permutation_importance, store_importance
from pillars.components.model.predictor import load_predictor
from pillars.serving.monitoring.drift import DriftConfig, DriftMonitor
from pillars.tasks.tabular import INPUT
from tests.serving.toy import CLASSES, make_classifier, train_split

FEATURES = [f"f{i}" for i in range(4)]


def _monitor(importance: dict[str, float] | None) -> tuple[DriftMonitor, np.ndarray]:
    x, y = train_split()
    profile = build_profile(x, y, FEATURES, "classification", CLASSES)
    return DriftMonitor(profile, FEATURES, "classification", CLASSES, DriftConfig(window=1000, min_rows=500),
                        importance), x


def _weighted_share_after_shifting(monitor: DriftMonitor, x: np.ndarray, columns: list[int]) -> tuple[float, float]:
    rows = x[:1000].astype(np.float64).copy()
    rows[:, columns] += 3 * x[:, columns].std(axis=0)
    monitor.observe_named(FEATURES, rows, {"class_index": np.zeros(len(rows), dtype=np.int64)})
    report = monitor.compute()
    assert report is not None
    return report.weighted_share, report.share


def test_drifted_features_count_by_their_importance():
    importance = {"f0": 0.6, "f1": 0.3, "f2": 0.1, "f3": 0.0}
    weighted, share = _weighted_share_after_shifting(_monitor(importance)[0], _monitor(None)[1], [0])
    assert share == 0.25 and weighted == pytest.approx(0.6)
    weighted, share = _weighted_share_after_shifting(_monitor(importance)[0], _monitor(None)[1], [3])
    assert share == 0.25 and weighted == 0.0


def test_without_importances_the_weighted_share_is_the_plain_share():
    monitor, x = _monitor(None)
    weighted, share = _weighted_share_after_shifting(monitor, x, [0, 1])
    assert share == 0.5 and weighted == 0.5


def test_negative_importances_are_refused():
    with pytest.raises(ValueError, match="importances"):
        _monitor({"f0": -1.0})


def test_permutation_importance_finds_the_features_the_rule_uses(tmp_path):
    model_dir = make_classifier(tmp_path / "model", steps=200)
    x, y = train_split(600, seed=3)  # the label depends on f0 and f1 only
    save_split(tmp_path / "val.npz", {INPUT: x, "label": y})
    importance = store_importance(model_dir, tmp_path / "val.npz")
    assert importance is not None and set(importance) == set(FEATURES)
    assert min(importance["f0"], importance["f1"]) > 5 * max(importance["f2"], importance["f3"])
    stored = json.loads((model_dir / "config.json").read_text())["extra"][IMPORTANCE_KEY]
    assert stored == importance
    assert load_predictor(model_dir).config.extra[IMPORTANCE_KEY] == importance


def test_a_task_whose_drift_features_are_not_its_inputs_gets_no_importance(tmp_path):
    from tests.serving.toy_task import make_toy_model, toy_inputs  # BYTES, INT64 and a variable-length input

    predictor = load_predictor(make_toy_model(tmp_path / "model"))
    assert permutation_importance(predictor, {**toy_inputs(20), "label": np.zeros(20)}) is None


def test_breast_cancer_shifting_the_two_most_important_features_retrains_the_two_least_do_not():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    try:
        from weighted_drift_bench import run_seed
    finally:
        sys.path.pop(0)
    result = run_seed(seed=0, epochs=15)
    windows = result["windows"]
    assert windows["in_distribution"]["fired"] == []
    assert "weighted_drift" in windows["top2_plus_3sd"]["fired"]
    assert windows["top2_plus_3sd"]["drifted"] and set(windows["top2_plus_3sd"]["drifted"]) <= set(result["top2"])
    assert windows["bottom2_plus_3sd"]["fired"] == []
    assert windows["bottom2_plus_3sd"]["share"] > 0  # the two features did drift: weighing them is what is quiet
