"""A user's own task, from a package that is not part of Pillars (tests/fixtures/user_package, put on
PYTHONPATH), named as ``acme_churn.tasks:churn``: kfp.local trains it against a real ``mlflow server``,
the gate and registry take it, its pyfunc predicts from a DataFrame of its own inputs (a string column
among them), and retraining finds its task and arguments again from the champion and warm-starts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from pillars.components import registry
from pillars.components.prepare_data import PrepareParams, prepare
from pillars.components.register import downloaded_version
from pillars.pipelines.local import run_local
from pillars.pipelines.training import retraining_pipeline, training_pipeline

pytestmark = pytest.mark.slow

USER_PACKAGE = Path(__file__).resolve().parents[1] / "fixtures" / "user_package"
TASK = "acme_churn.tasks:churn"


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    """The user's package importable here and in every step's process (kfp.local's subprocesses)."""
    monkeypatch.setenv("PILLARS_HOME", str(tmp_path / ".pillars"))
    monkeypatch.syspath_prepend(str(USER_PACKAGE))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(USER_PACKAGE), os.environ.get("PYTHONPATH")])))


def test_a_task_from_the_users_own_package_trains_registers_predicts_and_retrains(tracking_uri, user_package):
    arguments = {"task": TASK, "task_args": json.dumps({"rows": 800}), "epochs": 20, "learning_rate": 0.02}
    run_local(training_pipeline(), arguments)
    # The default registered model name of package.module:attribute is the attribute's name.
    assert registry.alias_version("churn", registry.CHAMPION) == "1"
    version = registry.client().get_model_version("churn", "1")
    assert version.tags["task"] == TASK and json.loads(version.tags["task_args"]) == {"rows": 800}
    metrics = registry.client().get_run(version.run_id).data.metrics
    assert metrics["test_accuracy"] >= 0.8 and "test_churn_recall" in metrics  # the task's own metric

    with downloaded_version("churn", "1") as folder:
        files = {p.name for p in (folder / "artifacts").iterdir()}
        assert {"config.json", "model.safetensors", "preprocessing.json", "data_profile.json"} <= files
        config = json.loads((folder / "artifacts" / "config.json").read_text())
        profile = json.loads((folder / "artifacts" / "data_profile.json").read_text())
    assert config["task"] == TASK and config["task_args"]["rows"] == 800
    assert [s["name"] for s in profile["schema"]] == ["basic_plan", "minutes", "support_calls"]

    data = prepare(PrepareParams(task=TASK, task_args=json.dumps({"rows": 800})))
    test = data.splits["test"]
    model = mlflow.pyfunc.load_model("models:/churn@champion")
    out = model.predict(pd.DataFrame({"plan": test["plan"], "usage": list(test["usage"])}))
    assert set(out.columns) >= {"label", "class_index", "prob_stays", "prob_churns"}
    assert (out["class_index"].to_numpy() == test["label"]).mean() >= 0.8
    assert set(out["label"]) <= {"stays", "churns"}
    np.testing.assert_allclose(out[["prob_stays", "prob_churns"]].sum(axis=1), 1.0, rtol=1e-5)

    # Retraining names only the model: the task and its arguments come from the champion's tags.
    run_local(retraining_pipeline(), {"model_name": "churn", "epochs": 5, "learning_rate": 0.02})
    retrained = registry.client().get_model_version("churn", "2")
    assert retrained.tags["task"] == TASK and json.loads(retrained.tags["task_args"]) == {"rows": 800}
    run = registry.client().get_run(retrained.run_id)
    assert run.data.tags["pillars.warm_started_from"] == "churn/1"
    assert "champion scored on the same test split" in retrained.tags["gate_reasons"]
