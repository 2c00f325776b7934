"""The spine end to end: kfp.local runs the real pipeline against a real ``mlflow server``."""

from __future__ import annotations

import os
import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest

from pillars.components import registry
from pillars.components.prepare_data import PrepareParams, prepare
from pillars.pipelines.local import run_local
from pillars.pipelines.training import retraining_pipeline, training_pipeline

pytestmark = pytest.mark.slow


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("PILLARS_HOME", str(tmp_path / ".pillars"))
    return tmp_path / ".pillars"


def _test_metrics(name: str, version: str) -> dict[str, float]:
    run_id = registry.client().get_model_version(name, version).run_id
    return registry.client().get_run(run_id).data.metrics


def _pillars(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pillars.pipelines.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


# A model name of its own: the session's MLflow server is shared with other tests.
def test_pipeline_trains_registers_and_promotes_then_weak_run_is_kept_out(tracking_uri, home):
    run_local(training_pipeline(), {"task": "breast_cancer", "model_name": "spine", "epochs": 30})
    champion = registry.alias_version("spine", registry.CHAMPION)
    assert champion == "1"
    metrics = _test_metrics("spine", champion)
    assert metrics["test_accuracy"] >= 0.93 and metrics["test_roc_auc"] > 0.95
    version = registry.client().get_model_version("spine", champion)
    assert version.tags["gate_approved"] == "true" and len(version.tags["data_hash"]) == 16
    assert version.tags["kfp_run_id"] and version.tags["mlflow_run_id"] == version.run_id
    run = registry.client().get_run(version.run_id)
    assert "learning_rate" in run.data.params
    assert len(registry.client().get_metric_history(version.run_id, "val_loss")) >= 5
    artifacts = {a.path for a in registry.client().list_artifacts(version.run_id, "plots")}
    assert {"plots/learning_curve.png", "plots/confusion_matrix.png"} <= artifacts

    model = mlflow.pyfunc.load_model("models:/spine@champion")
    data = prepare(PrepareParams(task="breast_cancer"))
    x_test, y_test = data.splits["test"]["input-0"], data.splits["test"]["label"]
    out = model.predict(pd.DataFrame(x_test, columns=data.metadata["info"]["feature_names"]))
    assert (out["class_index"].to_numpy() == y_test).mean() >= 0.93

    # A deliberately weak run: registered as a version (challenger), but champion stays.
    run_local(training_pipeline(), {"task": "breast_cancer", "model_name": "spine", "epochs": 1, "learning_rate": 1e-6})
    weak = registry.client().get_model_version("spine", "2")
    assert weak.tags["gate_approved"] == "false" and "FAILED" in weak.tags["gate_reasons"]
    assert registry.alias_version("spine", registry.CHAMPION) == "1"
    assert registry.alias_version("spine", registry.CHALLENGER) == "2"

    env = {"MLFLOW_TRACKING_URI": tracking_uri, "PILLARS_HOME": str(home)}
    history = _pillars("models", "history", "spine", env=env)
    assert history.returncode == 0, history.stderr
    assert "champion   v- -> v1" in history.stdout and "challenger v1 -> v2" in history.stdout
    shown = _pillars("models", "show", "spine", env=env)
    assert "spine v1 [champion]" in shown.stdout and "gate=false" in shown.stdout
    promoted = _pillars("models", "promote", "spine", "2", "--why", "test", env=env)
    assert promoted.returncode == 0 and registry.alias_version("spine", registry.CHAMPION) == "2"
    rolled = _pillars("models", "rollback", "spine", env=env)
    assert rolled.returncode == 0, rolled.stderr
    assert registry.alias_version("spine", registry.CHAMPION) == "1"


def test_digits_cnn_through_the_pipeline_with_two_ddp_processes(tracking_uri, home):
    # Two DDP processes (gloo): the same training code as on a multi-GPU cluster.
    run_local(training_pipeline(), {"task": "digits", "epochs": 15, "model_name": "digits-cnn", "nproc": 2})
    champion = registry.alias_version("digits-cnn", registry.CHAMPION)
    assert champion is not None
    assert _test_metrics("digits-cnn", champion)["test_accuracy"] >= 0.9
    model = mlflow.pyfunc.load_model("models:/digits-cnn@champion")
    x = np.zeros((2, 64), dtype=np.float64)
    out = model.predict(pd.DataFrame(x, columns=[f"pixel_{i}" for i in range(64)]))
    assert len(out) == 2 and {f"prob_{d}" for d in range(10)} <= set(out.columns)
    run_id = registry.client().get_model_version("digits-cnn", champion).run_id
    assert registry.client().get_run(run_id).data.tags["pillars.world_size"] == "2"


def test_retraining_resolves_the_task_warm_starts_and_promotes_only_if_better(tracking_uri, home):
    run_local(training_pipeline(), {"task": "breast_cancer", "model_name": "cancer", "epochs": 3})
    assert registry.alias_version("cancer", registry.CHAMPION) == "1"
    first = _test_metrics("cancer", "1")["test_accuracy"]

    run_local(retraining_pipeline(), {"model_name": "cancer", "epochs": 30})
    retrained = registry.client().get_model_version("cancer", "2")
    run = registry.client().get_run(retrained.run_id)
    assert run.data.tags["pillars.warm_started_from"] == "cancer/1"
    assert retrained.tags["task"] == "pillars.tasks.tabular:breast_cancer" and retrained.tags["task_args"] == "{}"
    approved = retrained.tags["gate_approved"] == "true"
    second = _test_metrics("cancer", "2")["test_accuracy"]
    assert approved == (second >= first and second >= 0.9), retrained.tags["gate_reasons"]
    assert registry.alias_version("cancer", registry.CHAMPION) == ("2" if approved else "1")
