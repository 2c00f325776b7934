"""Estimated accuracy without labels (CBPE) over a sliding window, per served model version.

A classifier trained by Pillars carries a :class:`pillars.components.evaluation.calibration.Calibration`
(a temperature fitted on its validation split). For every forward pass the server keeps each row's
probabilities in a fixed ring buffer of the last ``window`` rows; the mean calibrated top-class probability
over the buffer is the estimated accuracy of those predictions. Cost on the request path: a copy of the batch's
probabilities into a fixed ring (``window x classes`` float32), per micro-batch; the calibration is applied
over the ring when the estimate is read (a scrape, the performance route).

A forecaster estimates its error from its own quantiles instead: :class:`~pillars.serving.monitoring.
uncertainty.IntervalEstimator` (estimated MAE from the 10-90% interval width). A model without either (a plain
regressor, a classifier trained before calibration existed, an unreadable calibration) gets no estimator:
:func:`estimator_for` returns None with the reason, the metadata route says ``unavailable`` or ``not
estimable`` with that reason, and no estimated series is exported, so nothing is ever invented.

Series (:class:`PerformanceStats`, labels ``model``, ``version``):

- ``pillars_performance_estimated_accuracy``: mean calibrated confidence over the window, once it holds
  ``min_rows`` rows;
- ``pillars_performance_expected_accuracy``: what the model expected of itself on its validation split;
- ``pillars_performance_estimated_mae``: a forecaster's estimated MAE of its median forecast (from its
  quantiles), and ``pillars_performance_interval_width`` the mean 10-90% interval width it comes from;
- ``pillars_performance_estimate_rows``: rows in the window;
- ``pillars_performance_estimate_available``: 1 when the version has a calibration, else 0;
- ``pillars_performance_accuracy_threshold``: the accuracy the task's gate requires by default (its
  ``thresholds["accuracy"]``; absent when it sets none): the estimated-accuracy alert compares with it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily, Metric

from pillars.components.evaluation.calibration import Calibration, read_calibration
from pillars.serving.monitoring.per_model import PerModelCollector
from pillars.serving.monitoring.uncertainty import IntervalEstimator

PROBABILITIES = "probabilities"
"""The classifier output the estimate reads (every ``ClassificationTask`` returns it)."""


class AccuracyEstimator:
    """The last ``window`` rows' calibrated confidences; their mean is the estimated accuracy.

    Args:
        calibration: the served version's calibration.
        window: rows kept (fixed memory: ``window`` float64).
        min_rows: rows needed before an estimate is given (fewer: too noisy to alert on).
    """

    def __init__(self, calibration: Calibration, window: int = 1000, min_rows: int = 100) -> None:
        if window < 1 or not 1 <= min_rows <= window:
            raise ValueError(f"need 1 <= min_rows <= window, got min_rows={min_rows}, window={window}")
        self.calibration = calibration
        self.window = window
        self.min_rows = min_rows
        self._ring: np.ndarray | None = None  # [window, classes] float32, sized by the first batch
        self._next = 0
        self._filled = 0
        self._lock = threading.Lock()

    def observe(self, outputs: Mapping[str, np.ndarray]) -> None:
        """Add a batch's rows (its ``probabilities`` output): a copy into the ring; the calibration is applied
        when the estimate is read (at scrape time), not on the request path."""
        probabilities = outputs.get(PROBABILITIES)
        if probabilities is None or len(probabilities) == 0:
            return
        values = probabilities.reshape(len(probabilities), -1)[-self.window:]
        with self._lock:
            if self._ring is None or self._ring.shape[1] != values.shape[1]:
                self._ring = np.zeros((self.window, values.shape[1]), dtype=np.float32)
                self._next = self._filled = 0
            end = self._next + len(values)
            if end <= self.window:
                self._ring[self._next:end] = values
            else:
                split = self.window - self._next
                self._ring[self._next:] = values[:split]
                self._ring[:end - self.window] = values[split:]
            self._next = end % self.window
            self._filled = min(self.window, self._filled + len(values))

    @property
    def rows(self) -> int:
        with self._lock:
            return self._filled

    def estimate(self) -> float | None:
        """The estimated accuracy of the window, or None while it holds fewer than ``min_rows`` rows."""
        with self._lock:
            if self._ring is None or self._filled < self.min_rows:
                return None
            rows = self._ring[:self._filled].copy()
        return float(self.calibration.confidence(rows).mean())


def estimator_for(kind: str, extra: Mapping[str, Any], window: int, min_rows: int
                  ) -> tuple[AccuracyEstimator | IntervalEstimator | None, str]:
    """The estimator of a model version, or None and why the estimate is unavailable.

    Args:
        kind: the task's kind (``classification``: accuracy by CBPE; ``forecasting``: MAE from the quantiles).
        extra: the saved config's ``extra`` (where the calibration is kept).
    """
    if kind == "forecasting":
        return IntervalEstimator(window, min_rows), "available: MAE estimated from the forecast's 10-90% quantiles"
    if kind != "classification":
        return None, f"not estimable: a {kind} model's accuracy cannot be estimated from its outputs"
    try:
        calibration = read_calibration(extra)
    except (ValueError, KeyError, TypeError) as e:
        return None, f"unavailable: the model's calibration cannot be read ({e})"
    if calibration is None:
        return None, "unavailable: the model has no calibration (train it again to store one)"
    return AccuracyEstimator(calibration, window, min_rows), "available"


@dataclass(frozen=True)
class _Entry:
    version: str
    estimator: AccuracyEstimator | IntervalEstimator | None
    status: str
    threshold: float | None


class PerformanceStats(PerModelCollector[_Entry]):
    """The served versions' estimators, read at scrape time."""

    def register_model(self, model: str, version: str, estimator: AccuracyEstimator | IntervalEstimator | None,
                       status: str,
                       threshold: float | None = None) -> None:
        """Export ``estimator`` for ``model`` at ``version`` (replacing the previous version's), with the gate's
        accuracy threshold of its task (None: the task sets none)."""
        self.put(model, _Entry(version, estimator, status, threshold))

    def describe_model(self, model: str) -> dict[str, Any]:
        """What the metadata route shows: status, estimate (None when there is none), window rows, expected."""
        entry = self.entry(model)
        if entry is None:
            return {"status": "unavailable: not loaded", "estimated_accuracy": None}
        described: dict[str, Any] = {"version": entry.version, "status": entry.status, "estimated_accuracy": None}
        if isinstance(entry.estimator, IntervalEstimator):
            described.update(estimated_mae=entry.estimator.estimate(), window_rows=entry.estimator.rows,
                             min_rows=entry.estimator.min_rows, interval_width=entry.estimator.interval_width())
        elif entry.estimator is not None:
            calibration = entry.estimator.calibration
            described.update(estimated_accuracy=entry.estimator.estimate(), window_rows=entry.estimator.rows,
                             min_rows=entry.estimator.min_rows, expected_accuracy=calibration.expected_accuracy,
                             temperature=calibration.temperature)
        return described

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "version"]
        estimated = GaugeMetricFamily("pillars_performance_estimated_accuracy",
                                      "Estimated accuracy (CBPE: mean calibrated confidence) over the window.",
                                      labels=labels)
        expected = GaugeMetricFamily("pillars_performance_expected_accuracy",
                                     "Accuracy the model expected of itself on its validation split.", labels=labels)
        rows = GaugeMetricFamily("pillars_performance_estimate_rows", "Rows in the estimate's window.",
                                 labels=labels)
        threshold = GaugeMetricFamily("pillars_performance_accuracy_threshold",
                                      "The accuracy the task's gate requires by default: the estimated-accuracy "
                                      "alert fires below it.", labels=labels)
        mae = GaugeMetricFamily("pillars_performance_estimated_mae",
                                "A forecaster's estimated MAE of its median forecast, from its 10-90% quantiles, "
                                "over the window.", labels=labels)
        width = GaugeMetricFamily("pillars_performance_interval_width",
                                  "A forecaster's mean 10-90% interval width over the window.", labels=labels)
        available = GaugeMetricFamily("pillars_performance_estimate_available",
                                      "1 when the served version can estimate its performance (a classifier with "
                                      "a calibration, a forecaster with quantiles).",
                                      labels=labels)
        for model, entry in self.entries():
            available.add_metric([model, entry.version], float(entry.estimator is not None))
            if entry.threshold is not None:
                threshold.add_metric([model, entry.version], entry.threshold)
            if entry.estimator is None:
                continue
            rows.add_metric([model, entry.version], entry.estimator.rows)
            if isinstance(entry.estimator, IntervalEstimator):
                if (value := entry.estimator.estimate()) is not None:
                    mae.add_metric([model, entry.version], value)
                    width.add_metric([model, entry.version], entry.estimator.interval_width() or 0.0)
                continue
            expected.add_metric([model, entry.version], entry.estimator.calibration.expected_accuracy)
            value = entry.estimator.estimate()
            if value is not None:
                estimated.add_metric([model, entry.version], value)
        yield from (estimated, expected, rows, available, threshold, mae, width)


PERFORMANCE = PerformanceStats()
REGISTRY.register(PERFORMANCE)
