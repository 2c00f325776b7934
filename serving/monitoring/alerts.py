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
        drift_share: importance-weighted share of drifted features that makes a model drifting: the drifted
            features carry at least this share of the model's reliance (permutation importance at training;
            equal weights for a model without importances, where it is the plain share of drifted features).
        prediction_jsd: JS distance of the predicted distribution from the training labels that makes the
            predictions drifting (the per-feature threshold, NannyML's default).
        drift_for: how long drift (or a low estimated accuracy) must last before retraining is asked for:
            long enough that a burst of odd traffic does not retrain, short enough to react within the hour.
        down_for: how long a model server may be unscraped.
        window: the rate window of latency and error ratio.
    """

    latency_p99_seconds: str = "0.5"
    error_ratio: str = "0.05"
    drift_share: str = "0.2"
    prediction_jsd: str = "0.1"
    latency_for: str = "10m"
    errors_for: str = "5m"
    drift_for: str = "15m"
    down_for: str = "2m"
    window: str = "5m"
    server_job: str = "pillars-model-server"


DRIFTED_FEATURES = ('{{ range query (printf `sort_desc(topk(5, pillars_drift_feature_jsd{model=%q,version=%q} and on '
                    '(model, version, feature) pillars_drift_feature_drifted == 1))` $labels.model $labels.version) }}'
                    '{{ .Labels.feature }} {{ end }}')
"""Annotation text naming (up to five of) the drifted features, most distant first, from Prometheus at alert time."""


def _annotation(text: str, helm: bool) -> str:
    """Prometheus templates in annotations, escaped so Helm's ``tpl`` leaves them alone (only these
    parts: the settings, which may be Helm placeholders, are joined on unescaped)."""
    return text.replace("{{", '{{ "{{').replace("}}", '}}" }}') if helm else text


def rule_groups(s: AlertSettings = AlertSettings(), helm: bool = False) -> list[dict[str, Any]]:
    """The rule groups ``pillars-serving`` and ``pillars-drift``.

    The retraining alerts (``pillars_action: retrain``) each carry a ``signal`` label naming what fired them:
    ``weighted_drift`` (naming the drifted features), ``prediction_drift`` or ``estimated_accuracy``.
    """
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
             "expr": f"max by (namespace, model, version) (pillars_drift_weighted_share) >= {s.drift_share}",
             "for": s.drift_for, "labels": {"severity": "warning", "signal": "weighted_drift", **RETRAIN_LABEL},
             "annotations": {"summary": a("Model {{ $labels.model }} v{{ $labels.version }}: "
                                          "inputs it relies on drift"),
                             "description": a("{{ $value | humanizePercentage }}") + " of the model's reliance "
                                            "(feature importance at training) is on drifted features: "
                                            + a(DRIFTED_FEATURES) + "; retraining is requested."}},
            {"alert": "PillarsModelPredictionDrift",
             "expr": f"max by (namespace, model, version) (pillars_drift_prediction_jsd) >= {s.prediction_jsd}",
             "for": s.drift_for, "labels": {"severity": "warning", "signal": "prediction_drift", **RETRAIN_LABEL},
             "annotations": {"summary": a("Model {{ $labels.model }} v{{ $labels.version }}: predictions drift"),
                             "description": a("The predicted distribution is {{ $value | printf `%.3f` }}") +
                                            " (JS distance) from the training labels'; retraining is requested."}},
            {"alert": "PillarsModelEstimatedAccuracyLow",
             "expr": "max by (namespace, model, version) (pillars_performance_estimated_accuracy) "
                     "< on (namespace, model, version) "
                     "max by (namespace, model, version) (pillars_performance_accuracy_threshold)",
             "for": s.drift_for, "labels": {"severity": "warning", "signal": "estimated_accuracy", **RETRAIN_LABEL},
             "annotations": {"summary": a("Model {{ $labels.model }} v{{ $labels.version }}: estimated accuracy "
                                          "{{ $value | humanizePercentage }}"),
                             "description": "The accuracy estimated without labels (CBPE) is below the gate's "
                                            "threshold; retraining is requested."}},
        ]},
    ]


def rules_file(s: AlertSettings = AlertSettings()) -> str:
    """A Prometheus rules file (``rule_files``) with these groups."""
    return yaml.safe_dump({"groups": rule_groups(s)}, sort_keys=False)


HELM_SETTINGS = AlertSettings(
    latency_p99_seconds="{{ .Values.monitoring.rules.latencyP99Seconds }}",
    error_ratio="{{ .Values.monitoring.rules.errorRatio }}",
    drift_share="{{ .Values.monitoring.rules.driftShare }}",
    prediction_jsd="{{ .Values.monitoring.rules.predictionJsd }}",
    latency_for="{{ .Values.monitoring.rules.for }}",
    errors_for="{{ .Values.monitoring.rules.errorsFor }}",
    drift_for="{{ .Values.monitoring.rules.driftFor }}",
    down_for="{{ .Values.monitoring.rules.downFor }}",
)


def helm_rules_file() -> str:
    """The groups with Helm value placeholders, for the chart to render with ``tpl``."""
    header = "# Generated by `pillars alerts --helm` from serving/monitoring/alerts.py: edit that, not this.\n"
    return header + yaml.safe_dump(rule_groups(HELM_SETTINGS, helm=True), sort_keys=False, width=1000)
