"""Hot reload refuses what it cannot serve: a broken version and a version with other inputs are refused
once (not retried until the alias moves), reported on /metrics, and leave no download behind."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import mlflow
from mlflow.tracking import MlflowClient

from pillars.components.model.mlflow_model import log_pillars_model
from pillars.serving.demo import v2_request
from tests.serving.conftest import start_server
from tests.serving.test_metrics_and_batching import scrape
from tests.serving.toy import make_classifier, make_regressor, toy_rows

NAME = "reload-guard"


def _register_good(model_dir: Path) -> str:
    with mlflow.start_run():
        info = log_pillars_model(model_dir)
    return mlflow.register_model(info.model_uri, NAME).version


def _register_broken(tmp_path: Path) -> str:
    """A version whose files are there but whose weights are not a safetensors file."""
    folder = make_classifier(tmp_path / "broken")
    (folder / "model.safetensors").write_bytes(b"not safetensors at all")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(folder), "model")
        source = mlflow.get_artifact_uri("model")
    return MlflowClient().create_model_version(NAME, source, run.info.run_id).version


def _wait(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.2)


def test_broken_and_incompatible_versions_are_refused_once_and_a_good_one_is_swapped_in(
        tracking_uri, mlflow_server, tmp_path):
    mlflow.set_experiment("serving-reload-guard")
    client = MlflowClient()
    client.set_registered_model_alias(NAME, "champion", _register_good(make_classifier(tmp_path / "v1")))
    downloads = tmp_path / "tmp"
    downloads.mkdir()
    server = start_server(["--model_uri", f"models:/{NAME}@champion", "--model_name", NAME,
                           "--reload_interval_s", "0.3", "--no_drift"], tmp_path / "server.log",
                          env={"MLFLOW_TRACKING_URI": mlflow_server, "TMPDIR": str(downloads)}, model=NAME)

    def failures(reason: str) -> float:
        series = scrape(server).get("pillars_model_reload_failures_total", {})
        return sum(v for k, v in series.items() if dict(k) == {"model": NAME, "reason": reason})

    def served_version() -> str:
        answer = httpx.post(f"{server.http}/v2/models/{NAME}/infer", json=v2_request(toy_rows(2)))
        assert answer.status_code == 200, answer.text
        return answer.json()["model_version"]

    try:
        assert len(list(downloads.glob("pillars-model-*"))) == 1 and served_version() == "1"

        client.set_registered_model_alias(NAME, "champion", _register_broken(tmp_path))  # version 2
        _wait(lambda: failures("load") == 1, "the broken version 2 counted as a load failure")
        time.sleep(1.5)  # five more intervals: not downloaded again
        assert failures("load") == 1 and served_version() == "1"
        assert len(list(downloads.glob("pillars-model-*"))) == 1, list(downloads.glob("pillars-model-*"))

        client.set_registered_model_alias(NAME, "champion", _register_good(make_regressor(tmp_path / "v3")))
        _wait(lambda: failures("schema") == 1, "version 3 (other inputs) refused")
        time.sleep(1.5)
        assert failures("schema") == 1 and served_version() == "1"
        assert len(list(downloads.glob("pillars-model-*"))) == 1, list(downloads.glob("pillars-model-*"))

        good = _register_good(make_classifier(tmp_path / "v4", seed=1))
        client.set_registered_model_alias(NAME, "champion", good)
        _wait(lambda: served_version() == good, f"version {good} swapped in")
        assert len(list(downloads.glob("pillars-model-*"))) == 1, list(downloads.glob("pillars-model-*"))
        log = server.process.log()
        assert "version 3 takes other inputs" in log and "refused" in log
        assert log.count("cannot be served (load)") == 1
    finally:
        server.process.stop()
    assert not list(downloads.glob("pillars-model-*"))  # the served copy is removed when the server stops
