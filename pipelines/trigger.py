"""The retraining trigger: an Alertmanager webhook receiver that starts the retraining pipeline.

Alertmanager POSTs its webhook payload (version 4) to ``/alerts`` with ``Authorization: Bearer
<token>``. A firing alert that carries a ``model`` label and ``pillars_action="retrain"`` starts one
retraining run for that model, unless the same alert was already handled (de-duplication by
fingerprint and start time) or the model is in its cool-down (one run per model per ``cooldown``
seconds). Every decision is logged and counted on ``/metrics``.

Runs start locally (``pillars run retraining`` as a process of its own, through kfp.local) or on a
cluster (``kfp.Client``, a run in the configured experiment).
"""

from __future__ import annotations

import argparse
import dataclasses
import hmac
import logging
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from pillars.components.settings import Settings
from pillars.pipelines.compile import compile_pipeline, parse_params, pipeline_factory

logger = logging.getLogger("pillars.trigger")

ACTION_LABEL = "pillars_action"
RETRAIN = "retrain"
MAX_BODY_BYTES = 1024 * 1024
DECISIONS = ("started", "duplicate", "cooldown", "resolved", "not_retrainable", "failed")


@dataclasses.dataclass(frozen=True)
class Decision:
    """What the trigger did with one alert, and why."""

    model: str
    action: str
    reason: str


class Metrics:
    """The trigger's own metrics, in a registry of its own (one per trigger)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.alerts = Counter("pillars_trigger_alerts_received_total", "Alerts received in webhook calls.",
                              registry=self.registry)
        self.decisions = Counter("pillars_trigger_decisions_total", "Decisions on received alerts.",
                                 ["decision"], registry=self.registry)
        self.last_run = Gauge("pillars_trigger_last_run_timestamp_seconds",
                              "When the last retraining run was started, per model.", ["model"],
                              registry=self.registry)
        for decision in DECISIONS:
            self.decisions.labels(decision)


class Decider:
    """De-duplication and per-model cool-down; thread-safe; time is injectable for tests."""

    def __init__(self, cooldown: float, clock: Callable[[], float] = time.time, memory: int = 10_000) -> None:
        self.cooldown = cooldown
        self.clock = clock
        self.memory = memory
        self._seen: dict[tuple[str, str], float] = {}
        self._last_start: dict[str, float] = {}
        self._lock = threading.Lock()

    def decide(self, alert: Mapping[str, Any]) -> Decision:
        """Whether ``alert`` (one entry of the webhook's ``alerts``) should start a run."""
        labels = alert.get("labels") or {}
        model = str(labels.get("model", ""))
        if alert.get("status") != "firing":
            return Decision(model, "resolved", "alert is not firing")
        if not model or labels.get(ACTION_LABEL) != RETRAIN:
            return Decision(model, "not_retrainable", f"needs a model label and {ACTION_LABEL}={RETRAIN}")
        key = (str(alert.get("fingerprint", "")), str(alert.get("startsAt", "")))
        now = self.clock()
        with self._lock:
            if key[0] and key in self._seen:
                return Decision(model, "duplicate", f"alert {key[0]} since {key[1]} already handled")
            last = self._last_start.get(model)
            if last is not None and now - last < self.cooldown:
                self._remember(key, now)
                return Decision(model, "cooldown", f"last run {now - last:.0f}s ago; cool-down {self.cooldown:.0f}s")
            self._remember(key, now)
            self._last_start[model] = now
        return Decision(model, "started", f"{labels.get('alertname', 'alert')} firing")

    def forget_start(self, model: str) -> None:
        """A run failed to start: let the next alert try again."""
        with self._lock:
            self._last_start.pop(model, None)

    def _remember(self, key: tuple[str, str], now: float) -> None:
        if key[0]:
            self._seen[key] = now
            if len(self._seen) > self.memory:
                for old in sorted(self._seen, key=self._seen.get)[: len(self._seen) - self.memory]:
                    del self._seen[old]


Starter = Callable[[str], str]
"""Starts a retraining run for a model; returns a run reference (process id, KFP run id)."""


def local_starter(params: Sequence[str], log_dir: Path, command: Sequence[str] | None = None) -> Starter:
    """Starts ``pillars run retraining --param model_name=M`` (plus ``params``) as a child process."""
    base = list(command) if command else [sys.executable, "-m", "pillars.pipelines.cli", "run", "retraining"]

    def start(model: str) -> str:
        log_dir.mkdir(parents=True, exist_ok=True)
        log = open(log_dir / f"retrain-{model}-{int(time.time())}.log", "wb")
        args = [*base, "--param", f"model_name={model}", *[a for p in params for a in ("--param", p)]]
        # Same process group as the trigger: stopping the trigger's group (`pillars down`) stops its runs.
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return f"pid {proc.pid}"

    return start


def kfp_starter(host: str, experiment: str, params: Sequence[str], namespace: str | None = None,
                service_account: str | None = None) -> Starter:
    """Starts a run of the compiled retraining pipeline on a Kubeflow Pipelines cluster."""

    def start(model: str) -> str:
        import tempfile

        import kfp

        arguments = {**parse_params(params, pipeline_factory("retraining")()), "model_name": model}
        with tempfile.TemporaryDirectory() as tmp:
            package = compile_pipeline("retraining", f"{tmp}/retraining.yaml")
            client = kfp.Client(host=host, namespace=namespace)
            run = client.create_run_from_pipeline_package(package, arguments=arguments, experiment_name=experiment,
                                                          run_name=f"retrain-{model}", namespace=namespace,
                                                          enable_caching=False, service_account=service_account)
        return f"kfp run {run.run_id}"

    return start


def create_app(token: str, decider: Decider, start: Starter, metrics: Metrics | None = None) -> FastAPI:
    """The FastAPI app: ``POST /alerts`` (bearer token), ``GET /healthz``, ``GET /metrics``."""
    if not token:
        raise ValueError("the trigger needs a bearer token (--token-file or PILLARS_TRIGGER_TOKEN)")
    metrics = metrics or Metrics()
    expected = f"Bearer {token}".encode()
    app = FastAPI(title="pillars trigger", docs_url=None, redoc_url=None)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    def prometheus() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/alerts")
    async def alerts(request: Request) -> JSONResponse:
        given = request.headers.get("authorization", "").encode("latin-1", "replace")
        if not hmac.compare_digest(given.strip(), expected):
            return JSONResponse({"error": "missing or invalid bearer token"}, status_code=401)
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return JSONResponse({"error": f"body over {MAX_BODY_BYTES} bytes"}, status_code=413)
        try:
            payload = await request.json()
        except ValueError:
            return JSONResponse({"error": "body is not JSON"}, status_code=400)
        if not isinstance(payload, dict) or not isinstance(payload.get("alerts"), list):
            return JSONResponse({"error": "expected an Alertmanager webhook payload with an 'alerts' list"},
                                status_code=400)
        results = []
        for alert in payload["alerts"]:
            metrics.alerts.inc()
            decision = decider.decide(alert if isinstance(alert, dict) else {})
            detail = decision.reason
            if decision.action == "started":
                try:
                    detail = f"{decision.reason}; {start(decision.model)}"
                    metrics.last_run.labels(decision.model).set_to_current_time()
                except Exception as e:  # a failed start is reported and counted, and may be retried
                    decider.forget_start(decision.model)
                    decision = Decision(decision.model, "failed", f"{type(e).__name__}: {e}")
                    detail = decision.reason
            metrics.decisions.labels(decision.action).inc()
            logger.info("alert for model %r: %s (%s)", decision.model, decision.action, detail)
            results.append({"model": decision.model, "decision": decision.action, "reason": detail})
        return JSONResponse({"decisions": results})

    return app


def read_token(token_file: str | None) -> str:
    """The bearer token from ``token_file``, else ``PILLARS_TRIGGER_TOKEN``."""
    if token_file:
        try:
            return Path(token_file).read_text().strip()
        except OSError as e:
            raise ValueError(f"cannot read the token file {token_file}: {e.strerror}") from e
    return os.environ.get("PILLARS_TRIGGER_TOKEN", "").strip()


def main(argv: Sequence[str] | None = None) -> int:
    """``pillars trigger``: serve the webhook receiver until stopped."""
    import uvicorn

    parser = argparse.ArgumentParser(prog="pillars trigger", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9095)
    parser.add_argument("--token-file", help="file holding the shared bearer token (else PILLARS_TRIGGER_TOKEN)")
    parser.add_argument("--cooldown", type=float, default=3600.0, help="seconds between runs per model")
    parser.add_argument("--kfp-host", help="start runs on this KFP API instead of locally")
    parser.add_argument("--experiment", default="pillars-retraining")
    parser.add_argument("--namespace", default=None)
    parser.add_argument("--service-account", default=None,
                        help="service account of the runs (the chart's pillars-pipeline-runner: deploy, TrainJobs)")
    parser.add_argument("--param", action="append", default=[], metavar="K=V", help="retraining parameter")
    parser.add_argument("--command", help="local command line to run instead of `pillars run retraining` "
                                           "(the --param arguments are appended)")
    args = parser.parse_args(argv)
    token = read_token(args.token_file)
    if args.kfp_host:
        start = kfp_starter(args.kfp_host, args.experiment, args.param, args.namespace, args.service_account)
    else:
        command = shlex.split(args.command) if args.command else None
        start = local_starter(args.param, Settings().resolved_home() / "trigger-runs", command)
    app = create_app(token, Decider(args.cooldown), start)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
