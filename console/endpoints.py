"""Model servers the console knows of, and how they behave over time.

Endpoints come from ``pillars up``'s state file and from configured URLs. Their health comes from the
server (``/v2/health/ready``); request rate, p50/p99 latency, error ratio, per-feature and weighted drift, and
the estimated (CBPE) and realised (feedback labels) accuracy come
from Prometheus' HTTP API (``query_range``) when there is a Prometheus, else from the console's own
samples of each server's ``/metrics`` (parsed with ``prometheus_client.parser``), kept in memory.
The shadow challenger's comparison (rows, agreement, the decision and its reason) is the server's own
``GET /v2/models/NAME/shadow`` (:func:`shadow_comparison`), read on each view. A server that asks for a bearer
token (``--auth_token_file``) gets the console's ``endpoint_token_file`` on every request the console sends it.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import threading
import time
from collections.abc import Iterable
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from pillars.pipelines.local.stack import web_auth

logger = logging.getLogger(__name__)

ERROR_STATUS = ("5", "INTERNAL", "UNAVAILABLE")
"""Request statuses counted as errors (HTTP 5xx, gRPC INTERNAL/UNAVAILABLE), as the alert rules count them."""

WINDOW_S = 30 * 60
"""How far back the charts go."""

MAX_FEATURES = 12
"""Drift charts show at most this many features (the most drifted ones)."""

TIMEOUT_S = 3.0
_RATE = "1m"


@dataclasses.dataclass
class Endpoint:
    """A model server: a name, its base URL, the model it serves, where its metrics are."""

    name: str
    url: str
    model: str | None = None
    prometheus: str | None = None
    prometheus_auth: tuple[str, str] | None = None
    """Basic auth of ``prometheus`` (the local stack's asks for it)."""
    token: str | None = dataclasses.field(default=None, repr=False)
    """The server's bearer token (``endpoint_token_file``), sent on every request to ``url``."""

    @property
    def headers(self) -> dict[str, str]:
        """What every request to the server carries: its bearer token, when there is one."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


@dataclasses.dataclass
class Sample:
    """What one scrape of ``/metrics`` said, reduced to the numbers the charts need."""

    at: float
    requests: float
    errors: float
    buckets: dict[float, float]
    drift: dict[str, float]
    version: str | None
    estimated: float | None = None
    """Estimated accuracy (CBPE) of the served version's window; None when the model cannot estimate it."""
    scored: float = 0.0
    """Rows scored against feedback labels, and those right: realised accuracy is ``correct / scored``."""
    correct: float = 0.0
    weighted_drift: float | None = None


@dataclasses.dataclass
class EndpointView:
    """One endpoint as the page shows it."""

    endpoint: Endpoint
    ready: bool
    health: str
    version: str | None
    source: str  # "prometheus" or "/metrics"
    rate: dict[str, list[tuple[float, float]]]
    p50: dict[str, list[tuple[float, float]]]
    p99: dict[str, list[tuple[float, float]]]
    error_ratio: dict[str, list[tuple[float, float]]]
    drift: dict[str, list[tuple[float, float]]]
    accuracy: dict[str, list[tuple[float, float]]] = dataclasses.field(default_factory=dict)
    """``estimated (CBPE)`` and ``realised (labels)`` accuracy, each present once there is a value."""
    weighted_drift: dict[str, list[tuple[float, float]]] = dataclasses.field(default_factory=dict)
    shadow: ShadowView | None = None
    """The shadow comparison; None when the server was not asked (not ready) or did not answer."""


@dataclasses.dataclass(frozen=True)
class ShadowView:
    """What the server says of its shadow challenger (``GET /v2/models/NAME/shadow``)."""

    model: str
    version: str | None
    """The challenger's version; None when the server runs no shadow (then ``reason`` says so)."""
    rows: int = 0
    agreement: float | None = None
    """Share of the rows both answered on which they agreed."""
    labelled: int = 0
    """Labelled rows both answered (what the decision is made on)."""
    action: str = "none"
    reason: str = ""
    champion_accuracy: float | None = None
    shadow_accuracy: float | None = None


def shadow_comparison(endpoint: Endpoint) -> ShadowView | None:
    """The server's shadow comparison for its model (``endpoint.model``, else the first it lists at
    ``/v2/models``); None when the server does not answer it (an old server, a token it asks for)."""
    try:
        with httpx.Client(base_url=endpoint.url, timeout=TIMEOUT_S, headers=endpoint.headers) as client:
            model = endpoint.model
            if model is None:
                listed = client.get("/v2/models")
                listed.raise_for_status()
                model = next(iter(listed.json().get("models") or []), None)
                if model is None:
                    return None
            response = client.get(f"/v2/models/{model}/shadow")
            response.raise_for_status()
            body = response.json()
    except (httpx.HTTPError, ValueError):
        return None
    decision = body.get("decision") or {}
    shadow = body.get("shadow")
    if not isinstance(shadow, dict):
        return ShadowView(model, None, reason=str(decision.get("reason", "")))
    return ShadowView(model, str(shadow.get("version")), int(shadow.get("rows") or 0), shadow.get("agreement"),
                      sum((body.get("labelled_pairs") or {}).values()), str(decision.get("action", "none")),
                      str(decision.get("reason", "")), decision.get("champion_accuracy"),
                      decision.get("shadow_accuracy"))


def discover(stack_state: dict[str, Any] | None, configured: dict[str, str], prometheus_url: str,
             token: str | None = None) -> list[Endpoint]:
    """The local stack's model server (with its Prometheus) and the configured URLs; ``token``: the servers'
    bearer token."""
    found = []
    if stack_state and stack_state.get("urls", {}).get("model_http"):
        urls = stack_state["urls"]
        found.append(Endpoint("local stack", urls["model_http"], stack_state.get("model"),
                              prometheus_url or urls.get("prometheus"),
                              None if prometheus_url else web_auth(stack_state), token))
    for name, url in configured.items():
        found.append(Endpoint(name, url, None, prometheus_url or None, None, token))
    return found


# --- reading /metrics ---------------------------------------------------------------------------


def parse_metrics(text: str, model: str | None) -> Sample:
    """Reduce a ``/metrics`` page to a :class:`Sample` for ``model`` (every model when None)."""
    requests = errors = 0.0
    buckets: dict[float, float] = collections.defaultdict(float)
    drift: dict[str, float] = {}
    version = None
    estimated = weighted = None
    scored = correct = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if model is not None and s.labels.get("model") not in (model, None):
                continue
            if s.name == "pillars_serving_requests_total":
                requests += s.value
                if s.labels.get("status", "").startswith(ERROR_STATUS):
                    errors += s.value
                version = version or s.labels.get("version") or None
            elif s.name == "pillars_serving_request_seconds_bucket":
                buckets[float(s.labels["le"])] += s.value
            elif s.name == "pillars_drift_feature_jsd":
                drift[s.labels.get("feature", "?")] = s.value
            elif s.name == "pillars_drift_window_rows":
                version = s.labels.get("version") or version
            elif s.name == "pillars_performance_estimated_accuracy":
                estimated = s.value
            elif s.name == "pillars_drift_weighted_share":
                weighted = s.value
            elif s.name == "pillars_feedback_scored_rows_total":
                scored += s.value
            elif s.name == "pillars_feedback_correct_rows_total":
                correct += s.value
    return Sample(time.time(), requests, errors, dict(buckets), drift, version, estimated, scored, correct, weighted)


def histogram_quantile(q: float, buckets: dict[float, float]) -> float:
    """The ``q`` quantile of cumulative ``{upper bound: count}`` buckets, interpolated as Prometheus does."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return math.nan
    total = buckets[bounds[-1]]
    rank = q * total
    previous_bound, previous_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return previous_bound
            if count == previous_count:
                return bound
            return previous_bound + (bound - previous_bound) * (rank - previous_count) / (count - previous_count)
        previous_bound, previous_count = bound, count
    return bounds[-1]


def series_from_samples(samples: Iterable[Sample]) -> dict[str, Any]:
    """Rate, p50, p99, error ratio (from consecutive samples' differences), drift per feature, the weighted drift
    share, and the estimated and realised (all labels so far) accuracy."""
    rate, p50, p99, ratio = [], [], [], []
    estimated, realised, weighted = [], [], []
    drift: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
    previous = None
    for s in samples:
        for feature, value in s.drift.items():
            drift[feature].append((s.at, value))
        if s.estimated is not None:
            estimated.append((s.at, s.estimated))
        if s.weighted_drift is not None:
            weighted.append((s.at, s.weighted_drift))
        if s.scored:
            realised.append((s.at, s.correct / s.scored))
        if previous is not None and s.at > previous.at and s.requests >= previous.requests:
            dt, dn = s.at - previous.at, s.requests - previous.requests
            rate.append((s.at, dn / dt))
            ratio.append((s.at, (s.errors - previous.errors) / dn if dn else 0.0))
            delta = {b: s.buckets.get(b, 0.0) - previous.buckets.get(b, 0.0) for b in s.buckets}
            p50.append((s.at, histogram_quantile(0.5, delta)))
            p99.append((s.at, histogram_quantile(0.99, delta)))
        previous = s
    return {"rate": rate, "p50": p50, "p99": p99, "error_ratio": ratio, "drift": dict(drift), "estimated": estimated,
            "realised": realised, "weighted_drift": weighted}


class Sampler:
    """Scrapes each endpoint's ``/metrics`` every ``interval`` seconds (only endpoints without Prometheus)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._samples: dict[str, collections.deque[Sample]] = {}
        self._endpoints: dict[str, Endpoint] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, endpoints: Iterable[Endpoint]) -> None:
        with self._lock:
            self._endpoints = {e.url: e for e in endpoints if not e.prometheus}
        if self._endpoints and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="pillars-console-metrics", daemon=True)
            self._thread.start()

    def samples(self, url: str) -> list[Sample]:
        with self._lock:
            return list(self._samples.get(url, ()))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def scrape(self, endpoint: Endpoint) -> Sample | None:
        try:
            response = httpx.get(f"{endpoint.url}/metrics", timeout=TIMEOUT_S, headers=endpoint.headers)
            response.raise_for_status()
        except httpx.HTTPError:
            return None
        sample = parse_metrics(response.text, endpoint.model)
        with self._lock:
            keep = int(WINDOW_S / self.interval) + 1
            self._samples.setdefault(endpoint.url, collections.deque(maxlen=keep)).append(sample)
        return sample

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                endpoints = list(self._endpoints.values())
            for endpoint in endpoints:
                self.scrape(endpoint)
            self._stop.wait(self.interval)


# --- reading Prometheus -------------------------------------------------------------------------


def prometheus_series(base: str, model: str | None, end: float | None = None,
                      auth: tuple[str, str] | None = None) -> dict[str, Any]:
    """The same series as :func:`series_from_samples`, from Prometheus' ``query_range``.

    Raises:
        httpx.HTTPError: Prometheus did not answer.
    """
    end = end or time.time()
    start = end - WINDOW_S
    step = max(5, WINDOW_S // 240)
    sel = f'model="{model}"' if model else ""
    errors = f'{sel}{"," if sel else ""}status=~"5..|INTERNAL|UNAVAILABLE"'
    queries = {
        "rate": f"sum(rate(pillars_serving_requests_total{{{sel}}}[{_RATE}]))",
        "p50": f"histogram_quantile(0.5, sum by (le) (rate(pillars_serving_request_seconds_bucket{{{sel}}}[{_RATE}])))",
        "p99": f"histogram_quantile(0.99, sum by (le) (rate(pillars_serving_request_seconds_bucket{{{sel}}}[{_RATE}])))",
        "error_ratio": f"sum(rate(pillars_serving_requests_total{{{errors}}}[{_RATE}])) "
                       f"/ sum(rate(pillars_serving_requests_total{{{sel}}}[{_RATE}]))",
        "drift": f"max by (feature) (pillars_drift_feature_jsd{{{sel}}})",
        "estimated": f"max(pillars_performance_estimated_accuracy{{{sel}}})",
        "realised": f"sum(pillars_feedback_correct_rows_total{{{sel}}}) "
                    f"/ sum(pillars_feedback_scored_rows_total{{{sel}}})",
        "weighted_drift": f"max(pillars_drift_weighted_share{{{sel}}})",
    }
    result: dict[str, Any] = {}
    with httpx.Client(base_url=base.rstrip("/"), timeout=TIMEOUT_S, auth=auth) as client:
        for key, query in queries.items():
            response = client.get("/api/v1/query_range", params={"query": query, "start": start, "end": end,
                                                                  "step": step})
            response.raise_for_status()
            series = {r["metric"].get("feature", key): [(float(t), float(v)) for t, v in r["values"]]
                      for r in response.json()["data"]["result"]}
            result[key] = series if key == "drift" else next(iter(series.values()), [])
    return result


# --- one endpoint's view ------------------------------------------------------------------------


def health(endpoint: Endpoint) -> tuple[bool, str]:
    """``(ready, words)`` from the server's V2 readiness endpoint."""
    try:
        response = httpx.get(f"{endpoint.url}/v2/health/ready", timeout=TIMEOUT_S, headers=endpoint.headers)
    except httpx.HTTPError as e:
        return False, f"unreachable ({type(e).__name__})"
    return (True, "ready") if response.status_code == 200 else (False, f"not ready (HTTP {response.status_code})")


def view(endpoint: Endpoint, sampler: Sampler) -> EndpointView:
    """Health, served version and the charts' series of ``endpoint``."""
    ready, words = health(endpoint)
    sample = sampler.scrape(endpoint) if ready and endpoint.prometheus else None
    series: dict[str, Any] | None = None
    source = "/metrics"
    if endpoint.prometheus:
        try:
            series = prometheus_series(endpoint.prometheus, endpoint.model, auth=endpoint.prometheus_auth)
            source = "prometheus"
        except (httpx.HTTPError, KeyError, ValueError):
            logger.warning("Prometheus at %s did not answer; using %s/metrics", endpoint.prometheus, endpoint.url)
    samples = sampler.samples(endpoint.url)
    if series is None:
        series = series_from_samples(samples)
    latest = sample or (samples[-1] if samples else None)
    drift = series["drift"]
    top = sorted(drift, key=lambda f: -max((v for _, v in drift[f] if math.isfinite(v)), default=0.0))
    accuracy = {name: series.get(key) or [] for name, key in (("estimated (CBPE)", "estimated"),
                                                              ("realised (labels)", "realised"))}
    weighted = series.get("weighted_drift") or []
    return EndpointView(endpoint, ready, words, latest.version if latest else None, source,
                        {"requests/s": series["rate"]}, {"p50": series["p50"]}, {"p99": series["p99"]},
                        {"errors": series["error_ratio"]}, {f: drift[f] for f in top[:MAX_FEATURES]},
                        {name: s for name, s in accuracy.items() if s},
                        {"weighted share": weighted} if weighted else {},
                        shadow_comparison(endpoint) if ready else None)
