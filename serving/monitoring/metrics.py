"""Prometheus metrics of the model server, defined once (base units, bounded labels).

They live in prometheus-client's default registry, which KServe already serves on ``/metrics``
next to its own ``request_*_seconds`` histograms.

Nothing here lets a scrape reconstruct a request: no running sums of input values, no per-class
prediction counters (two scrapes around one request would give back its feature vector and its
prediction). Drift is published as per-feature drift scores over a window of many rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from pillars.serving.monitoring.per_model import PerModelCollector

if TYPE_CHECKING:
    from pillars.serving.monitoring.drift import DriftMonitor

MAX_FEATURE_LABELS = 256
"""Models with more input values than this (images) get one aggregate series instead of one per feature."""

REQUESTS = Counter(
    "pillars_serving_requests",
    "Inference requests by model, version, protocol (v1, v2, grpc) and status (HTTP code or gRPC code name).",
    ["model", "version", "protocol", "status"],
)
REQUEST_SECONDS = Histogram(
    "pillars_serving_request_seconds",
    "Inference request latency as the server sees it, from first byte to response (by version too: a canary's "
    "latency is compared with its champion's).",
    ["model", "version", "protocol"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
)
BATCH_SIZE = Histogram(
    "pillars_serving_batch_size",
    "Rows per forward pass after micro-batching.",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
BATCH_REQUESTS = Histogram(
    "pillars_serving_batch_requests",
    "Requests merged into one forward pass.",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
INFERENCE_SECONDS = Histogram(
    "pillars_serving_inference_seconds",
    "Latency of one forward pass (a whole micro-batch).",
    ["model"],
    buckets=(0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0),
)
_REQUEST_SERIES: dict[tuple[str, str, str, str], tuple[Any, Any]] = {}


def observe_request(model: str, version: str, protocol: str, status: str, seconds: float) -> None:
    """Count one inference request in :data:`REQUESTS` and time it in :data:`REQUEST_SECONDS`, through series
    looked up once per label set (the labels are bounded: served models or ``unknown``, status codes)."""
    key = (model, version, protocol, status)
    series = _REQUEST_SERIES.get(key)
    if series is None:
        series = _REQUEST_SERIES[key] = (REQUESTS.labels(model, version, protocol, status),
                                         REQUEST_SECONDS.labels(model, version, protocol))
    series[0].inc()
    series[1].observe(seconds)


RELOAD_FAILURES = Counter(
    "pillars_model_reload_failures",
    "Hot reloads refused or failed, by model and reason (download, load, warm_up, schema); the served "
    "version keeps serving.",
    ["model", "reason"],
)


class DriftStats(PerModelCollector["tuple[str, DriftMonitor]"]):
    """The drift monitors' latest results, read at scrape time (nothing is computed here).

    Series (labels ``model``, ``version`` and, per feature, ``feature``; a model with more than
    :data:`MAX_FEATURE_LABELS` inputs gets ``feature="all"``: mean JSD and PSI, smallest KS p-value,
    the model's drift flag and the summed out-of-range count):

    - ``pillars_drift_feature_jsd``, ``pillars_drift_feature_psi``, ``pillars_drift_feature_ks_pvalue``
      (only when the profile keeps a reference sample), ``pillars_drift_feature_drifted`` (0/1);
    - ``pillars_drift_share`` (drifted features / features), ``pillars_drift_detected`` (0/1),
      ``pillars_drift_prediction_jsd``: present once the window holds the minimum rows;
    - ``pillars_drift_weighted_share`` (importance-weighted share of drifted features; equal weights for a model
      without importances) and ``pillars_drift_feature_importance`` (per feature, normalised to sum 1, only for
      a model that carries importances);
    - ``pillars_drift_window_rows`` and the counter ``pillars_input_out_of_range_total``: always.
    """

    def register_model(self, model: str, version: str, monitor: DriftMonitor | None) -> None:
        """Export ``monitor`` for ``model`` at ``version``, replacing the previous one (None: stop exporting)."""
        self.put(model, None if monitor is None else (version, monitor))

    def collect(self) -> Iterator[Metric]:
        feature_labels = ["model", "version", "feature"]
        model_labels = ["model", "version"]
        jsd = GaugeMetricFamily("pillars_drift_feature_jsd",
                                "Jensen-Shannon distance (base 2) of the window vs the training histogram.",
                                labels=feature_labels)
        psi = GaugeMetricFamily("pillars_drift_feature_psi",
                                "Population stability index of the window vs the training histogram.",
                                labels=feature_labels)
        ks = GaugeMetricFamily("pillars_drift_feature_ks_pvalue",
                               "Two-sample KS test p-value of the window vs the profile's reference sample.",
                               labels=feature_labels)
        drifted = GaugeMetricFamily("pillars_drift_feature_drifted",
                                    "1 when the feature drifted by the configured method and threshold.",
                                    labels=feature_labels)
        share = GaugeMetricFamily("pillars_drift_share", "Share of drifted features (0..1).", labels=model_labels)
        detected = GaugeMetricFamily("pillars_drift_detected",
                                     "1 when the share of drifted features reaches the configured drift share.",
                                     labels=model_labels)
        prediction = GaugeMetricFamily("pillars_drift_prediction_jsd",
                                       "Jensen-Shannon distance of the predicted distribution vs the training labels.",
                                       labels=model_labels)
        rows = GaugeMetricFamily("pillars_drift_window_rows", "Rows in the drift window.", labels=model_labels)
        weighted = GaugeMetricFamily("pillars_drift_weighted_share",
                                     "Share of the model's reliance (permutation importance at training) on drifted "
                                     "features (0..1); the plain share when the model carries no importances.",
                                     labels=model_labels)
        importance = GaugeMetricFamily("pillars_drift_feature_importance",
                                       "The feature's share of the model's permutation importance at training.",
                                       labels=feature_labels)
        outside = CounterMetricFamily("pillars_input_out_of_range",
                                      "Served input values outside the training split's [min, max].",
                                      labels=feature_labels)
        for model, (version, monitor) in self.entries():
            names = monitor.feature_names
            counts = monitor.out_of_range_counts()
            report = monitor.report
            rows.add_metric([model, version], monitor.window_rows)
            pooled = len(names) > MAX_FEATURE_LABELS
            if monitor.importance is not None and not pooled:
                for name, value in zip(names, monitor.importance, strict=True):
                    importance.add_metric([model, version, name], float(value))
            if pooled:
                outside.add_metric([model, version, "all"], int(counts.sum()))
            else:
                for name, count in zip(names, counts, strict=True):
                    outside.add_metric([model, version, name], int(count))
            if report is None:
                continue
            share.add_metric([model, version], report.share)
            detected.add_metric([model, version], float(report.detected))
            prediction.add_metric([model, version], report.prediction_jsd)
            weighted.add_metric([model, version], report.weighted_share)
            if pooled:
                jsd.add_metric([model, version, "all"], float(report.jsd.mean()))
                psi.add_metric([model, version, "all"], float(report.psi.mean()))
                drifted.add_metric([model, version, "all"], float(report.detected))
                if report.ks_pvalue is not None:
                    ks.add_metric([model, version, "all"], float(report.ks_pvalue.min()))
                continue
            for i, name in enumerate(names):
                jsd.add_metric([model, version, name], float(report.jsd[i]))
                psi.add_metric([model, version, name], float(report.psi[i]))
                drifted.add_metric([model, version, name], float(report.drifted[i]))
                if report.ks_pvalue is not None:
                    ks.add_metric([model, version, name], float(report.ks_pvalue[i]))
        yield from (jsd, psi, ks, drifted, share, detected, prediction, rows, outside, weighted, importance)


DRIFT = DriftStats()
REGISTRY.register(DRIFT)
