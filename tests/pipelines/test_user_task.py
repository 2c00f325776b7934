"""A user's own task from its own installed distribution (examples/custom-task, ``pillars-example-churn``,
installed by ``make install``), named as ``churn_example.tasks:churn``: kfp.local trains it against a real
``mlflow server``, the gate and registry take it (its own lower-is-better metric), its pyfunc predicts
from a DataFrame of its own inputs (a string column among them), the model server answers V2 REST with
its BYTES and FP32 inputs and refuses an unknown plan naming the input, and retraining finds its task
and arguments again from the champion and warm-starts."""

from __future__ import annotations

import importlib.metadata
import json

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
from churn_example.tasks import cost_per_customer

from pillars.components import registry
from pillars.components.data.prepare import PrepareParams, prepare
from pillars.components.registry.register import downloaded_version
from pillars.pipelines.local.runner import run_local
from pillars.pipelines.training import retraining_pipeline, training_pipeline
from tests.serving.conftest import start_server

pytestmark = pytest.mark.slow

TASK = "churn_example.tasks:churn"
ARGS = {"customers": 3000}


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    """The example's distribution is installed (``make install``); runs keep their files in ``tmp_path``."""
    monkeypatch.setenv("PILLARS_HOME", str(tmp_path / ".pillars"))
    importlib.metadata.distribution("pillars-example-churn")  # fails, naming it, when not installed


def test_a_task_from_the_users_own_package_trains_registers_predicts_serves_and_retrains(tracking_uri, user_package,
                                                                                         tmp_path):
    arguments = {"task": TASK, "task_args": json.dumps(ARGS), "epochs": 10}
    run_local(training_pipeline(), arguments)
    # The default registered model name of package.module:attribute is the attribute's name.
    assert registry.alias_version("churn", registry.CHAMPION) == "1"
    version = registry.client().get_model_version("churn", "1")
    assert version.tags["task"] == TASK and json.loads(version.tags["task_args"]) == ARGS
    metrics = registry.client().get_run(version.run_id).data.metrics
    data = prepare(PrepareParams(task=TASK, task_args=json.dumps(ARGS)))
    test = data.splits["test"]
    everyone_stays = cost_per_customer(test["label"], np.zeros_like(test["label"]))
    assert metrics["test_cost_per_customer"] < 0.5 * everyone_stays, metrics  # the task's own metric

    with downloaded_version("churn", "1") as folder:
        files = {p.name for p in (folder / "artifacts").iterdir()}
        assert {"config.json", "model.safetensors", "preprocessing.json", "data_profile.json"} <= files
        config = json.loads((folder / "artifacts" / "config.json").read_text())
        profile = json.loads((folder / "artifacts" / "data_profile.json").read_text())
    assert config["task"] == TASK and config["task_args"]["customers"] == 3000
    assert [s["name"] for s in profile["schema"]] == ["minutes", "data_gb", "support_calls", "tenure_months",
                                                      "plan_pro"]

    model = mlflow.pyfunc.load_model("models:/churn@champion")
    out = model.predict(pd.DataFrame({"plan": test["plan"], "usage": list(test["usage"])}))
    assert set(out.columns) >= {"label", "class_index", "prob_stays", "prob_churns"}
    assert cost_per_customer(test["label"], out["class_index"].to_numpy()) == pytest.approx(
        metrics["test_cost_per_customer"], abs=1e-6)
    assert set(out["label"]) <= {"stays", "churns"}
    np.testing.assert_allclose(out[["prob_stays", "prob_churns"]].sum(axis=1), 1.0, rtol=1e-5)

    served = start_server(["--model_uri", "models:/churn@champion", "--model_name", "churn"], tmp_path / "server.log",
                          env={"MLFLOW_TRACKING_URI": tracking_uri}, model="churn")
    try:
        request = {"inputs": [{"name": "plan", "datatype": "BYTES", "shape": [2], "data": ["basic", "pro"]},
                              {"name": "usage", "datatype": "FP32", "shape": [2, 4],
                               "data": [320, 9.5, 4, 3, 120, 2, 0, 60]}]}
        answer = httpx.post(f"{served.http}/v2/models/churn/infer", json=request, timeout=30)
        assert answer.status_code == 200, answer.text
        labels = {o["name"]: o["data"] for o in answer.json()["outputs"]}["label"]
        assert labels == ["churns", "stays"]  # four support calls in month three; a quiet five-year customer
        request["inputs"][0]["data"] = ["gold", "pro"]
        refused = httpx.post(f"{served.http}/v2/models/churn/infer", json=request, timeout=30)
        assert refused.status_code == 400 and "'plan'" in refused.json()["error"], refused.text
    finally:
        served.process.stop()

    # Retraining names only the model: the task and its arguments come from the champion's tags.
    run_local(retraining_pipeline(), {"model_name": "churn", "epochs": 3})
    retrained = registry.client().get_model_version("churn", "2")
    assert retrained.tags["task"] == TASK and json.loads(retrained.tags["task_args"]) == ARGS
    run = registry.client().get_run(retrained.run_id)
    assert run.data.tags["pillars.warm_started_from"] == "churn/1"
    assert "champion scored on the same test split" in retrained.tags["gate_reasons"]
