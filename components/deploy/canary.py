"""What a KServe canary and its champion did, read from Prometheus, for the canary decision.

KServe splits traffic between the last rolled-out revision and the canary (``canaryTrafficPercent``) but judges
neither. Both run the Pillars model server, whose series carry the served registry ``version``
(:mod:`pillars.serving.monitoring.metrics`, ``.performance``, ``.feedback``), so one PromQL query per figure,
grouped ``by (version)``, gives both sides (:func:`canary_queries`); :func:`read_figures` runs them against the
Prometheus HTTP API and returns one :class:`~pillars.components.evaluation.canary.VersionFigures` per version
seen, which :func:`~pillars.components.evaluation.canary.decide_canary` judges; :func:`carry_out` does what it
decided (``canaryTrafficPercent`` and the champion alias). No Flagger or Argo Rollouts.

Per version, over the window ``W`` (``matchers`` narrow it further: on a cluster ``namespace`` and
``inferenceservice``, the labels the chart's PodMonitor adds):

- requests and errors: ``increase`` of ``pillars_serving_requests_total`` (errors: status 5xx, INTERNAL or
  UNAVAILABLE, as the error-ratio alert counts them);
- p99 latency: ``histogram_quantile`` of ``pillars_serving_request_seconds`` (its ``version`` label);
- estimated accuracy: the latest ``pillars_performance_estimated_accuracy``, averaged over the version's pods;
- labels: the latest ``pillars_feedback_scored_rows_total`` and ``..._correct_rows_total`` summed over the
  version's pods. These are the version's totals, not the window's: a version's accuracy is the version's,
  the feedback store restores them after a restart, and a first batch of labels would be lost to
  ``increase`` (a series' first sample has no increase).

On a cluster a label reaches the pod that served its request only when the traffic split sends the feedback
there (a pod that did not serve an id keeps the label unscored), so each version is scored on a random share of
its labels: fewer labels, the same accuracy. ``increase`` misses what a new pod answered before its first
scrape (at most one scrape interval): the request counts are slightly low, the ratios are not biased.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import httpx

from pillars.components.errors import ConfigError, PillarsError
from pillars.components.evaluation.canary import VersionFigures

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

ERROR_STATUSES = "5..|INTERNAL|UNAVAILABLE"
"""The request statuses that count as server errors (the error-ratio alert's, :mod:`pillars.serving.monitoring.alerts`;
a test checks they agree)."""


class PrometheusUnavailable(PillarsError):
    """Prometheus did not answer a query (unreachable, refused, or an error in its answer)."""

    status = HTTPStatus.BAD_GATEWAY
    grpc_code = "UNAVAILABLE"


_DURATION = re.compile(r"(\d+(ms|s|m|h|d|w|y))+")
"""A Prometheus duration (``90s``, ``1h30m``)."""


def _label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def canary_queries(model: str, window: str = "1h", matchers: Mapping[str, str] | None = None) -> dict[str, str]:
    """The PromQL of each figure, grouped by version (see the module docstring)."""
    if not _DURATION.fullmatch(window):
        raise ConfigError(f"the window must be a Prometheus duration such as 30m or 1h, got {window!r}")
    sel = ",".join(f'{k}="{_label_value(v)}"' for k, v in {"model": model, **(matchers or {})}.items())
    return {
        "requests": f"sum by (version) (increase(pillars_serving_requests_total{{{sel}}}[{window}]))",
        "errors": f'sum by (version) (increase(pillars_serving_requests_total{{{sel},status=~"{ERROR_STATUSES}"}}'
                  f"[{window}]))",
        "p99": f"histogram_quantile(0.99, sum by (version, le) "
               f"(rate(pillars_serving_request_seconds_bucket{{{sel}}}[{window}])))",
        "estimated": f"avg by (version) (last_over_time(pillars_performance_estimated_accuracy{{{sel}}}[{window}]))",
        "scored": f"sum by (version) (last_over_time(pillars_feedback_scored_rows_total{{{sel}}}[{window}]))",
        "correct": f"sum by (version) (last_over_time(pillars_feedback_correct_rows_total{{{sel}}}[{window}]))",
    }


def query(prometheus: str, expr: str, client: httpx.Client) -> dict[str, float]:
    """``{version: value}`` of an instant query (NaN and empty versions left out).

    Raises:
        PrometheusUnavailable: no answer, or Prometheus' own error.
    """
    url = f"{prometheus.rstrip('/')}/api/v1/query"
    try:
        response = client.get(url, params={"query": expr})
    except httpx.HTTPError as e:
        raise PrometheusUnavailable(f"cannot reach Prometheus at {prometheus}: {type(e).__name__}") from e
    try:
        answer: dict[str, Any] = response.json()
    except ValueError:
        answer = {}
    if response.status_code != 200 or answer.get("status") != "success":
        raise PrometheusUnavailable(f"Prometheus at {prometheus} answered {response.status_code}: "
                                    f"{answer.get('error') or response.text[:200]}")
    values: dict[str, float] = {}
    for item in answer["data"]["result"]:
        version, value = item["metric"].get("version", ""), float(item["value"][1])
        if version and not math.isnan(value):
            values[version] = value
    return values


def read_figures(prometheus: str, model: str, window: str = "1h", matchers: Mapping[str, str] | None = None,
                 headers: Mapping[str, str] | None = None, timeout_s: float = 10.0) -> dict[str, VersionFigures]:
    """Every version of ``model`` that answered requests in the window, with what it did.

    Raises:
        PrometheusUnavailable: a query failed.
    """
    with httpx.Client(headers=dict(headers or {}), timeout=timeout_s) as client:
        values = {name: query(prometheus, expr, client) for name, expr in canary_queries(model, window, matchers).items()}
    figures = {}
    for version, requests in values["requests"].items():
        count = round(requests)
        scored = round(values["scored"].get(version, 0.0))
        figures[version] = VersionFigures(
            version=version, requests=count, errors=min(count, round(values["errors"].get(version, 0.0))),
            p99_seconds=values["p99"].get(version), estimated_accuracy=values["estimated"].get(version),
            scored=scored, correct=min(scored, round(values["correct"].get(version, 0.0))))
    return figures


def pick_versions(figures: Mapping[str, VersionFigures], canary: str, champion: str | None = None
                  ) -> tuple[VersionFigures, VersionFigures]:
    """(champion, canary) figures: ``champion`` when given, else the other version that answered the most requests
    (a version named that answered nothing in the window gets zero requests: the decision waits).

    Raises:
        ConfigError: no champion named and no version other than the canary answered any request.
    """
    seen = ", ".join(f"v{v} ({f.requests} requests)" for v, f in sorted(figures.items())) or "none"
    if champion is None:
        others = sorted((f for v, f in figures.items() if v != canary), key=lambda f: -f.requests)
        if not others:
            raise ConfigError(f"no version other than the canary v{canary} answered requests in the window "
                              f"(versions seen: {seen}); pass --champion-version")
        champion = others[0].version
    nothing = {v: VersionFigures(v, 0, 0) for v in (champion, canary)}
    return figures.get(champion, nothing[champion]), figures.get(canary, nothing[canary])


def carry_out(api_client: ApiClient, name: str, action: str, why: str, champion: str, canary: str,
              patch: dict[str, Any]) -> list[str]:
    """Do what the decision says, registry and traffic together; returns what was done, a line each.

    Promote: ``champion`` moves to the canary's version by compare-and-set (only from ``champion``, the version it
    was judged against; nothing when it is already there), then ``patch`` (``canaryTrafficPercent: 100``). Roll
    back: ``patch`` (0) first, so traffic leaves the canary whatever the registry says; then a champion alias
    already on the canary (the training pipeline promotes before it deploys) is rolled back to ``champion``, else
    the canary version is marked rolled back (``pillars.rolled_back``, as ``pillars models rollback`` marks). The
    reason ``why`` goes to the registry either way.

    Raises:
        ChampionMoved: promote, and the champion is neither ``champion`` nor the canary; nothing was changed.
        DeployError: the API server refused the patch.
    """
    from pillars.components import registry
    from pillars.components.deploy.rollout import set_canary_traffic
    from pillars.components.registry.register import promote

    where = f"{patch['metadata']['namespace']}/{patch['metadata']['name']}"
    percent = patch["spec"]["predictor"]["canaryTrafficPercent"]
    if action == "promote":
        moved = registry.alias_version(name, registry.CHAMPION) != canary and promote(name, canary, why,
                                                                                     expected=champion)
        set_canary_traffic(api_client, patch)
        return [f"{name}: champion -> v{canary}" if moved else f"{name}: v{canary} already champion",
                f"{where}: canaryTrafficPercent {percent}"]
    if action != "rollback":
        raise ValueError(f"nothing to carry out for a {action!r} decision")
    set_canary_traffic(api_client, patch)
    done = [f"{where}: canaryTrafficPercent {percent}"]
    if registry.alias_version(name, registry.CHAMPION) == canary:
        event = registry.rollback(name, why, to=champion)
        return [*done, f"{name}: champion v{event.from_version} -> v{event.to_version} (rolled back)"]
    mark = {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "why": why, "to": champion}
    registry.client().set_model_version_tag(name, canary, registry.ROLLED_BACK, json.dumps(mark))
    return [*done, f"{name}: v{canary} marked rolled back"]
