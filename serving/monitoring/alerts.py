"""The alert rules on the model servers' metrics: one source for local Prometheus and the Helm chart.

:func:`rule_groups` returns Prometheus rule groups. The local stack (``pillars up``) writes them with
numbers as a rules file; the chart's ``files/alert-rules.yaml`` is the same groups rendered with Helm
value placeholders (``pillars alerts --helm``; a test keeps the committed file equal to a fresh render).

The drift alert carries ``pillars_action: retrain``: Alertmanager routes it to the retraining trigger.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import yaml

RETRAIN_LABEL = {"pillars_action": "retrain"}


@dataclasses.dataclass(frozen=True)
class AlertSettings:
    """Thresholds and durations of the alerts (strings, so Helm placeholders can stand in for them).

    Attributes:
        latency_p99_seconds: p99 request latency a model may keep for ``latency_for``.
        error_ratio: share of requests ending in a server error (5xx, gRPC INTERNAL/UNAVAILABLE) allowed.
        drift_share: share of drifted features that makes a model drifting (Evidently's default: half).
        drift_for: how long drift must last before retraining is asked for: long enough that a burst
            of odd traffic does not retrain, short enough to react within the hour.
        down_for: how long a model server may be unscraped.
        window: the rate window of latency and error ratio.
    """

    latency_p99_seconds: str = "0.5"
    error_ratio: str = "0.05"
    drift_share: str = "0.5"
    latency_for: str = "10m"
    errors_for: str = "5m"
    drift_for: str = "15m"
    down_for: str = "2m"
    window: str = "5m"
    server_job: str = "pillars-model-server"


def _annotation(text: str, helm: bool) -> str:
    """Prometheus templates in annotations, escaped so Helm's ``tpl`` leaves them alone (only these
    parts: the settings, which may be Helm placeholders, are joined on unescaped)."""
    return text.replace("{{", '{{ "{{').replace("}}", '}}" }}') if helm else text


def rule_groups(s: AlertSettings = AlertSettings(), helm: bool = False) -> list[dict[str, Any]]:
    """The rule groups ``pillars-serving`` and ``pillars-drift``."""
    a = lambda text: _annotation(text, helm)  # noqa: E731
    errors = 'status=~"5..|INTERNAL|UNAVAILABLE"'
    return [
        {"name": "pillars-serving", "rules": [
            {"record": "pillars:serving_request_seconds:p99",
             "expr": f"histogram_quantile(0.99, sum by (namespace, model, le) (rate(pillars_serving_request_seconds_bucket[{s.window}])))"},
            {"record": "pillars:serving_requests:error_ratio",
             "expr": f"sum by (namespace, model) (rate(pillars_serving_requests_total{{{errors}}}[{s.window}])) "
                     f"/ sum by (namespace, model) (rate(pillars_serving_requests_total[{s.window}]))"},
            {"alert": "PillarsModelLatencyHigh",
             "expr": f"pillars:serving_request_seconds:p99 > {s.latency_p99_seconds}",
             "for": s.latency_for, "labels": {"severity": "warning"},
             "annotations": {"summary": a("Model {{ $labels.model }}: p99 latency {{ $value | humanizeDuration }}"),
                             "description": f"p99 request latency over {s.window} is above {s.latency_p99_seconds}s."}},
            {"alert": "PillarsModelErrorRatioHigh",
             "expr": f"pillars:serving_requests:error_ratio > {s.error_ratio}",
             "for": s.errors_for, "labels": {"severity": "critical"},
             "annotations": {"summary": a("Model {{ $labels.model }}: {{ $value | humanizePercentage }} server errors"),
                             "description": f"More than {s.error_ratio} of requests end in a server error."}},
            {"alert": "PillarsModelServerDown",
             "expr": f'up{{job="{s.server_job}"}} == 0',
             "for": s.down_for, "labels": {"severity": "critical"},
             "annotations": {"summary": a("Model server {{ $labels.instance }} is down"),
                             "description": "Prometheus cannot scrape the model server."}},
        ]},
        {"name": "pillars-drift", "rules": [
            {"alert": "PillarsModelDrift",
             "expr": f"max by (namespace, model, version) (pillars_drift_share) >= {s.drift_share}",
             "for": s.drift_for, "labels": {"severity": "warning", **RETRAIN_LABEL},
             "annotations": {"summary": a("Model {{ $labels.model }} v{{ $labels.version }}: inputs drift"),
                             "description": a("{{ $value | humanizePercentage }}") + " of the input features drift "
                                            "from the training data profile; retraining is requested."}},
        ]},
    ]


def rules_file(s: AlertSettings = AlertSettings()) -> str:
    """A Prometheus rules file (``rule_files``) with these groups."""
    return yaml.safe_dump({"groups": rule_groups(s)}, sort_keys=False)


HELM_SETTINGS = AlertSettings(
    latency_p99_seconds="{{ .Values.monitoring.rules.latencyP99Seconds }}",
    error_ratio="{{ .Values.monitoring.rules.errorRatio }}",
    drift_share="{{ .Values.monitoring.rules.driftShare }}",
    latency_for="{{ .Values.monitoring.rules.for }}",
    errors_for="{{ .Values.monitoring.rules.errorsFor }}",
    drift_for="{{ .Values.monitoring.rules.driftFor }}",
    down_for="{{ .Values.monitoring.rules.downFor }}",
)


def helm_rules_file() -> str:
    """The groups with Helm value placeholders, for the chart to render with ``tpl``."""
    header = "# Generated by `pillars alerts --helm` from serving/monitoring/alerts.py: edit that, not this.\n"
    return header + yaml.safe_dump(rule_groups(HELM_SETTINGS, helm=True), sort_keys=False, width=200)
