"""The spine end to end: kfp.local runs the real pipeline against a real ``mlflow server``."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest

from pillars.components import registry
from pillars.components.data.prepare import PrepareParams, prepare
from pillars.pipelines.cli import main
from pillars.pipelines.local.runner import run_local
from pillars.pipelines.training import retraining_pipeline, training_pipeline

pytestmark = pytest.mark.slow


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("PILLARS_HOME", str(tmp_path / ".pillars"))
    return tmp_path / ".pillars"


SPINE = "spine"
"""A model name of its own: the session's MLflow server is shared with other tests."""


@pytest.fixture(scope="module")
def spine(mlflow_server, tmp_path_factory):
    """``spine`` trained once through the whole pipeline (30 epochs, v1 champion), for the module's tests:
    a pipeline run costs a process per step. Returns its ``PILLARS_HOME`` (pipeline root, KFP cache)."""
    home = tmp_path_factory.mktemp("spine") / ".pillars"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        env.setenv("PILLARS_HOME", str(home))
        mlflow.set_tracking_uri(mlflow_server)
        try:
            run_local(training_pipeline(), {"task": "breast_cancer", "model_name": SPINE, "epochs": 30})
        finally:
            mlflow.set_tracking_uri(None)
    return home


@pytest.fixture
def spine_home(spine, tracking_uri, monkeypatch):
    """The spine's ``PILLARS_HOME`` for one test (its later runs reuse the cached data step)."""
    monkeypatch.setenv("PILLARS_HOME", str(spine))
    return spine


def _test_metrics(name: str, version: str) -> dict[str, float]:
    run_id = registry.client().get_model_version(name, version).run_id
    return registry.client().get_run(run_id).data.metrics


def _pillars(capsys, *args: str) -> tuple[int, str, str]:
    """``pillars ARGS`` in this process (the console script itself is tested in test_cli.py)."""
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_pipeline_trains_registers_and_promotes_then_weak_run_is_kept_out(spine_home, capsys):
    champion = registry.alias_version(SPINE, registry.CHAMPION)
    assert champion == "1"
    metrics = _test_metrics(SPINE, champion)
    assert metrics["test_accuracy"] >= 0.93 and metrics["test_roc_auc"] > 0.95
    version = registry.client().get_model_version(SPINE, champion)
    assert version.tags["gate_approved"] == "true" and len(version.tags["data_hash"]) == 16
    assert version.tags["kfp_run_id"] and version.tags["mlflow_run_id"] == version.run_id
    run = registry.client().get_run(version.run_id)
    assert "learning_rate" in run.data.params
    assert len(registry.client().get_metric_history(version.run_id, "val_loss")) >= 5
    artifacts = {a.path for a in registry.client().list_artifacts(version.run_id, "plots")}
    assert {"plots/learning_curve.png", "plots/confusion_matrix.png"} <= artifacts

    model = mlflow.pyfunc.load_model(f"models:/{SPINE}@champion")
    data = prepare(PrepareParams(task="breast_cancer"))
    x_test, y_test = data.splits["test"]["input-0"], data.splits["test"]["label"]
    out = model.predict(pd.DataFrame(x_test, columns=data.metadata["info"]["feature_names"]))
    assert (out["class_index"].to_numpy() == y_test).mean() >= 0.93

    # A deliberately weak run: registered as a version (challenger), but champion stays.
    run_local(training_pipeline(), {"task": "breast_cancer", "model_name": SPINE, "epochs": 1, "learning_rate": 1e-6})
    weak = registry.client().get_model_version(SPINE, "2")
    assert weak.tags["gate_approved"] == "false" and "FAILED" in weak.tags["gate_reasons"]
    assert registry.alias_version(SPINE, registry.CHAMPION) == "1"
    assert registry.alias_version(SPINE, registry.CHALLENGER) == "2"

    code, out, err = _pillars(capsys, "models", "history", SPINE)
    assert code == 0, err
    assert "champion   v- -> v1" in out and "challenger v1 -> v2" in out
    code, out, err = _pillars(capsys, "models", "show", SPINE)
    assert "spine v1 [champion]" in out and "gate=false" in out
    code, out, err = _pillars(capsys, "models", "promote", SPINE, "2", "--why", "test")
    assert code == 0 and registry.alias_version(SPINE, registry.CHAMPION) == "2"
    code, out, err = _pillars(capsys, "models", "rollback", SPINE)
    assert code == 0, err
    assert registry.alias_version(SPINE, registry.CHAMPION) == "1"


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


def test_retraining_resolves_the_task_warm_starts_and_promotes_only_if_better(spine_home):
    # The module's trained spine is the champion to retrain (after the test above, which leaves v1 champion).
    champion = registry.alias_version(SPINE, registry.CHAMPION)
    first = _test_metrics(SPINE, champion)["test_accuracy"]
    before = {v.version for v in registry.list_versions(SPINE)}

    run_local(retraining_pipeline(), {"model_name": SPINE, "epochs": 30})
    [new] = {v.version for v in registry.list_versions(SPINE)} - before
    retrained = registry.client().get_model_version(SPINE, new)
    run = registry.client().get_run(retrained.run_id)
    assert run.data.tags["pillars.warm_started_from"] == f"{SPINE}/{champion}"
    assert retrained.tags["task"] == "pillars.tasks.tabular:breast_cancer" and retrained.tags["task_args"] == "{}"
    approved = retrained.tags["gate_approved"] == "true"
    second = _test_metrics(SPINE, new)["test_accuracy"]
    assert approved == (second >= first and second >= 0.9), retrained.tags["gate_reasons"]
    assert registry.alias_version(SPINE, registry.CHAMPION) == (new if approved else champion)
