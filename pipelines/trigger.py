"""The retraining trigger: an Alertmanager webhook receiver that starts the retraining pipeline.

Alertmanager POSTs its webhook payload (version 4) to ``/alerts`` with ``Authorization: Bearer
<token>``. A firing alert that carries a ``model`` label and ``pillars_action="retrain"`` starts one
retraining run for that model, unless:

- the label is not a valid model name (``components.references.check_model_name``): ``invalid``;
- the registry has no such model with a ``champion`` alias: ``unknown_model`` (only models that
  are served can be retrained, so a forged alert cannot make up names); a registry that cannot be
  read answers ``unavailable`` (fail closed: no run without the check);
- the same alert already started one (de-duplication by fingerprint and start time): ``duplicate``;
- the model is in its cool-down (one run per model per ``cooldown`` seconds): ``cooldown``;
- the call already started ``max_runs_per_call`` runs: ``limited``;
- ``max_active_runs`` runs the trigger started, counted across all calls, are still running: ``busy``.

Only a started run marks an alert as handled: an alert answered anything else starts a run when
re-sent later. The answer's status tells Alertmanager what to do: 503 (it retries) when a decision
may change on a retry (``failed``, ``unavailable``, ``limited``, ``busy``); else 422 (it does not
retry) when an alert was refused for good (``invalid``, ``unknown_model``); else 200. Registry
look-ups and starts run on small thread pools, off the event loop. Every decision is logged and
counted on ``/metrics``; with ``--metrics-port`` the metrics are served on a port of their own, so a
network policy can admit Prometheus to the metrics only and Alertmanager to the webhook only.

Runs start locally (``pillars run retraining`` as a process of its own, through kfp.local) or on a
cluster (``kfp.Client``, a run in the configured experiment, compiled with the same cluster options
as ``pillars compile``/``submit``: ``--gpus``, ``--s3-secret``, ``--checkpoint-pvc``, ...).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import hmac
import logging
import os
import re
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
from mlflow.tracking import MlflowClient
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from pydantic_settings import BaseSettings, SettingsConfigDict

from pillars.components.errors import ConfigError
from pillars.components.registry.references import check_model_name
from pillars.components.registry import CHAMPION, alias_version
from pillars.components.settings import Settings
from pillars.pipelines.compile import compile_pipeline, parse_params, pipeline_factory
from pillars.pipelines.parameters import ClusterOptions, add_cluster_flags, cluster_options, flag_fields

logger = logging.getLogger(__name__)

ACTION_LABEL = "pillars_action"
RETRAIN = "retrain"
MAX_BODY_BYTES = 1024 * 1024
DECISIONS = ("started", "duplicate", "cooldown", "resolved", "not_retrainable", "invalid", "unknown_model",
             "unavailable", "failed", "limited", "busy")
RETRY = ("failed", "unavailable", "limited", "busy")
"""Decisions that make the call answer 503, so Alertmanager sends the alerts again."""
REFUSED = ("invalid", "unknown_model")
"""Decisions that make the call answer 422 (when none asks for a retry): Alertmanager does not retry 4xx."""
LOG_NAME_CHARS = 60
"""Model-name characters kept in run log file names and log lines."""


class TriggerSettings(BaseSettings):
    """The trigger's settings, from ``PILLARS_TRIGGER_*`` variables (flags override them)."""

    model_config = SettingsConfigDict(env_prefix="PILLARS_TRIGGER_", extra="ignore")

    cooldown: float = 3600.0
    """Seconds between two runs for one model."""

    max_runs_per_call: int = 5
    """Runs one webhook call may start; the rest are answered 503 (Alertmanager re-sends them)."""

    max_active_runs: int = 2
    """Runs started by this trigger that may be running at once, across all calls (a local run takes
    about 540 MB); alerts over it are answered 503 (``busy``) and start when re-sent after one ends."""

    registry_timeout: float = 10.0
    """Seconds the registry look-up of a model's champion may take before the alert is answered 503."""

    command: str = ""
    """Local command line to run instead of ``pillars run retraining`` (``--param`` arguments appended)."""

    token: str = ""
    """The bearer token webhook calls must carry (``--token-file`` overrides it); empty: no token."""

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


REASON_CHARS = 300
"""Most characters of an alert's description kept in a decision's reason."""


def alert_reason(alert: Mapping[str, Any]) -> str:
    """Why a retraining alert fired, in one line: its name, its ``signal`` label (``weighted_drift``,
    ``prediction_drift``, ``estimated_accuracy``) and its description (which names the drifted features)."""
    labels = alert.get("labels") if isinstance(alert.get("labels"), Mapping) else {}
    annotations = alert.get("annotations") if isinstance(alert.get("annotations"), Mapping) else {}
    reason = f"{labels.get('alertname', 'alert')} firing"
    if labels.get("signal"):
        reason += f" (signal {str(labels['signal'])[:40]})"
    description = " ".join(str(annotations.get("description", "")).split())
    return f"{reason}: {description[:REASON_CHARS]}" if description else reason


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
        try:
            check_model_name(model)
        except ConfigError as e:
            return Decision(model, "invalid", str(e))
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
        return Decision(model, "started", alert_reason(alert), key)

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


@dataclasses.dataclass(frozen=True)
class StartedRun:
    """A run a starter started: a reference to log (process id, KFP run id) and whether it still runs."""

    ref: str
    running: Callable[[], bool]


Starter = Callable[[str], StartedRun]
"""Starts a retraining run for a model."""

Champions = Callable[[str], bool]
"""Whether a registered model has a champion; raises when the registry cannot be read."""


class ActiveRuns:
    """The runs this trigger started that still run, capped at ``limit`` across all webhook calls.

    :meth:`reserve` takes a slot before a start (a start under way counts, so concurrent calls cannot
    overshoot); :meth:`add` fills it with the started run, :meth:`release` gives it back when the start
    failed. A run whose state cannot be read counts as running (fail closed).
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"max_active_runs must be >= 1, got {limit}")
        self.limit = limit
        self._runs: list[StartedRun] = []
        self._pending = 0
        self._lock = threading.Lock()

    def reserve(self) -> bool:
        """Take a slot; False when ``limit`` runs are running or starting."""
        with self._lock:
            self._runs = [run for run in self._runs if _still_running(run)]
            if len(self._runs) + self._pending >= self.limit:
                return False
            self._pending += 1
            return True

    def add(self, run: StartedRun) -> None:
        with self._lock:
            self._pending -= 1
            self._runs.append(run)

    def release(self) -> None:
        with self._lock:
            self._pending -= 1

    def count(self) -> int:
        """Runs running or starting now."""
        with self._lock:
            self._runs = [run for run in self._runs if _still_running(run)]
            return len(self._runs) + self._pending


def _still_running(run: StartedRun) -> bool:
    try:
        return run.running()
    except Exception:  # noqa: BLE001 (an unreadable state keeps the slot: fail closed)
        logger.warning("cannot read the state of %s; counted as running", run.ref, exc_info=True)
        return True


def registry_champions(tracking_uri: str | None = None) -> Champions:
    """Looks the ``champion`` alias up in the MLflow registry at ``tracking_uri`` (None: MLflow's
    configured one); :class:`pillars.components.registry.RegistryUnavailable` when it cannot be read."""

    def has_champion(model: str) -> bool:
        return alias_version(model, CHAMPION, MlflowClient(tracking_uri=tracking_uri)) is not None

    return has_champion


def log_file_name(model: str, at: float) -> str:
    """``retrain-<model>-<hash>-<time>.log`` from safe characters only, whatever the model name holds."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", model)[:LOG_NAME_CHARS].lstrip(".")
    digest = hashlib.sha256(model.encode()).hexdigest()[:8]
    return f"retrain-{safe}-{digest}-{int(at)}.log"


def local_starter(params: Sequence[str], log_dir: Path, command: Sequence[str] | None = None) -> Starter:
    """Starts ``pillars run retraining --param model_name=M`` (plus ``params``) as a child process."""
    base = list(command) if command else [sys.executable, "-m", "pillars.pipelines.cli", "run", "retraining"]

    def start(model: str) -> StartedRun:
        log_dir.mkdir(parents=True, exist_ok=True)
        log = open(log_dir / log_file_name(model, time.time()), "wb")
        args = [*base, "--param", f"model_name={model}", *[a for p in params for a in ("--param", p)]]
        # Same process group as the trigger: stopping the trigger's group (`pillars down`) stops its runs.
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return StartedRun(f"pid {proc.pid}", lambda: proc.poll() is None)

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
    :class:`pillars.pipelines.parameters.ClusterOptions`), on a Kubeflow Pipelines cluster."""
    options = dict(cluster_options or {})

    def start(model: str) -> StartedRun:
        import tempfile

        from pillars.pipelines.submit import FINAL_STATES, connect, run_state, submit_run

        with tempfile.TemporaryDirectory() as tmp:
            package, arguments = compile_retraining(f"{tmp}/retraining.yaml", params, model, options)
            client = connect(host, namespace)
            run_id = submit_run(client, package, arguments, run_name=f"retrain-{model}", experiment=experiment,
                                namespace=namespace, enable_caching=False, service_account=service_account)

        def running() -> bool:
            return run_state(client, run_id) not in FINAL_STATES

        return StartedRun(f"kfp run {run_id}", running)

    return start


def create_app(token: str, decider: Decider, start: Starter, champions: Champions, metrics: Metrics | None = None,
               max_runs_per_call: int = 5, start_workers: int = 2, max_active_runs: int = 2,
               registry_timeout: float = 10.0, serve_metrics: bool = True) -> FastAPI:
    """The FastAPI app: ``POST /alerts`` (bearer token), ``GET /healthz``, ``GET /metrics`` (unless
    ``serve_metrics`` is False: :func:`metrics_app` serves them on a port of their own).

    Runs start on ``start_workers`` threads, at most ``max_runs_per_call`` per webhook call and at most
    ``max_active_runs`` running at once; only models ``champions`` knows start runs.
    """
    if not token:
        raise ValueError("the trigger needs a bearer token (--token-file or PILLARS_TRIGGER_TOKEN)")
    if max_runs_per_call < 1 or start_workers < 1:
        raise ValueError(f"max_runs_per_call and start_workers must be >= 1, got {max_runs_per_call}, "
                         f"{start_workers}")
    metrics = metrics or Metrics()
    active = ActiveRuns(max_active_runs)
    expected = f"Bearer {token}".encode()
    starters = ThreadPoolExecutor(max_workers=start_workers, thread_name_prefix="pillars-trigger-start")
    lookups = ThreadPoolExecutor(max_workers=2, thread_name_prefix="pillars-trigger-registry")
    app = FastAPI(title="pillars trigger", docs_url=None, redoc_url=None)
    for pool in (starters, lookups):
        app.router.on_shutdown.append(lambda pool=pool: pool.shutdown(wait=False, cancel_futures=True))

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    if serve_metrics:
        app.get("/metrics")(lambda: metrics_response(metrics))

    async def check_champion(decision: Decision) -> Decision | None:
        """None when the model has a champion, else the refusal."""
        loop = asyncio.get_running_loop()
        try:
            known = await asyncio.wait_for(loop.run_in_executor(lookups, champions, decision.model), registry_timeout)
        except TimeoutError:
            return Decision(decision.model, "unavailable", f"the registry did not answer in {registry_timeout:.0f}s",
                            decision.key)
        except Exception as e:  # any failure to read the registry: no run (fail closed), Alertmanager retries
            return Decision(decision.model, "unavailable", f"{type(e).__name__}: {e}", decision.key)
        if not known:
            return Decision(decision.model, "unknown_model", "no registered model of that name with a champion",
                            decision.key)
        return None

    async def handle(alert: Any, started: int) -> Decision:
        decision = decider.decide(alert if isinstance(alert, dict) else {})
        if decision.action != "started":
            return decision
        refusal = await check_champion(decision)
        if refusal is None and started >= max_runs_per_call:
            refusal = Decision(decision.model, "limited", f"over {max_runs_per_call} runs in one call; send it again",
                               decision.key)
        loop = asyncio.get_running_loop()
        if refusal is None and not await loop.run_in_executor(starters, active.reserve):
            refusal = Decision(decision.model, "busy", f"{max_active_runs} runs are running; send it again later",
                               decision.key)
        if refusal is not None:
            decider.forget_start(decision.model, decision.key)
            return refusal
        try:
            run = await loop.run_in_executor(starters, start, decision.model)
        except Exception as e:  # a failed start is reported, counted and answered 503: Alertmanager retries
            active.release()
            decider.forget_start(decision.model, decision.key)
            return Decision(decision.model, "failed", f"{type(e).__name__}: {e}", decision.key)
        active.add(run)
        metrics.last_run.labels(decision.model).set_to_current_time()
        return Decision(decision.model, "started", f"{decision.reason}; {run.ref}", decision.key)

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
            logger.info("alert for model %r: %s (%s)", decision.model[:LOG_NAME_CHARS], decision.action,
                        decision.reason)
            results.append({"model": decision.model, "decision": decision.action, "reason": decision.reason})
        return JSONResponse({"decisions": results}, status_code=answer_status([r["decision"] for r in results]))

    return app


def answer_status(decisions: Sequence[str]) -> int:
    """503 when a decision may change on a retry, else 422 when an alert was refused for good, else 200."""
    if any(d in RETRY for d in decisions):
        return 503
    return 422 if any(d in REFUSED for d in decisions) else 200


def metrics_response(metrics: Metrics) -> PlainTextResponse:
    return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


def metrics_app(metrics: Metrics) -> FastAPI:
    """``GET /metrics`` and ``GET /healthz`` alone, for ``--metrics-port``."""
    app = FastAPI(title="pillars trigger metrics", docs_url=None, redoc_url=None)
    app.get("/metrics")(lambda: metrics_response(metrics))
    app.get("/healthz")(lambda: {"status": "ok"})
    return app


def read_token(token_file: str | None, token: str = "") -> str:
    """The bearer token from ``token_file``, else ``token`` (``PILLARS_TRIGGER_TOKEN``)."""
    if token_file:
        try:
            return Path(token_file).read_text().strip()
        except OSError as e:
            raise ValueError(f"cannot read the token file {token_file}: {e.strerror}") from e
    return token.strip()


def _cluster_flag_defaults() -> dict[str, Any]:
    """Defaults of the cluster flags from ``PILLARS_TRIGGER_<FIELD>`` variables (of the field's type)."""
    defaults = {}
    for field in flag_fields():
        variable = f"PILLARS_TRIGGER_{field.name.upper()}"
        env = os.environ.get(variable)
        kind = type(field.default) if field.default is not dataclasses.MISSING else str
        try:
            if env:
                defaults[field.name] = kind(env)
        except ValueError as e:
            raise ValueError(f"{variable} must be {kind.__name__}, got {env!r}") from e
    return defaults


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
    parser.add_argument("--max-active-runs", type=int, default=settings.max_active_runs,
                        help="runs this trigger started that may run at once, across all calls (the rest: 503)")
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="serve /metrics on this port only (not on --port): Prometheus needs no webhook access")
    parser.add_argument("--kfp-host", help="start runs on this KFP API instead of locally")
    parser.add_argument("--experiment", default="pillars-retraining")
    parser.add_argument("--namespace", default=None)
    parser.add_argument("--service-account", default=None,
                        help="service account of the runs (the chart's pillars-pipeline-runner: deploy, TrainJobs)")
    parser.add_argument("--param", action="append", default=[], metavar="K=V", help="retraining parameter")
    parser.add_argument("--command", default=settings.command or None,
                        help="local command line to run instead of `pillars run retraining` "
                             "(the --param arguments are appended; env PILLARS_TRIGGER_COMMAND)")
    add_cluster_flags(parser, _cluster_flag_defaults(), "cluster options of the compiled retraining pipeline "
                      "(with --kfp-host)", " (as for `pillars compile`; env PILLARS_TRIGGER_<NAME>)")
    args = parser.parse_args(argv)
    ClusterOptions(**cluster_options(args))  # bad values fail here, not at the first alert
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """``pillars trigger``: serve the webhook receiver until stopped."""
    import uvicorn

    settings = TriggerSettings()
    args = parse_args(argv)
    token = read_token(args.token_file, settings.token)
    if args.kfp_host:
        start = kfp_starter(args.kfp_host, args.experiment, args.param, args.namespace, args.service_account,
                            cluster_options(args))
    else:
        command = shlex.split(args.command) if args.command else None
        start = local_starter(args.param, Settings().resolved_home() / "trigger-runs", command)
    # The champion is looked up where the runs will register their versions (the tracking_uri parameter).
    tracking_uri = dict(p.partition("=")[::2] for p in args.param).get("tracking_uri") or None
    metrics = Metrics()
    app = create_app(token, Decider(args.cooldown, memory=settings.memory), start, registry_champions(tracking_uri),
                     metrics, max_runs_per_call=args.max_runs_per_call, start_workers=settings.start_workers,
                     max_active_runs=args.max_active_runs, registry_timeout=settings.registry_timeout,
                     serve_metrics=args.metrics_port is None)
    servers = [uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="info"))]
    if args.metrics_port is not None:
        servers.append(uvicorn.Server(uvicorn.Config(metrics_app(metrics), host=args.host, port=args.metrics_port,
                                                     log_level="warning")))
    asyncio.run(_serve(servers))
    return 0


async def _serve(servers: Sequence[Any]) -> None:
    """Run uvicorn servers together until one ends (a stop signal), then end the others."""
    tasks = [asyncio.create_task(server.serve()) for server in servers]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for server in servers:
        server.should_exit = True
    await asyncio.gather(*tasks)
