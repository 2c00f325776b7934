"""The spine end to end: kfp.local runs the real pipeline against a real ``mlflow server``."""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest

from pillars.components import registry
from pillars.components.data.prepare import PrepareParams, prepare
from pillars.pipelines.cli import main
from pillars.pipelines.local.runner import run_local
from pillars.pipelines.training import training_pipeline

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


def _serve_and_label(labels_dir, tmp_path) -> None:
    """Serve the spine's champion with ``--feedback_dir labels_dir``, send it 16 rows (two requests with ids)
    over HTTP, then their true labels and one label for an id it never served."""
    import httpx

    from pillars.serving.demo import v2_request
    from tests.serving.conftest import start_server

    rows = prepare(PrepareParams(task="breast_cancer")).splits["train"]  # rows it trained on: no test leak
    x, y = rows["input-0"][:16], rows["label"][:16]
    server = start_server(["--model_uri", f"models:/{SPINE}@champion", "--model_name", SPINE,
                           "--feedback_dir", str(labels_dir)], tmp_path / "server.log",
                          env={"MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}, model=SPINE)
    try:
        with httpx.Client(timeout=30) as client:
            for i, batch in enumerate((x[:10], x[10:])):
                response = client.post(f"{server.http}/v2/models/{SPINE}/infer",
                                        json=v2_request(batch) | {"id": f"req-{i}"})
                assert response.status_code == 200, response.text
            labels = [{"id": "req-0", "label": [int(v) for v in y[:10]]},
                      {"id": "req-1", "label": [int(v) for v in y[10:]]},
                      {"id": "never-served", "label": 1}]  # kept, but no inputs to train on
            response = client.post(f"{server.http}/v2/models/{SPINE}/feedback", json={"labels": labels})
            assert response.status_code == 200 and response.json()["scored"] == 2, response.text
    finally:
        server.process.stop()


def test_retraining_resolves_the_task_warm_starts_takes_feedback_rows_and_promotes_only_if_better(
        spine_home, capsys, tmp_path):
    # The module's trained spine is the champion to retrain (after the test above, which leaves v1 champion).
    # It is served first and gets labels over HTTP; `pillars run retraining --param feedback=DIR` trains on
    # them as extra rows of the train split.
    champion = registry.alias_version(SPINE, registry.CHAMPION)
    first = _test_metrics(SPINE, champion)["test_accuracy"]
    before = {v.version for v in registry.list_versions(SPINE)}
    champion_rows = json.loads(registry.client().get_model_version(SPINE, champion).tags["data_rows"])
    labels_dir = tmp_path / "labels"
    _serve_and_label(labels_dir, tmp_path)

    code, out, err = _pillars(capsys, "run", "retraining", "--param", f"model_name={SPINE}", "--param", "epochs=30",
                              "--param", f"feedback={labels_dir}")
    assert code == 0, err
    [new] = {v.version for v in registry.list_versions(SPINE)} - before
    retrained = registry.client().get_model_version(SPINE, new)
    run = registry.client().get_run(retrained.run_id)
    assert run.data.tags["pillars.warm_started_from"] == f"{SPINE}/{champion}"
    assert retrained.tags["task"] == "pillars.tasks.tabular:breast_cancer" and retrained.tags["task_args"] == "{}"
    approved = retrained.tags["gate_approved"] == "true"
    second = _test_metrics(SPINE, new)["test_accuracy"]
    assert approved == (second >= first and second >= 0.9), retrained.tags["gate_reasons"]
    assert registry.alias_version(SPINE, registry.CHAMPION) == (new if approved else champion)

    # The feedback: 16 rows joined the train split only; the label without inputs is counted, not used.
    tags = retrained.tags
    assert (tags["feedback_rows"], tags["feedback_without_inputs"]) == ("16", "1")
    assert tags["feedback_source"] == str(labels_dir) and run.data.tags["pillars.feedback_rows"] == "16"
    rows_now = json.loads(tags["data_rows"])
    assert rows_now == {**champion_rows, "train": champion_rows["train"] + 16}
    code, out, err = _pillars(capsys, "models", "show", SPINE)
    assert f"{SPINE} v{new}" in out and "feedback=16 (+1 without inputs)" in out
