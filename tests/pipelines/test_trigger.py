"""The retraining trigger: Alertmanager webhooks in, de-duplicated and rate-limited runs out."""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.server
import json
import re
import shlex
import statistics
import sys
import threading
import time

import httpx
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from mlflow.tracking import MlflowClient

from pillars.components.registry import CHAMPION
from pillars.pipelines.parameters import cluster_options
from pillars.pipelines.trigger.app import create_app
from pillars.pipelines.trigger.decide import Decider
from pillars.pipelines.trigger.runs import StartedRun, kfp_starter, log_file_name, registry_champions
from pillars.pipelines.trigger.serve import parse_args
from tests.processes import ServerProcess, free_port


def _alert(model="digits", status="firing", fingerprint="f1", starts="2026-11-29T10:00:00Z", action="retrain"):
    labels = {"alertname": "PillarsFeatureDrift", "model": model}
    if action:
        labels["pillars_action"] = action
    return {"status": status, "labels": labels, "annotations": {}, "startsAt": starts, "fingerprint": fingerprint}


def test_the_decision_names_the_signal_and_the_features_that_fired_it():
    alert = _alert()
    alert["labels"] |= {"alertname": "PillarsModelDrift", "signal": "weighted_drift"}
    alert["annotations"] = {"description": "41% of the model's reliance (feature importance at training) is on drifted "
                                           "features: worst texture  mean radius ; retraining is requested."}
    reason = Decider(cooldown=600).decide(alert).reason
    assert reason.startswith("PillarsModelDrift firing (signal weighted_drift): 41% of the model's reliance")
    assert "worst texture mean radius" in reason
    assert Decider(cooldown=600).decide(_alert()).reason == "PillarsFeatureDrift firing"


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


@pytest.mark.parametrize("label", ["a/b", "a b/../../x", " digits", "digits@champion", "x" * 300, "a\nb", ".."])
def test_a_model_label_that_is_no_model_name_is_invalid_and_remembered_nowhere(label):
    decider = Decider(cooldown=600)
    decision = decider.decide(_alert(model=label))
    assert decision.action == "invalid" and "invalid model name" in decision.reason
    assert decider.sizes() == (0, 0)


@pytest.mark.parametrize("model", ["a/b c", "..", "x" * 300, "digits", "a\u00e9 b"])
def test_run_log_file_names_use_safe_characters_only(model):
    name = log_file_name(model, 1e9)
    assert re.fullmatch(r"retrain-[A-Za-z0-9._-]{0,60}-[0-9a-f]{8}-1000000000\.log", name), name
    assert not name.startswith(".") and "/" not in name


def test_a_failed_start_can_be_retried():
    decider = Decider(cooldown=600)
    assert decider.decide(_alert()).action == "started"
    decider.forget_start("digits")
    assert decider.decide(_alert(fingerprint="f2")).action == "started"


TRAINED = ("trg-digits", "trg-cancer")
"""Models the trigger tests register with a champion (in the session's MLflow server)."""


def register_champion(tracking_uri: str, name: str) -> None:
    """A registered model ``name`` whose champion alias points at a version (no training: the trigger
    only reads the alias)."""
    client = MlflowClient(tracking_uri=tracking_uri)
    if client.search_registered_models(filter_string=f"name = '{name}'"):
        return
    client.create_registered_model(name)
    with mlflow_run(tracking_uri) as run_id:
        version = client.create_model_version(name, f"runs:/{run_id}/model", run_id=run_id)
    client.set_registered_model_alias(name, CHAMPION, version.version)


@contextlib.contextmanager
def mlflow_run(tracking_uri: str):
    client = MlflowClient(tracking_uri=tracking_uri)
    run = client.create_run(client.get_experiment_by_name("Default").experiment_id)
    yield run.info.run_id
    client.set_terminated(run.info.run_id)


@pytest.fixture
def trigger(tmp_path, mlflow_server):
    for name in TRAINED:
        register_champion(mlflow_server, name)
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    marker = tmp_path / "runs"
    marker.mkdir()
    # The trigger starts this command per run (a real process; stands in for `pillars run retraining`).
    record = (f"import json, sys, pathlib; pathlib.Path({str(marker)!r}, sys.argv[sys.argv.index('--param') + 1])"
              ".write_text(json.dumps(sys.argv[1:]))")
    port = free_port()
    server = ServerProcess(
        [sys.executable, "-m", "pillars.pipelines.cli", "trigger", "--port", str(port), "--token-file", str(token),
         "--cooldown", "3600", "--command", shlex.join([sys.executable, "-c", record]),
         "--param", f"tracking_uri={mlflow_server}"],
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
    digits, cancer = TRAINED
    payload = {"version": "4", "status": "firing", "alerts": [_alert(digits), _alert(model=cancer, fingerprint="c1")]}
    first = _post(url, payload)
    assert first.status_code == 200
    assert [d["decision"] for d in first.json()["decisions"]] == ["started", "started"]
    again = _post(url, payload)  # Alertmanager re-sends the group on its repeat interval
    assert [d["decision"] for d in again.json()["decisions"]] == ["duplicate", "duplicate"]
    later = _post(url, {"alerts": [_alert(digits, fingerprint="f9", starts="2026-11-29T11:00:00Z")]})
    assert later.json()["decisions"][0]["decision"] == "cooldown"

    deadline = time.monotonic() + 20
    while len(list(marker.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sorted(p.name for p in marker.iterdir()) == [f"model_name={cancer}", f"model_name={digits}"]
    argv = json.loads((marker / f"model_name={digits}").read_text())  # the run is told why it started, last
    assert argv[-2:] == ["--param", "reason=PillarsFeatureDrift firing"]

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


def test_malformed_payloads_get_400_refused_alerts_422_and_the_trigger_keeps_serving(trigger):
    url, marker, server = trigger
    bad_json = httpx.post(f"{url}/alerts", content=b"{not json", timeout=5,
                          headers={"Authorization": "Bearer s3cret", "Content-Type": "application/json"})
    assert bad_json.status_code == 400 and "not JSON" in bad_json.json()["error"]
    no_alerts = _post(url, {"version": "4"})
    assert no_alerts.status_code == 400 and "'alerts' list" in no_alerts.json()["error"]
    huge = httpx.post(f"{url}/alerts", content=b"x" * (1024 * 1024 + 1), timeout=10,
                      headers={"Authorization": "Bearer s3cret"})
    assert huge.status_code == 413
    assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200

    # Unknown models and labels that are no model name: refused for good, nothing started.
    made_up = [_alert(model=f"made-up-{i}", fingerprint=f"m{i}") for i in range(5)]
    bad = [_alert(model=label, fingerprint=f"b{i}") for i, label in enumerate(["a/b", " digits", "../etc"])]
    response = _post(url, {"alerts": made_up + bad})
    assert response.status_code == 422  # a 4xx: Alertmanager does not retry it
    assert [d["decision"] for d in response.json()["decisions"]] == ["unknown_model"] * 5 + ["invalid"] * 3
    # A refused alert next to a good one: the good one starts; the call still says something was refused.
    mixed = _post(url, {"alerts": [_alert(model="a/b", fingerprint="b9"), _alert(TRAINED[0], fingerprint="g1")]})
    assert mixed.status_code == 422
    assert [d["decision"] for d in mixed.json()["decisions"]] == ["invalid", "started"]
    deadline = time.monotonic() + 20
    while not list(marker.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [p.name for p in marker.iterdir()] == [f"model_name={TRAINED[0]}"]
    assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    (log,) = (p for p in (server.log_path.parent / ".pillars" / "trigger-runs").iterdir())
    assert log.name.startswith(f"retrain-{TRAINED[0]}-")


def test_an_alert_answered_cooldown_starts_a_run_when_resent_after_the_cooldown():
    now = [1000.0]
    decider = Decider(cooldown=600, clock=lambda: now[0])
    assert decider.decide(_alert(fingerprint="a")).action == "started"
    assert decider.decide(_alert(fingerprint="b")).action == "cooldown"
    now[0] += 601
    assert decider.decide(_alert(fingerprint="b")).action == "started"  # not "duplicate"
    assert decider.decide(_alert(fingerprint="b")).action == "duplicate"


def test_the_trigger_remembers_a_bounded_number_of_alerts_and_models():
    now = [0.0]
    decider = Decider(cooldown=10, clock=lambda: now[0], memory=50)
    for i in range(1000):
        now[0] += 1
        assert decider.decide(_alert(model=f"m{i}", fingerprint=f"f{i}")).action == "started"
    seen, models = decider.sizes()
    assert seen == 50 and models <= 10  # models past their cool-down are forgotten


class _Starter:
    """Starts nothing; fails the first ``failures`` calls; takes ``delay`` seconds per start. Its runs
    count as running until :meth:`finish`."""

    def __init__(self, failures=0, delay=0.0):
        self.failures, self.delay, self.started, self.reasons = failures, delay, [], []
        self.finished = threading.Event()

    def __call__(self, model, reason):
        time.sleep(self.delay)
        if self.failures:
            self.failures -= 1
            raise RuntimeError("KFP API unreachable")
        self.started.append(model)
        self.reasons.append(reason)
        finished = self.finished
        return StartedRun(f"run {len(self.started)}", lambda: not finished.is_set())

    def finish(self):
        """The runs started so far end; later ones run until the next call."""
        self.finished.set()
        self.finished = threading.Event()


def _known(model):
    """Every model has a champion (the registry look-up itself is tested against a real MLflow server)."""
    return True


def _app(starter, champions=_known, **kwargs):
    kwargs.setdefault("max_active_runs", 10)
    return create_app("s3cret", Decider(cooldown=3600), starter, champions, **kwargs)


@pytest.fixture
def serve():
    """Serves a trigger app in-process on a real loopback socket; yields a function of the app giving its URL."""
    servers = []

    def run(app):
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        return f"http://127.0.0.1:{port}"

    yield run
    for server, thread in servers:
        server.should_exit = True
        thread.join(10)
        assert not thread.is_alive()


def test_a_failed_start_is_answered_503_and_the_resent_alert_starts_a_run(serve):
    starter = _Starter(failures=1)
    url = serve(_app(starter))
    first = _post(url, {"alerts": [_alert()]})
    assert first.status_code == 503  # Alertmanager retries 5xx
    assert first.json()["decisions"][0]["decision"] == "failed"
    again = _post(url, {"alerts": [_alert()]})  # the same alert, re-sent
    assert again.status_code == 200 and again.json()["decisions"][0]["decision"] == "started"
    assert starter.started == ["digits"]


def test_runs_per_call_are_capped_and_the_rest_answered_503(serve):
    starter = _Starter()
    url = serve(_app(starter, max_runs_per_call=2))
    payload = {"alerts": [_alert(model=m, fingerprint=m) for m in ("a", "b", "c")]}
    first = _post(url, payload)
    assert first.status_code == 503
    assert [d["decision"] for d in first.json()["decisions"]] == ["started", "started", "limited"]
    again = _post(url, payload)
    assert again.status_code == 200
    assert [d["decision"] for d in again.json()["decisions"]] == ["duplicate", "duplicate", "started"]
    assert starter.started == ["a", "b", "c"]


def test_healthz_answers_fast_while_a_slow_start_runs(serve):
    starter = _Starter(delay=3.0)
    url = serve(_app(starter))

    def probe(client):
        began = time.perf_counter()
        assert client.get(f"{url}/healthz").status_code == 200
        return time.perf_counter() - began

    with httpx.Client(timeout=10) as client, concurrent.futures.ThreadPoolExecutor(1) as pool:
        idle = statistics.median(probe(client) for _ in range(10))  # this machine's latency with nothing running
        webhook = pool.submit(_post, url, {"alerts": [_alert()]})
        time.sleep(0.5)  # the start is under way
        latencies = []
        while not webhook.done():
            latencies.append(probe(client))
            time.sleep(0.1)
        assert webhook.result().json()["decisions"][0]["decision"] == "started"
    assert len(latencies) >= 5, latencies  # probed all through the 3 s start
    # Blocking the event loop would hold every probe until the start ends (up to 2.5 s); a loaded
    # CI machine gets slack over its idle latency, but never the start's duration.
    assert statistics.median(latencies) < max(0.1, 3 * idle) and max(latencies) < 1.0, (idle, latencies)


def test_concurrent_runs_are_capped_across_calls_and_the_rest_answered_503(serve):
    starter = _Starter()
    url = serve(_app(starter, max_active_runs=3))
    calls = [{"alerts": [_alert(model=f"m{c}-{i}", fingerprint=f"{c}-{i}") for i in range(5)]} for c in range(10)]
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda payload: _post(url, payload), calls))
    decisions = [d["decision"] for a in answers for d in a.json()["decisions"]]
    assert decisions.count("started") == 3 and decisions.count("busy") == 47
    assert len(starter.started) == 3
    assert sum(a.status_code == 503 for a in answers) >= 8  # every call with a busy alert: Alertmanager retries
    again = _post(url, calls[9])
    assert again.status_code == 503 and len(starter.started) == 3  # still running: still busy
    starter.finish()  # the runs end: re-sent alerts start again, up to the cap
    resent = _post(url, {"alerts": [_alert(model=f"n{i}", fingerprint=f"n{i}") for i in range(5)]})
    assert [d["decision"] for d in resent.json()["decisions"]].count("started") == 3


def test_made_up_model_names_start_nothing(serve, mlflow_server):
    starter = _Starter()
    url = serve(_app(starter, champions=registry_champions(mlflow_server)))
    calls = [{"alerts": [_alert(model=f"made-up-{c}-{i}", fingerprint=f"{c}-{i}") for i in range(5)]} for c in range(10)]
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda payload: _post(url, payload), calls))
    assert {a.status_code for a in answers} == {422}
    assert {d["decision"] for a in answers for d in a.json()["decisions"]} == {"unknown_model"}
    assert starter.started == []


def test_an_unreachable_registry_is_answered_503_and_starts_nothing(serve, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail at once instead of backing off for minutes
    starter = _Starter()
    url = serve(_app(starter, champions=registry_champions(f"http://127.0.0.1:{free_port()}")))
    response = _post(url, {"alerts": [_alert()]})
    assert response.status_code == 503
    (decision,) = response.json()["decisions"]
    assert decision["decision"] == "unavailable" and "RegistryUnavailable" in decision["reason"]
    assert starter.started == []


def test_a_registry_that_does_not_answer_in_time_is_answered_503(serve):
    release = threading.Event()

    def hanging(model):
        release.wait(30)
        return True

    starter = _Starter()
    url = serve(_app(starter, champions=hanging, registry_timeout=0.5))
    try:
        response = _post(url, {"alerts": [_alert()]})
    finally:
        release.set()
    assert response.status_code == 503 and response.json()["decisions"][0]["decision"] == "unavailable"
    assert starter.started == []


class _KfpApi(http.server.BaseHTTPRequestHandler):
    """The few KFP v2beta1 API calls a run submission makes; keeps every run request it receives."""

    runs: list = []
    state = "RUNNING"

    def _answer(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 (http.server's naming)
        experiment = {"experiment_id": "e1", "display_name": "pillars-retraining"}
        if "/experiments" in self.path:
            self._answer({"experiments": [experiment], "total_size": 1})
        elif self.path.startswith("/apis/v2beta1/runs/"):
            self._answer({"run_id": self.path.rsplit("/", 1)[1], "experiment_id": "e1", "state": type(self).state})
        else:
            self._answer({})

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        if self.path.startswith("/apis/v2beta1/runs"):
            type(self).runs.append(body)
            self._answer({"run_id": f"r{len(self.runs)}", "display_name": body.get("display_name", ""),
                          "experiment_id": "e1"})
        else:
            self._answer({"experiment_id": "e1", "display_name": body.get("display_name", "")})

    def log_message(self, *args):
        pass


@pytest.fixture
def kfp_api():
    _KfpApi.runs = []
    _KfpApi.state = "RUNNING"
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _KfpApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _KfpApi.runs
    server.shutdown()
    server.server_close()
    thread.join(10)


def test_the_run_the_trigger_submits_carries_the_cluster_options(kfp_api):
    url, runs = kfp_api
    args = parse_args(["--kfp-host", url, "--s3-secret", "pillars-s3", "--checkpoint-pvc", "pillars-ckpt",
                       "--deploy-namespace", "models", "--canary", "10", "--gpus", "1", "--param", "epochs=3"])
    start = kfp_starter(args.kfp_host, args.experiment, args.param, cluster_options=cluster_options(args))
    run_ref = start("digits", "kfp starter test")
    assert run_ref.ref == "kfp run r1"
    assert run_ref.running()  # counts against max_active_runs until KFP says it ended
    _KfpApi.state = "SUCCEEDED"
    assert not run_ref.running()
    (run,) = runs
    assert run["runtime_config"]["parameters"] == {"epochs": 3, "model_name": "digits", "reason": "kfp starter test"}
    executors = run["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert sum("secretAsEnv" in e for e in executors.values()) >= 6  # every step reads the S3 credentials
    assert "pillars-s3" in json.dumps(executors) and "pillars-ckpt" in json.dumps(executors)
    text = json.dumps(run["pipeline_spec"])
    assert "deploy: canary 10%" in text and "nvidia.com/gpu" in text
    with pytest.raises(ValueError, match="canary percent"):
        parse_args(["--canary", "100"])


def test_cluster_options_come_from_flags_or_the_environment(monkeypatch):
    monkeypatch.setenv("PILLARS_TRIGGER_S3_SECRET", "from-env")
    monkeypatch.setenv("PILLARS_TRIGGER_GPUS", "2")
    options = cluster_options(parse_args(["--checkpoint-pvc", "ckpt"]))
    assert (options["s3_secret"], options["gpus"], options["checkpoint_pvc"]) == ("from-env", 2, "ckpt")
    assert cluster_options(parse_args(["--s3-secret", "flag"]))["s3_secret"] == "flag"
    monkeypatch.setenv("PILLARS_TRIGGER_GPUS", "two")
    with pytest.raises(ValueError, match="PILLARS_TRIGGER_GPUS must be int, got 'two'"):
        parse_args([])
