"""A forecaster's label-free error estimate from its own 10-90% quantiles, and the series it exports; a plain
regressor stays "not estimable"."""

from __future__ import annotations

import numpy as np
import pytest

from pillars.serving.monitoring.performance import PerformanceStats, estimator_for
from pillars.serving.monitoring.uncertainty import IntervalEstimator

Z90 = 1.2815515655446004
"""The standard normal's 90% quantile."""


def _forecasts(rng: np.random.Generator, rows: int, horizon: int, sigma: np.ndarray, claimed: float):
    """Median forecasts, the truth drawn around them with ``sigma`` per row, and quantiles claiming
    ``claimed`` times the true spread (1: calibrated)."""
    median = rng.normal(100.0, 10.0, (rows, horizon))
    truth = median + rng.normal(0.0, 1.0, (rows, horizon)) * sigma[:, None]
    half = Z90 * claimed * sigma[:, None] * np.ones((1, horizon))
    outputs = {"forecast": median.astype(np.float32), "forecast_p10": (median - half).astype(np.float32),
               "forecast_p90": (median + half).astype(np.float32)}
    return outputs, float(np.abs(truth - median).mean())


def test_calibrated_quantiles_estimate_the_realised_mae_and_narrow_ones_underestimate_it():
    rng = np.random.default_rng(3)
    sigma = rng.uniform(0.5, 3.0, 4000)  # heteroscedastic: each row its own spread
    for claimed, low, high in ((1.0, 0.95, 1.05), (0.5, 0.45, 0.55)):
        outputs, realised = _forecasts(rng, 4000, 6, sigma, claimed)
        estimator = IntervalEstimator(window=4000, min_rows=100)
        for start in range(0, 4000, 250):  # micro-batches, as the server sees them
            estimator.observe({k: v[start:start + 250] for k, v in outputs.items()})
        assert low <= estimator.estimate() / realised <= high, (claimed, estimator.estimate(), realised)


def test_the_window_keeps_the_latest_rows_and_waits_for_min_rows():
    estimator = IntervalEstimator(window=4, min_rows=2)
    estimator.observe({"forecast_p10": np.zeros((1, 3)), "forecast_p90": np.full((1, 3), 2.0)})
    assert estimator.estimate() is None and estimator.rows == 1
    estimator.observe({"forecast_p10": np.zeros((5, 3)), "forecast_p90": np.full((5, 3), 4.0)})  # wraps
    assert estimator.rows == 4 and estimator.interval_width() == pytest.approx(4.0)
    estimator.observe({"forecast": np.zeros((2, 3))})  # no quantiles: nothing to read
    assert estimator.rows == 4


def test_a_forecaster_exports_its_estimated_mae_and_a_regressor_stays_not_estimable():
    estimator, status = estimator_for("forecasting", {}, 100, 10)
    assert isinstance(estimator, IntervalEstimator) and status.startswith("available")
    regressor, why = estimator_for("regression", {}, 100, 10)
    assert regressor is None and why.startswith("not estimable")
    stats = PerformanceStats()
    stats.register_model("sales", "3", estimator, status)
    stats.register_model("price", "1", regressor, why)
    estimator.observe({"forecast_p10": np.zeros((20, 2)), "forecast_p90": np.full((20, 2), 10.0)})
    samples = {(s.name, s.labels["model"]): s.value for family in stats.collect() for s in family.samples}
    assert samples[("pillars_performance_estimated_mae", "sales")] == pytest.approx(10.0 * 0.7978845608 / (2 * Z90))
    assert samples[("pillars_performance_interval_width", "sales")] == pytest.approx(10.0)
    assert samples[("pillars_performance_estimate_available", "sales")] == 1.0
    assert samples[("pillars_performance_estimate_available", "price")] == 0.0
    assert ("pillars_performance_estimated_mae", "price") not in samples
    assert ("pillars_performance_estimated_accuracy", "sales") not in samples
    described = stats.describe_model("sales")
    assert described["estimated_mae"] == pytest.approx(samples[("pillars_performance_estimated_mae", "sales")])
    assert stats.describe_model("price")["status"].startswith("not estimable")
