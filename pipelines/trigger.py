"""The retraining trigger: an Alertmanager webhook receiver that starts the retraining pipeline.

Alertmanager POSTs its webhook payload (version 4) to ``/alerts`` with ``Authorization: Bearer
<token>``. A firing alert that carries a ``model`` label and ``pillars_action="retrain"`` starts one
retraining run for that model, unless the same alert already started one (de-duplication by
fingerprint and start time) or the model is in its cool-down (one run per model per ``cooldown``
seconds). Only a started run marks an alert as handled: an alert answered ``cooldown``, or whose
start failed, starts a run when re-sent later. A call with a failed start, or with more runs to
start than ``max_runs_per_call``, is answered 503 so Alertmanager sends it again. Runs start on a
small thread pool, off the event loop. Every decision is logged and counted on ``/metrics``.

Runs start locally (``pillars run retraining`` as a process of its own, through kfp.local) or on a
cluster (``kfp.Client``, a run in the configured experiment, compiled with the same cluster options
as ``pillars compile``/``submit``: ``--gpus``, ``--s3-secret``, ``--checkpoint-pvc``, ...).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hmac
import logging
import os
import shlex
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from pydantic_settings import BaseSettings, SettingsConfigDict

from pillars.components.settings import Settings
from pillars.pipelines.compile import compile_pipeline, parse_params, pipeline_factory
from pillars.pipelines.training import ClusterOptions

logger = logging.getLogger("pillars.trigger")

ACTION_LABEL = "pillars_action"
RETRAIN = "retrain"
MAX_BODY_BYTES = 1024 * 1024
DECISIONS = ("started", "duplicate", "cooldown", "resolved", "not_retrainable", "failed", "limited")
RETRY = ("failed", "limited")
"""Decisions that make the call answer 503, so Alertmanager sends the alerts again."""


class TriggerSettings(BaseSettings):
    """The trigger's settings, from ``PILLARS_TRIGGER_*`` variables (flags override them)."""

    model_config = SettingsConfigDict(env_prefix="PILLARS_TRIGGER_", extra="ignore")

    cooldown: float = 3600.0
    """Seconds between two runs for one model."""

    max_runs_per_call: int = 5
    """Runs one webhook call may start; the rest are answered 503 (Alertmanager re-sends them)."""

    start_workers: int = 2
    """Threads that start runs (compile and submit, or spawn), off the event loop."""

    memory: int = 10_000
    """Alerts and models remembered for de-duplication and cool-down (oldest forgotten first)."""


@dataclasses.dataclass(frozen=True)
class Decision:
    """What the trigger did with one alert, and why (``key``: the alert's fingerprint and start)."""

    model: str
    action: str
    reason: str
    key: tuple[str, str] = ("", "")


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
    """De-duplication and per-model cool-down; thread-safe; bounded memory; time injectable for tests.

    ``decide`` reserves a ``started`` alert (its key and the model's start time) at once, so a second
    copy arriving while the first starts is a duplicate; :meth:`forget_start` drops the reservation
    when the start fails or is not attempted.
    """

    def __init__(self, cooldown: float, clock: Callable[[], float] = time.time, memory: int = 10_000) -> None:
        self.cooldown = cooldown
        self.clock = clock
        self.memory = memory
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._last_start: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def decide(self, alert: Mapping[str, Any]) -> Decision:
        """Whether ``alert`` (one entry of the webhook's ``alerts``) should start a run."""
        labels = alert.get("labels") or {}
        if not isinstance(labels, Mapping):
            labels = {}
        model = str(labels.get("model", ""))
        if alert.get("status") != "firing":
            return Decision(model, "resolved", "alert is not firing")
        if not model or labels.get(ACTION_LABEL) != RETRAIN:
            return Decision(model, "not_retrainable", f"needs a model label and {ACTION_LABEL}={RETRAIN}")
        key = (str(alert.get("fingerprint", "")), str(alert.get("startsAt", "")))
        now = self.clock()
        with self._lock:
            if key[0] and key in self._seen:
                return Decision(model, "duplicate", f"alert {key[0]} since {key[1]} already started a run", key)
            last = self._last_start.get(model)
            if last is not None and now - last < self.cooldown:
                return Decision(model, "cooldown", f"last run {now - last:.0f}s ago; cool-down {self.cooldown:.0f}s",
                                key)
            if key[0]:
                self._seen[key] = now
                self._seen.move_to_end(key)
            self._last_start[model] = now
            self._last_start.move_to_end(model)
            self._bound(now)
        return Decision(model, "started", f"{labels.get('alertname', 'alert')} firing", key)

    def forget_start(self, model: str, key: tuple[str, str] = ("", "")) -> None:
        """A run failed to start (or was not attempted): the next copy of the alert may try again."""
        with self._lock:
            self._last_start.pop(model, None)
            self._seen.pop(key, None)

    def sizes(self) -> tuple[int, int]:
        """How many alerts and models are remembered."""
        with self._lock:
            return len(self._seen), len(self._last_start)

    def _bound(self, now: float) -> None:
        while self._last_start and now - next(iter(self._last_start.values())) >= self.cooldown:
            self._last_start.popitem(last=False)  # past its cool-down: nothing left to remember
        for memory in (self._seen, self._last_start):
            while len(memory) > self.memory:
                memory.popitem(last=False)


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


def compile_retraining(output: str, params: Sequence[str], model: str,
                       cluster_options: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """Compile the retraining pipeline with ``cluster_options`` to ``output``; returns the package and the
    run's arguments (``params`` plus ``model_name``)."""
    arguments = {**parse_params(params, pipeline_factory("retraining")(**cluster_options)), "model_name": model}
    return compile_pipeline("retraining", output, **cluster_options), arguments


def kfp_starter(host: str, experiment: str, params: Sequence[str], namespace: str | None = None,
                service_account: str | None = None, cluster_options: Mapping[str, Any] | None = None) -> Starter:
    """Starts a run of the retraining pipeline, compiled with ``cluster_options`` (the fields of
    :class:`pillars.pipelines.training.ClusterOptions`), on a Kubeflow Pipelines cluster."""
    options = dict(cluster_options or {})

    def start(model: str) -> str:
        import tempfile

        import kfp

        with tempfile.TemporaryDirectory() as tmp:
            package, arguments = compile_retraining(f"{tmp}/retraining.yaml", params, model, options)
            client = kfp.Client(host=host, namespace=namespace)
            run = client.create_run_from_pipeline_package(package, arguments=arguments, experiment_name=experiment,
                                                          run_name=f"retrain-{model}", namespace=namespace,
                                                          enable_caching=False, service_account=service_account)
        return f"kfp run {run.run_id}"

    return start


def create_app(token: str, decider: Decider, start: Starter, metrics: Metrics | None = None,
               max_runs_per_call: int = 5, start_workers: int = 2) -> FastAPI:
    """The FastAPI app: ``POST /alerts`` (bearer token), ``GET /healthz``, ``GET /metrics``.

    Runs start on ``start_workers`` threads, at most ``max_runs_per_call`` per webhook call.
    """
    if not token:
        raise ValueError("the trigger needs a bearer token (--token-file or PILLARS_TRIGGER_TOKEN)")
    if max_runs_per_call < 1 or start_workers < 1:
        raise ValueError(f"max_runs_per_call and start_workers must be >= 1, got {max_runs_per_call}, "
                         f"{start_workers}")
    metrics = metrics or Metrics()
    expected = f"Bearer {token}".encode()
    starters = ThreadPoolExecutor(max_workers=start_workers, thread_name_prefix="pillars-trigger-start")
    app = FastAPI(title="pillars trigger", docs_url=None, redoc_url=None)
    app.router.on_shutdown.append(lambda: starters.shutdown(wait=False, cancel_futures=True))

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    def prometheus() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def handle(alert: Any, started: int) -> Decision:
        decision = decider.decide(alert if isinstance(alert, dict) else {})
        if decision.action != "started":
            return decision
        if started >= max_runs_per_call:
            decider.forget_start(decision.model, decision.key)
            return Decision(decision.model, "limited", f"over {max_runs_per_call} runs in one call; send it again",
                            decision.key)
        try:
            ref = await asyncio.get_running_loop().run_in_executor(starters, start, decision.model)
        except Exception as e:  # a failed start is reported, counted and answered 503: Alertmanager retries
            decider.forget_start(decision.model, decision.key)
            return Decision(decision.model, "failed", f"{type(e).__name__}: {e}", decision.key)
        metrics.last_run.labels(decision.model).set_to_current_time()
        return Decision(decision.model, "started", f"{decision.reason}; {ref}", decision.key)

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
        results, started = [], 0
        for alert in payload["alerts"]:
            metrics.alerts.inc()
            decision = await handle(alert, started)
            started += decision.action == "started"
            metrics.decisions.labels(decision.action).inc()
            logger.info("alert for model %r: %s (%s)", decision.model, decision.action, decision.reason)
            results.append({"model": decision.model, "decision": decision.action, "reason": decision.reason})
        retry = any(r["decision"] in RETRY for r in results)
        return JSONResponse({"decisions": results}, status_code=503 if retry else 200)

    return app


def read_token(token_file: str | None) -> str:
    """The bearer token from ``token_file``, else ``PILLARS_TRIGGER_TOKEN``."""
    if token_file:
        try:
            return Path(token_file).read_text().strip()
        except OSError as e:
            raise ValueError(f"cannot read the token file {token_file}: {e.strerror}") from e
    return os.environ.get("PILLARS_TRIGGER_TOKEN", "").strip()


def _cluster_flags(parser: argparse.ArgumentParser) -> None:
    """The fields of :class:`ClusterOptions` as flags (``--s3-secret``...), defaults from ``PILLARS_TRIGGER_*``."""
    group = parser.add_argument_group("cluster options of the compiled retraining pipeline (with --kfp-host)")
    for field in dataclasses.fields(ClusterOptions):
        if field.name == "cache_data":
            continue  # retraining never caches its data step
        fallback = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        kind, variable = type(fallback), f"PILLARS_TRIGGER_{field.name.upper()}"
        env = os.environ.get(variable)
        try:
            default = kind(env) if env else fallback
        except ValueError as e:
            raise ValueError(f"{variable} must be {kind.__name__}, got {env!r}") from e
        flags = [f"--{field.name.replace('_', '-')}"] + (["--canary"] if field.name == "canary_percent" else [])
        group.add_argument(*flags, dest=field.name, type=kind, default=default,
                           help=f"as for `pillars compile` (env {variable})")


def cluster_options(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`ClusterOptions` fields parsed by :func:`parse_args`."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(ClusterOptions) if hasattr(args, f.name)}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The trigger's command line (defaults from :class:`TriggerSettings` and ``PILLARS_TRIGGER_*``)."""
    settings = TriggerSettings()
    parser = argparse.ArgumentParser(prog="pillars trigger", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9095)
    parser.add_argument("--token-file", help="file holding the shared bearer token (else PILLARS_TRIGGER_TOKEN)")
    parser.add_argument("--cooldown", type=float, default=settings.cooldown, help="seconds between runs per model")
    parser.add_argument("--max-runs-per-call", type=int, default=settings.max_runs_per_call,
                        help="runs one webhook call may start (the rest: 503, re-sent by Alertmanager)")
    parser.add_argument("--kfp-host", help="start runs on this KFP API instead of locally")
    parser.add_argument("--experiment", default="pillars-retraining")
    parser.add_argument("--namespace", default=None)
    parser.add_argument("--service-account", default=None,
                        help="service account of the runs (the chart's pillars-pipeline-runner: deploy, TrainJobs)")
    parser.add_argument("--param", action="append", default=[], metavar="K=V", help="retraining parameter")
    parser.add_argument("--command", help="local command line to run instead of `pillars run retraining` "
                                           "(the --param arguments are appended)")
    _cluster_flags(parser)
    args = parser.parse_args(argv)
    ClusterOptions(**cluster_options(args))  # bad values fail here, not at the first alert
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """``pillars trigger``: serve the webhook receiver until stopped."""
    import uvicorn

    settings = TriggerSettings()
    args = parse_args(argv)
    token = read_token(args.token_file)
    if args.kfp_host:
        start = kfp_starter(args.kfp_host, args.experiment, args.param, args.namespace, args.service_account,
                            cluster_options(args))
    else:
        command = shlex.split(args.command) if args.command else None
        start = local_starter(args.param, Settings().resolved_home() / "trigger-runs", command)
    app = create_app(token, Decider(args.cooldown, memory=settings.memory), start,
                     max_runs_per_call=args.max_runs_per_call, start_workers=settings.start_workers)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
