"""`pillars up`'s Prometheus and Alertmanager ask for credentials and answer no cross-origin request;
alerts posted with the credentials reach the trigger, which starts runs only for models with a
champion and never more than its cap at once. Real binaries on loopback, the stack's own MLflow."""

from __future__ import annotations

import os
import shlex
import signal
import stat
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pillars.pipelines.local.stack import WEB_USER, Ports, Stack, Timing, web_auth
from tests.conftest import MLFLOW_SERVER_ENV, require_tool
from tests.pipelines.test_trigger import register_champion
from tests.processes import free_port, group_alive

MODELS = ("auth-a", "auth-b", "auth-c")
EVIL = "http://evil.example"


def _decisions(trigger: str) -> dict[str, float]:
    text = httpx.get(f"{trigger}/metrics", timeout=5).text
    return {s.labels["decision"]: s.value for f in text_string_to_metric_families(text)
            if f.name == "pillars_trigger_decisions" for s in f.samples if s.name.endswith("_total")}


def _until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _alert(model: str) -> dict:
    return {"labels": {"alertname": "PillarsModelDrift", "model": model, "pillars_action": "retrain"}}


def test_alertmanager_and_prometheus_need_the_stack_password_and_the_trigger_caps_what_alerts_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for tool in ("prometheus", "prometheus-alertmanager", "mlflow"):
        require_tool(tool)
    runs = tmp_path / "runs"
    runs.mkdir()
    # Each run records its model and pid, then runs until stopped (a stand-in for `pillars run retraining`).
    record = (f"import os, signal, sys, pathlib; pathlib.Path({str(runs)!r}, sys.argv[sys.argv.index('--param') + 1])"
              ".write_text(str(os.getpid())); signal.pause()")
    monkeypatch.setenv("PILLARS_HOME", str(tmp_path / ".pillars"))
    monkeypatch.setenv("PILLARS_TRIGGER_COMMAND", shlex.join([sys.executable, "-c", record]))
    monkeypatch.setenv("PILLARS_TRIGGER_MAX_ACTIVE_RUNS", "2")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for key, value in MLFLOW_SERVER_ENV.items():
        monkeypatch.setenv(key, value)
    ports = Ports(**{name: free_port() for name in ("mlflow", "trigger", "alertmanager", "prometheus")})
    stack = Stack()
    state = stack.up(MODELS[0], ports, Timing.fast(), console=False,
                     services=("mlflow", "trigger", "alertmanager", "prometheus"))
    pids = list(state["processes"].values())
    urls = state["urls"]
    alertmanager, prometheus = urls["alertmanager"], urls["prometheus"]
    try:
        auth = web_auth(state)
        assert auth is not None and auth[0] == WEB_USER and len(auth[1]) >= 32
        for secret in ("web.password", "web-config.yml", "trigger.token"):
            assert stat.S_IMODE((stack.dir / secret).stat().st_mode) == 0o600, secret
        assert auth[1] not in (stack.dir / "web-config.yml").read_text()  # only its bcrypt hash
        for name in MODELS:
            register_champion(urls["mlflow"], name)

        # Without the password: 401, and no CORS header a browser page could use.
        forged = httpx.post(f"{alertmanager}/api/v2/alerts", json=[_alert(MODELS[0])], headers={"Origin": EVIL})
        assert forged.status_code == 401 and "access-control-allow-origin" not in forged.headers
        legacy = httpx.post(f"{alertmanager}/api/v1/alerts", content='[{"labels": {"a": "b"}}]',
                            headers={"Origin": EVIL, "Content-Type": "text/plain"})
        assert legacy.status_code == 401 and "access-control-allow-origin" not in legacy.headers
        preflight = httpx.options(f"{alertmanager}/api/v2/alerts",
                                  headers={"Origin": EVIL, "Access-Control-Request-Method": "POST"})
        assert preflight.status_code == 401 and "access-control-allow-origin" not in preflight.headers
        assert httpx.get(f"{prometheus}/api/v1/query", params={"query": "up"}).status_code == 401
        assert httpx.post(f"{alertmanager}/api/v2/alerts", json=[], auth=("pillars", "guess")).status_code == 401
        # With it: Prometheus answers, still with no CORS header for any origin.
        query = httpx.get(f"{prometheus}/api/v1/query", params={"query": "up"}, auth=auth, headers={"Origin": EVIL})
        assert query.status_code == 200 and "access-control-allow-origin" not in query.headers
        _until(lambda: httpx.get(f"{prometheus}/api/v1/alertmanagers", auth=auth).json()["data"]["activeAlertmanagers"],
               30, "Prometheus to find its Alertmanager")

        # Alerts posted with the password are routed to the trigger: three models with a champion and
        # a made-up one. Two runs start (the cap), the third is answered 503 and re-sent by Alertmanager,
        # the made-up model is refused.
        accepted = httpx.post(f"{alertmanager}/api/v2/alerts", auth=auth,
                              json=[_alert(m) for m in (*MODELS, "made-up-model")])
        assert accepted.status_code == 200
        trigger = urls["trigger"]
        _until(lambda: {"unknown_model", "busy"} <= {k for k, v in _decisions(trigger).items() if v}, 60,
               "the trigger to refuse the made-up model and hold back the third run")
        assert _decisions(trigger)["started"] == 2
        _until(lambda: len(list(runs.iterdir())) == 2, 60, "the two runs to record themselves")
        started = {p.name.removeprefix("model_name=") for p in runs.iterdir()}
        assert len(started) == 2 and started < set(MODELS)
        # One run ends: the re-sent alert of the third model starts it.
        os.kill(int((runs / f"model_name={sorted(started)[0]}").read_text()), signal.SIGTERM)
        _until(lambda: _decisions(trigger)["started"] == 3, 60, "the held-back run to start")
        _until(lambda: len(list(runs.iterdir())) == 3, 60, "the third run to record itself")
        assert {p.name.removeprefix("model_name=") for p in runs.iterdir()} == set(MODELS)
        assert _decisions(trigger)["started"] == 3
    finally:
        stopped = stack.down()
    assert set(stopped) == set(state["processes"])
    assert not any(group_alive(pid) for pid in pids)  # the runs too: they share the trigger's group
