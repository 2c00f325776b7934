"""Evaluation metrics and the promotion gate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pillars.components.errors import ConfigError
from pillars.components.evaluation.evaluate import evaluate, report_html, split_metrics
from pillars.components.task import load_task
from pillars.components.evaluation.gate import gate, parse_thresholds
from tests.models import predictor_of, tabular_classifier


def _binary_predictor():
    task, prep, model = tabular_classifier(["x"], ["neg", "pos"], hidden_sizes=[])
    layer = model.body[1]
    layer.weight.data[:] = torch.tensor([[-4.0], [4.0]])  # logit difference 8x: predicts pos when x > 0
    layer.bias.data[:] = 0.0
    return predictor_of(task, prep, model)


def _split(x, y):
    return {"input-0": np.asarray(x, dtype=np.float32).reshape(-1, 1), "label": np.asarray(y)}


def test_metrics_match_known_predictions():
    predictor = _binary_predictor()
    m = split_metrics(predictor, _split([-2.0, -1.0, 1.0, 2.0, 0.5], [0, 0, 1, 1, 0]))
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["roc_auc"] == pytest.approx(1.0)  # the scores rank every positive above every negative


def test_evaluate_reports_confusion_roc_and_overfitting_gap():
    predictor = _binary_predictor()
    train = _split([-1.0, 1.0], [0, 1])
    val = _split([-1.0, 1.0, 1.0], [0, 1, 0])
    test = _split([-1.0, 1.0, 2.0, -3.0], [0, 1, 0, 0])
    result = evaluate(predictor, {"train": train, "val": val, "test": test})
    assert result.confusion == [[2, 1], [0, 1]]
    assert result.metrics["overfit_gap"] == pytest.approx(1 - 2 / 3)
    assert result.overfitting
    assert result.roc is not None and result.roc["fpr"][0] == 0.0
    page = report_html(result, [{"epoch": 1, "train_loss": 1.0, "val_loss": 1.1}], "t")
    assert page.count("<img") == 2 and "Overfitting" in page


def test_gate_requires_thresholds_and_not_worse_than_champion():
    task = load_task("breast_cancer")
    good = {"accuracy": 0.95}
    assert gate(good, task, {"accuracy": 0.9}).approved
    assert not gate({"accuracy": 0.85}, task, {"accuracy": 0.9}).approved
    worse = gate(good, task, {"accuracy": 0.9}, champion_score=0.97, champion_version="3")
    assert not worse.approved and "WORSE" in worse.reasons[-1] and "v3" in worse.reasons[-1]
    assert gate(good, task, {}, margin=0.03, champion_score=0.97).approved
    assert gate(good, task, {}, champion_score=0.95).approved  # a tie is not worse


def test_gate_for_lower_is_better_metrics():
    task = load_task("diabetes")
    metrics = {"rmse": 50.0, "r2": 0.4}
    assert gate(metrics, task, {"r2": 0.2, "rmse": 60}, champion_score=51.0).approved
    assert not gate(metrics, task, {}, champion_score=49.0).approved
    assert not gate(metrics, task, {"rmse": 45}).approved


def test_thresholds_parse_and_reject_bad_input():
    task = load_task("breast_cancer")
    assert parse_thresholds("", task) == {"accuracy": 0.9}
    assert parse_thresholds('{"f1_macro": 0.8}', task) == {"f1_macro": 0.8}
    with pytest.raises(ConfigError, match="JSON object"):
        parse_thresholds("accuracy>0.9", task)
    with pytest.raises(ConfigError, match="numbers"):
        parse_thresholds('{"accuracy": "high"}', task)
    with pytest.raises(ConfigError, match="unknown metric 'precision'"):
        gate({"accuracy": 0.9}, task, {"precision": 0.5})
    with pytest.raises(ConfigError, match="margin"):
        gate({"accuracy": 0.9}, task, {}, margin=-1)


def test_the_gate_takes_direction_and_defaults_from_a_users_task():
    from pillars.components.task import RegressionTask

    class Forecast(RegressionTask):  # a user's task: its own primary metric, lower is better
        primary_metric = "mase"
        thresholds = {"mase": 1.0}

        load_data = build_model = signature = encode = None

    task = Forecast()
    assert parse_thresholds("", task) == {"mase": 1.0}
    assert gate({"mase": 0.8}, task, parse_thresholds("", task), champion_score=0.9).approved
    assert not gate({"mase": 1.2}, task, parse_thresholds("", task)).approved
    assert not gate({"mase": 0.8}, task, {}, champion_score=0.7).approved
    with pytest.raises(ConfigError, match="primary metric 'mase'"):
        gate({"rmse": 0.8}, task, {})
