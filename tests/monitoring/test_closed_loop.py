"""The closed loop on one machine with the real servers: drift -> Prometheus alert -> Alertmanager ->
trigger -> retraining run -> new version -> promoted only when better -> served."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest

from pillars.components import registry
from pillars.components.data.prepare import PrepareParams, prepare
from pillars.components.registry.tracking import configure_tracking
from pillars.pipelines.local.runner import run_local
from pillars.pipelines.local.stack import Ports, Stack, Timing, web_auth
from pillars.pipelines.training import training_pipeline
from tests.conftest import MLFLOW_SERVER_ENV, require_tool
from tests.processes import free_port, group_alive

pytestmark = pytest.mark.slow
MODEL = "loop"


def _send(url: str, rows: np.ndarray, batch: int = 20) -> None:
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch].astype(np.float32)
        body = {"inputs": [{"name": "input-0", "shape": list(chunk.shape), "datatype": "FP32",
                            "data": chunk.ravel().tolist()}]}
        response = httpx.post(f"{url}/v2/models/{MODEL}/infer", json=body, timeout=10)
        assert response.status_code == 200, response.text


def _query(prometheus: str, expr: str, auth: tuple[str, str] | None = None) -> list[dict]:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=5, auth=auth)
    response.raise_for_status()
    return response.json()["data"]["result"]


def _until(check, timeout: float, what: str, step: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def test_drift_triggers_retraining_and_the_better_model_is_promoted_and_served(tmp_path, monkeypatch):
    for tool in ("prometheus", "prometheus-alertmanager", "mlflow"):
        require_tool(tool)
    monkeypatch.setenv("PILLARS_HOME", str(tmp_path / ".pillars"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    configure_tracking()
    # A deliberately under-trained champion, so the retrained model is better and takes over.
    run_local(training_pipeline(), {"task": "breast_cancer", "model_name": MODEL, "epochs": 1,
                                    "learning_rate": 3e-4, "thresholds": '{"accuracy": 0.5}'})
    assert registry.alias_version(MODEL, registry.CHAMPION) == "1"

    data = prepare(PrepareParams(task="breast_cancer"))
    # Every row of the data set once per pass (569 distinct rows): a window of that size measures the
    # training distribution without the sampling noise a few hundred repeated rows would add.
    normal = np.random.default_rng(0).permutation(np.concatenate([s["input-0"] for s in data.splits.values()]))
    ports = Ports(**{name: free_port() for name in ("mlflow", "http", "grpc", "trigger", "alertmanager", "prometheus")})
    for key, value in MLFLOW_SERVER_ENV.items():  # the stack's own mlflow server inherits this environment
        monkeypatch.setenv(key, value)
    stack = Stack()
    # The loop's servers only: the console has tests of its own (tests/console).
    state = stack.up(MODEL, ports, Timing.fast(), params=["epochs=20"], console=False)
    pids = list(state["processes"].values())
    urls = state["urls"]
    auth = web_auth(state)

    def query(expr: str) -> list[dict]:
        return _query(urls["prometheus"], expr, auth)

    try:
        # In-distribution traffic: drift is measured, and stays below the alert's share.
        _send(urls["model_http"], np.concatenate([normal] * 2))
        shares = _until(lambda: query(f'pillars_drift_share{{model="{MODEL}"}}'), 30,
                        "the drift share to be scraped")
        assert float(shares[0]["value"][1]) < 0.5
        time.sleep(6)  # longer than the alert's `for`
        assert not query('ALERTS{alertname="PillarsModelDrift"}')

        # Shifted traffic (every feature x3): drift, the alert, the webhook, a retraining run.
        _send(urls["model_http"], np.concatenate([normal * 3] * 2))
        _until(lambda: query('ALERTS{alertname="PillarsModelDrift",alertstate="firing"}'), 60,
               "PillarsModelDrift to fire")
        metrics = _until(lambda: 'decision="started"} 1.0' in httpx.get(f"{urls['trigger']}/metrics").text, 30,
                         "the trigger to start a run")
        assert metrics
        mlflow = urls["mlflow"]
        configure_tracking(mlflow)
        _until(lambda: len(registry.list_versions(MODEL)) >= 2, 300, "the retrained version", step=2)
        retrained = registry.client().get_model_version(MODEL, "2")
        assert retrained.tags["gate_approved"] == "true", retrained.tags["gate_reasons"]
        _until(lambda: registry.alias_version(MODEL, registry.CHAMPION) == "2", 60, "promotion of version 2")
        # The model server follows the champion.
        _until(lambda: query(f'pillars_drift_window_rows{{model="{MODEL}",version="2"}}'), 60,
               "the server to serve version 2")
    finally:
        stopped = stack.down()
    assert set(stopped) == set(state["processes"])
    assert not any(group_alive(pid) for pid in pids)
