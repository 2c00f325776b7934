"""The automated shadow decision end to end: a registry with a champion and a challenger, the server running the
challenger in shadow, labels through the feedback route, then ``pillars models decide-shadow`` moves the alias
only for a better challenger, with the decision's reason in the alias history."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import mlflow
import numpy as np
from mlflow.tracking import MlflowClient

from pillars.components.model.mlflow_model import log_pillars_model
from pillars.serving.demo import v2_request
from tests.serving.conftest import start_server
from tests.serving.toy import make_classifier, toy_rows

NAME = "shadowed"


def _register(model_dir, alias: str, tracking: str) -> str:
    mlflow.set_tracking_uri(tracking)
    try:
        mlflow.set_experiment("shadow-tests")
        with mlflow.start_run():
            info = log_pillars_model(model_dir)
        version = mlflow.register_model(info.model_uri, NAME).version
        MlflowClient().set_registered_model_alias(NAME, alias, version)
    finally:
        mlflow.set_tracking_uri(None)
    return str(version)


def _decide(server: str, tracking: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pillars.pipelines.cli", "models", "decide-shadow", NAME,
                           "--server", server], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MLFLOW_TRACKING_URI": tracking})


def test_a_better_shadow_is_promoted_with_its_reason_and_the_worse_one_is_not(mlflow_server, tmp_path):
    worse = _register(make_classifier(tmp_path / "worse", steps=2, seed=5), "champion", mlflow_server)
    better = _register(make_classifier(tmp_path / "better", steps=200), "challenger", mlflow_server)
    server = start_server(["--model_uri", f"models:/{NAME}@champion", "--shadow_uri", f"models:/{NAME}@challenger",
                           "--shadow_min_labels", "100", "--feedback_dir", str(tmp_path / "labels")],
                          tmp_path / "server.log", env={"MLFLOW_TRACKING_URI": mlflow_server}, model=NAME)
    x = toy_rows(400, seed=41)
    y = (x[:, 0] > 5.0).astype(np.int64) + (x[:, 1] > 6.0).astype(np.int64)
    try:
        with httpx.Client(timeout=30) as client:
            before = _decide(server.http, mlflow_server)  # no labels yet: nothing moves
            assert before.returncode == 0 and "wait" in before.stdout, before.stdout + before.stderr
            ids = [client.post(f"{server.http}/v2/models/{NAME}/infer", json=v2_request(x[i:i + 4])).json()["id"]
                   for i in range(0, len(x), 4)]
            deadline = time.monotonic() + 30
            while client.get(f"{server.http}/v2/models/{NAME}/shadow").json()["shadow"]["rows"] < len(x):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            labels = [{"id": request_id, "label": y[i * 4:i * 4 + 4].tolist()} for i, request_id in enumerate(ids)]
            assert client.post(f"{server.http}/v2/models/{NAME}/feedback",
                               json={"labels": labels}).json()["scored"] == len(ids)
        decided = _decide(server.http, mlflow_server)
        assert decided.returncode == 0, decided.stderr
        assert f"champion -> v{better}" in decided.stdout
        mlflow.set_tracking_uri(mlflow_server)
        try:
            assert MlflowClient().get_model_version_by_alias(NAME, "champion").version == better
            from pillars.components import registry

            event = registry.history(NAME)[-1]
            assert (event.from_version, event.to_version) == (worse, better)
            assert event.why.startswith("shadow decision: better: challenger")
        finally:
            mlflow.set_tracking_uri(None)
        again = _decide(server.http, mlflow_server)  # the same decision again moves nothing
        assert again.returncode == 0 and again.stdout.strip() == f"{NAME}: v{better} already champion"
        mlflow.set_tracking_uri(mlflow_server)
        try:
            assert MlflowClient().get_model_version_by_alias(NAME, "champion").version == better
        finally:
            mlflow.set_tracking_uri(None)
    finally:
        server.process.stop()
