"""The webhook app: ``POST /alerts`` (bearer token), ``GET /healthz``, ``GET /metrics``.

Each alert of a call is decided (:mod:`.decide`), checked against the registry (a model must have a champion;
a registry that cannot be read answers ``unavailable``: fail closed), capped (per call, and runs running at
once), then started (:mod:`.runs`). Registry look-ups and starts run on small thread pools, off the event loop.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from pillars.pipelines.trigger.decide import DECISIONS, LOG_NAME_CHARS, Decider, Decision, answer_status
from pillars.pipelines.trigger.runs import ActiveRuns, Champions, Starter

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024


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

class AlertHandler:
    """One alert from decision to started run: the registry check, the caps, the start; thread pools off the
    event loop."""

    def __init__(self, decider: Decider, start: Starter, champions: Champions, metrics: Metrics,
                 max_runs_per_call: int, start_workers: int, max_active_runs: int, registry_timeout: float) -> None:
        if max_runs_per_call < 1 or start_workers < 1:
            raise ValueError(f"max_runs_per_call and start_workers must be >= 1, got {max_runs_per_call}, "
                             f"{start_workers}")
        self.decider, self.start, self.champions, self.metrics = decider, start, champions, metrics
        self.max_runs_per_call, self.registry_timeout = max_runs_per_call, registry_timeout
        self.active = ActiveRuns(max_active_runs)
        self.starters = ThreadPoolExecutor(max_workers=start_workers, thread_name_prefix="pillars-trigger-start")
        self.lookups = ThreadPoolExecutor(max_workers=2, thread_name_prefix="pillars-trigger-registry")

    def shutdown(self) -> None:
        for pool in (self.starters, self.lookups):
            pool.shutdown(wait=False, cancel_futures=True)

    async def check_champion(self, decision: Decision) -> Decision | None:
        """None when the model has a champion, else the refusal."""
        loop = asyncio.get_running_loop()
        try:
            known = await asyncio.wait_for(loop.run_in_executor(self.lookups, self.champions, decision.model),
                                           self.registry_timeout)
        except TimeoutError:
            return Decision(decision.model, "unavailable",
                            f"the registry did not answer in {self.registry_timeout:.0f}s", decision.key)
        except Exception as e:  # any failure to read the registry: no run (fail closed), Alertmanager retries
            return Decision(decision.model, "unavailable", f"{type(e).__name__}: {e}", decision.key)
        if not known:
            return Decision(decision.model, "unknown_model", "no registered model of that name with a champion",
                            decision.key)
        return None

    async def handle(self, alert: Any, started: int) -> Decision:
        """The decision on one alert, ``started`` runs having started earlier in the same call."""
        decision = self.decider.decide(alert if isinstance(alert, dict) else {})
        if decision.action != "started":
            return decision
        refusal = await self.check_champion(decision)
        if refusal is None and started >= self.max_runs_per_call:
            refusal = Decision(decision.model, "limited",
                               f"over {self.max_runs_per_call} runs in one call; send it again", decision.key)
        loop = asyncio.get_running_loop()
        if refusal is None and not await loop.run_in_executor(self.starters, self.active.reserve):
            refusal = Decision(decision.model, "busy", f"{self.active.limit} runs are running; send it again later",
                               decision.key)
        if refusal is not None:
            self.decider.forget_start(decision.model, decision.key)
            return refusal
        try:
            run = await loop.run_in_executor(self.starters, self.start, decision.model, decision.reason)
        except Exception as e:  # a failed start is reported, counted and answered 503: Alertmanager retries
            self.active.release()
            self.decider.forget_start(decision.model, decision.key)
            return Decision(decision.model, "failed", f"{type(e).__name__}: {e}", decision.key)
        self.active.add(run)
        self.metrics.last_run.labels(decision.model).set_to_current_time()
        return Decision(decision.model, "started", f"{decision.reason}; {run.ref}", decision.key)


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
    metrics = metrics or Metrics()
    handler = AlertHandler(decider, start, champions, metrics, max_runs_per_call, start_workers, max_active_runs,
                           registry_timeout)
    expected = f"Bearer {token}".encode()
    app = FastAPI(title="pillars trigger", docs_url=None, redoc_url=None)
    app.router.on_shutdown.append(handler.shutdown)
    app.get("/healthz")(lambda: {"status": "ok"})
    if serve_metrics:
        app.get("/metrics")(lambda: metrics_response(metrics))

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
            decision = await handler.handle(alert, started)
            started += decision.action == "started"
            metrics.decisions.labels(decision.action).inc()
            logger.info("alert for model %r: %s (%s)", decision.model[:LOG_NAME_CHARS], decision.action,
                        decision.reason)
            results.append({"model": decision.model, "decision": decision.action, "reason": decision.reason})
        return JSONResponse({"decisions": results}, status_code=answer_status([r["decision"] for r in results]))

    return app


def metrics_response(metrics: Metrics) -> PlainTextResponse:
    return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


def metrics_app(metrics: Metrics) -> FastAPI:
    """``GET /metrics`` and ``GET /healthz`` alone, for ``--metrics-port``."""
    app = FastAPI(title="pillars trigger metrics", docs_url=None, redoc_url=None)
    app.get("/metrics")(lambda: metrics_response(metrics))
    app.get("/healthz")(lambda: {"status": "ok"})
    return app
