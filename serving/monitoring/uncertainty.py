"""Estimated error of a forecaster without labels, from its own quantiles, over a sliding window.

The forecasting task (:mod:`pillars.tasks.forecasting`) answers, beside its median ``forecast``, the 10% and
90% quantiles of each future value (``forecast_p10``, ``forecast_p90``): the model's own uncertainty. If those
quantiles are calibrated and the error around the median is roughly normal, the 10-90% interval spans
``2 * 1.2816`` standard deviations and the median's expected absolute error is ``sqrt(2 / pi)`` of one, so

    estimated MAE = (p90 - p10) * sqrt(2 / pi) / (2 * 1.2816) ~= 0.311 * (p90 - p10)

averaged over the window's rows and horizon steps. This is the forecaster's estimate the way CBPE is the
classifier's (:mod:`pillars.serving.monitoring.performance`): what the model believes of its error, which
tracks the realised error only as far as its quantiles were calibrated (the task's ``coverage_10_90`` test
metric says how far). A wider interval on live data than at training says the model is less sure: the series
rises before any label arrives.

A plain regressor answers one value and no spread: it stays declared "not estimable".

Cost on the request path: the batch's mean interval width per row copied into a fixed ring of ``window``
floats.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping

import numpy as np

LOWER, UPPER = "forecast_p10", "forecast_p90"
"""The quantile outputs the estimate reads."""
MAE_PER_WIDTH = math.sqrt(2 / math.pi) / (2 * 1.2815515655446004)
"""Expected absolute error of the median per unit of 10-90% interval width, for a normal error."""


class IntervalEstimator:
    """The last ``window`` rows' 10-90% interval widths; the estimated MAE is :data:`MAE_PER_WIDTH` times their
    mean.

    Args:
        window: rows kept (fixed memory: ``window`` float64).
        min_rows: rows needed before an estimate is given.
    """

    def __init__(self, window: int = 1000, min_rows: int = 100) -> None:
        if window < 1 or not 1 <= min_rows <= window:
            raise ValueError(f"need 1 <= min_rows <= window, got min_rows={min_rows}, window={window}")
        self.window = window
        self.min_rows = min_rows
        self._ring = np.zeros(window, dtype=np.float64)
        self._next = 0
        self._filled = 0
        self._lock = threading.Lock()

    def observe(self, outputs: Mapping[str, np.ndarray]) -> None:
        """Add a batch's rows (their ``forecast_p10``/``forecast_p90``; a batch without both is ignored)."""
        lower, upper = outputs.get(LOWER), outputs.get(UPPER)
        if lower is None or upper is None or len(lower) == 0:
            return
        widths = (np.asarray(upper, dtype=np.float64) - np.asarray(lower, dtype=np.float64))
        widths = widths.reshape(len(widths), -1).mean(axis=1)[-self.window:]
        with self._lock:
            end = self._next + len(widths)
            if end <= self.window:
                self._ring[self._next:end] = widths
            else:
                split = self.window - self._next
                self._ring[self._next:] = widths[:split]
                self._ring[:end - self.window] = widths[split:]
            self._next = end % self.window
            self._filled = min(self.window, self._filled + len(widths))

    @property
    def rows(self) -> int:
        with self._lock:
            return self._filled

    def interval_width(self) -> float | None:
        """The window's mean 10-90% interval width, or None while it holds fewer than ``min_rows`` rows."""
        with self._lock:
            if self._filled < self.min_rows:
                return None
            return float(self._ring[:self._filled].mean())

    def estimate(self) -> float | None:
        """The estimated MAE of the window's median forecasts, or None while it holds too few rows."""
        width = self.interval_width()
        return None if width is None else width * MAE_PER_WIDTH
