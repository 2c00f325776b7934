"""The retraining trigger: Alertmanager webhooks in, de-duplicated and rate-limited runs out."""

from __future__ import annotations

import shlex
import sys
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pillars.pipelines.trigger import Decider
from tests.processes import ServerProcess, free_port


def _alert(model="digits", status="firing", fingerprint="f1", starts="2026-11-29T10:00:00Z", action="retrain"):
    labels = {"alertname": "PillarsFeatureDrift", "model": model}
    if action:
        labels["pillars_action"] = action
    return {"status": status, "labels": labels, "annotations": {}, "startsAt": starts, "fingerprint": fingerprint}


def test_decider_deduplicates_and_rate_limits_per_model():
    now = [1000.0]
    decider = Decider(cooldown=600, clock=lambda: now[0])
    assert decider.decide(_alert()).action == "started"
    assert decider.decide(_alert()).action == "duplicate"
    assert decider.decide(_alert(fingerprint="f2")).action == "cooldown"
    assert decider.decide(_alert(model="cancer", fingerprint="f3")).action == "started"
    now[0] += 601
    assert decider.decide(_alert(fingerprint="f4")).action == "started"
    assert decider.decide(_alert(status="resolved", fingerprint="f5")).action == "resolved"
    assert decider.decide(_alert(action="", fingerprint="f6")).action == "not_retrainable"
    assert decider.decide(_alert(model="", fingerprint="f7")).action == "not_retrainable"


def test_a_failed_start_can_be_retried():
    decider = Decider(cooldown=600)
    assert decider.decide(_alert()).action == "started"
    decider.forget_start("digits")
    assert decider.decide(_alert(fingerprint="f2")).action == "started"


@pytest.fixture
def trigger(tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    marker = tmp_path / "runs"
    marker.mkdir()
    # The trigger starts this command per run (a real process; stands in for `pillars run retraining`).
    record = f"import sys, pathlib; pathlib.Path({str(marker)!r}, sys.argv[sys.argv.index('--param') + 1]).touch()"
    port = free_port()
    server = ServerProcess(
        [sys.executable, "-m", "pillars.pipelines.cli", "trigger", "--port", str(port), "--token-file", str(token),
         "--cooldown", "3600", "--command", shlex.join([sys.executable, "-c", record])],
        log_path=tmp_path / "trigger.log", env={"PILLARS_HOME": str(tmp_path / ".pillars")})
    url = f"http://127.0.0.1:{port}"
    server.wait_http(f"{url}/healthz", timeout=60)
    yield url, marker, server
    server.stop()


def _post(url, payload, token="s3cret", **kwargs):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{url}/alerts", json=payload, headers=headers, timeout=10, **kwargs)


def test_webhook_starts_one_run_per_model_and_counts_every_decision(trigger):
    url, marker, server = trigger
    payload = {"version": "4", "status": "firing", "alerts": [_alert(), _alert(model="cancer", fingerprint="c1")]}
    first = _post(url, payload)
    assert first.status_code == 200
    assert [d["decision"] for d in first.json()["decisions"]] == ["started", "started"]
    again = _post(url, payload)  # Alertmanager re-sends the group on its repeat interval
    assert [d["decision"] for d in again.json()["decisions"]] == ["duplicate", "duplicate"]
    later = _post(url, {"alerts": [_alert(fingerprint="f9", starts="2026-11-29T11:00:00Z")]})
    assert later.json()["decisions"][0]["decision"] == "cooldown"

    deadline = time.monotonic() + 20
    while len(list(marker.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sorted(p.name for p in marker.iterdir()) == ["model_name=cancer", "model_name=digits"]

    text = httpx.get(f"{url}/metrics", timeout=5).text
    counts = {s.labels["decision"]: s.value for f in text_string_to_metric_families(text)
              if f.name == "pillars_trigger_decisions" for s in f.samples if s.name.endswith("_total")}
    assert counts["started"] == 2 and counts["duplicate"] == 2 and counts["cooldown"] == 1
    assert "s3cret" not in server.log()


@pytest.mark.parametrize("token", [None, "wrong"])
def test_webhook_without_the_token_is_refused(trigger, token):
    url, marker, _ = trigger
    response = _post(url, {"alerts": [_alert()]}, token=token)
    assert response.status_code == 401
    assert list(marker.iterdir()) == []


def test_malformed_payloads_get_400_and_the_trigger_keeps_serving(trigger):
    url, _, _ = trigger
    bad_json = httpx.post(f"{url}/alerts", content=b"{not json", timeout=5,
                          headers={"Authorization": "Bearer s3cret", "Content-Type": "application/json"})
    assert bad_json.status_code == 400 and "not JSON" in bad_json.json()["error"]
    no_alerts = _post(url, {"version": "4"})
    assert no_alerts.status_code == 400 and "'alerts' list" in no_alerts.json()["error"]
    huge = httpx.post(f"{url}/alerts", content=b"x" * (1024 * 1024 + 1), timeout=10,
                      headers={"Authorization": "Bearer s3cret"})
    assert huge.status_code == 413
    assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
