"""The forecasting task: data and split, the floor against seasonal naive, behaviour, bad inputs, the served path."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import torch

from pillars.components.errors import ConfigError, DataError
from pillars.components.model.predictor import load_predictor, save_model
from pillars.components.task import DataParams, InputError, load_task
from pillars.tasks.forecasting import SERIES, Forecasting, read_series
from tests.tasks.conftest import Trained, train_in_process

REFERENCE = "pillars.tasks.forecasting:Forecasting"
SMALL = {"hidden": 64}
"""The test's task arguments (weekly CO2, 104 weeks of context, 13 weeks ahead, a narrower MLP)."""
EPOCHS = 5


@pytest.fixture(scope="module")
def trained() -> Trained:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny MLP: one thread is several times faster than two on a busy machine
    started = time.monotonic()
    try:
        result = train_in_process(Forecasting(**SMALL), epochs=EPOCHS)
    finally:
        torch.set_num_threads(threads)
    print(f"\nforecasting: trained {EPOCHS} epochs on {len(result.data.train['history'])} windows "
          f"in {time.monotonic() - started:.1f} s")
    return result


def predict(trained: Trained, history: np.ndarray) -> dict[str, np.ndarray]:
    return trained.predict({"history": np.asarray(history, dtype=np.float32)})


# ---- data ------------------------------------------------------------------------------------------------

def test_co2_missing_weeks_are_interpolated_linearly():
    values, missing = read_series(SERIES["co2"])
    assert len(values) == 2284 and missing == 59
    assert np.isfinite(values).all()
    assert values[5] == pytest.approx(316.9) and values[7] == pytest.approx(317.5)
    assert values[6] == pytest.approx(317.2)  # 1958-05-10 is missing in the CSV


def test_a_missing_data_package_is_one_line_naming_what_to_install():
    gone = dataclasses.replace(SERIES["co2"], distribution="no-such-distribution", requirement="no-such-distribution")
    with pytest.raises(DataError, match="pip install 'no-such-distribution'"):
        read_series(gone)
    moved = dataclasses.replace(SERIES["co2"], path="statsmodels/datasets/co2/gone.csv")
    with pytest.raises(DataError, match="pip install 'statsmodels>=0.14'.*gone.csv"):
        read_series(moved)


def test_split_is_chronological_and_no_target_leaks_into_an_earlier_split():
    task = Forecasting(**SMALL)
    data = task.load_data(DataParams())
    periods = data.info["periods"]
    assert periods["train"][1] == periods["val"][0] and periods["val"][1] == periods["test"][0]
    assert periods["test"][1] == data.info["length"]
    for name, split in data.splits().items():
        start, stop = periods[name]
        origins = split["origin"]
        assert origins.min() >= max(start, task.context) and origins.max() + task.horizon <= stop, name
        assert np.all(np.diff(origins) == 1), name
        # consecutive windows are the same series one step on: the window really ends where its target begins
        assert np.array_equal(split["history"][1:, :-1], split["history"][:-1, 1:]), name
        assert np.array_equal(split["target"][:-1, 0], split["history"][1:, -1]), name
    assert data.train["origin"].max() + task.horizon <= data.val["origin"].min()
    assert data.val["origin"].max() + task.horizon <= data.test["origin"].min()
    assert task.load_data(DataParams(seed=7)).test["history"].tobytes() == data.test["history"].tobytes()


def test_every_shipped_series_loads_into_three_nonempty_splits():
    for series, args in {"sunspots": {"context": 33, "horizon": 5}, "elnino": {"context": 48, "horizon": 6}}.items():
        data = Forecasting(series=series, **args).load_data(DataParams())
        assert data.info["season"] == SERIES[series].season
        assert all(len(split["history"]) > 20 for split in data.splits().values()), series


# ---- the floor -------------------------------------------------------------------------------------------

def test_forecast_beats_seasonal_naive_on_the_test_windows(trained):
    test = trained.data.test
    target = test["target"].astype(np.float64)
    forecast = predict(trained, test["history"])["forecast"].astype(np.float64)
    naive = test["history"][:, -52:-52 + 13].astype(np.float64)  # the value one year (52 weeks) earlier
    mae, mae_naive = np.abs(forecast - target).mean(), np.abs(naive - target).mean()
    rmse, rmse_naive = np.sqrt(((forecast - target) ** 2).mean()), np.sqrt(((naive - target) ** 2).mean())
    print(f"forecasting test ({len(target)} windows): MASE {mae / mae_naive:.3f}; MAE {mae:.3f} vs "
          f"seasonal naive {mae_naive:.3f}; RMSE {rmse:.3f} vs {rmse_naive:.3f} ppm")
    assert mae / mae_naive < 1.0
    metrics = trained.evaluate("test")
    assert metrics["mase"] == pytest.approx(mae / mae_naive, rel=1e-4)
    assert metrics["mae_seasonal_naive"] == pytest.approx(mae_naive, rel=1e-6)
    assert metrics["rmse"] == pytest.approx(rmse, rel=1e-4)
    assert 0.5 < metrics["coverage_p10_p90"] <= 1.0


# ---- behaviour -------------------------------------------------------------------------------------------

def test_shifting_the_history_shifts_the_forecast_by_the_same_offset(trained):
    history = trained.data.test["history"][:50]
    base, shifted = predict(trained, history), predict(trained, history + 50.0)
    for name in base:
        np.testing.assert_allclose(shifted[name], base[name] + 50.0, atol=2e-3, err_msg=name)


def test_scaling_the_history_scales_the_forecast(trained):
    history = trained.data.test["history"][:50]
    base, scaled = predict(trained, history), predict(trained, history * 0.01)
    for name in base:
        np.testing.assert_allclose(scaled[name], base[name] * 0.01, rtol=1e-4, err_msg=name)


def test_a_constant_history_forecasts_that_constant(trained):
    for value in (0.0, 1.0, 380.5, -7.25):
        outputs = predict(trained, np.full((2, 104), value))
        for name, forecast in outputs.items():
            np.testing.assert_allclose(forecast, value, atol=1e-3 * (1 + abs(value)), err_msg=f"{name} {value}")


def test_a_recent_rise_in_level_raises_the_forecast(trained):
    history = trained.data.test["history"][:100].astype(np.float64)
    raised = history.copy()
    raised[:, -13:] += 1.0  # the last quarter 1 ppm higher than it was
    change = predict(trained, raised)["forecast"] - predict(trained, history)["forecast"]
    assert np.all(change.mean(axis=0) > 0.2), change.mean(axis=0)
    assert np.all(change.mean(axis=1) > 0)
    assert np.all(change.mean(axis=0) < 1.5), change.mean(axis=0)  # and no more than it was raised, give or take


def test_quantiles_are_ordered(trained):
    outputs = predict(trained, trained.data.test["history"])
    assert np.all(outputs["forecast_p10"] <= outputs["forecast"])
    assert np.all(outputs["forecast"] <= outputs["forecast_p90"])
    assert np.any(outputs["forecast_p10"] < outputs["forecast_p90"])


def test_a_longer_history_is_read_from_its_last_context_values(trained):
    history = trained.data.test["history"][:20]
    longer = np.concatenate([np.full((20, 60), 999.0, dtype=np.float32), history], axis=1)
    for name, values in predict(trained, longer).items():
        np.testing.assert_array_equal(values, predict(trained, history)[name], err_msg=name)


def test_forecasts_are_deterministic_and_independent_of_the_batch(trained):
    history = trained.data.test["history"][:40]
    first, second = predict(trained, history), predict(trained, history)
    alone = predict(trained, history[7:8])
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])
        np.testing.assert_allclose(alone[name][0], first[name][7], rtol=1e-6, err_msg=name)


def test_drift_features_are_level_scale_and_last_value_of_the_window(trained):
    history = np.concatenate([np.zeros((3, 10)), trained.data.test["history"][:3].astype(np.float64)], axis=1)
    features = trained.task.drift_features({"history": history}, trained.prep)
    window = history[:, -104:]
    assert sorted(features) == ["last", "level", "scale"]
    np.testing.assert_allclose(features["level"], window.mean(axis=1))
    np.testing.assert_allclose(features["scale"], window.std(axis=1))
    np.testing.assert_array_equal(features["last"], window[:, -1])


# ---- bad inputs ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("history, problem", [
    (np.zeros((2, 103), dtype=np.float32), "too short"),
    (np.concatenate([np.zeros((2, 103)), [[np.nan], [1.0]]], axis=1).astype(np.float32), "NaN or Inf"),
    (np.concatenate([np.zeros((2, 103)), [[1.0], [np.inf]]], axis=1).astype(np.float32), "NaN or Inf"),
    (np.zeros(104, dtype=np.float32), "expected shape"),
])
def test_bad_histories_are_refused_naming_the_input(trained, history, problem):
    with pytest.raises(InputError, match=f"'history'.*{problem}"):
        trained.task.encode({"history": history}, trained.prep)


def test_missing_history_is_refused_naming_the_input(trained):
    with pytest.raises(InputError, match="'history'"):
        trained.task.encode({}, trained.prep)


# ---- the served path -------------------------------------------------------------------------------------

def test_the_saved_model_serves_the_same_forecasts(trained, tmp_path):
    save_model(trained.task, REFERENCE, trained.prep, trained.model, tmp_path / "model")
    predictor = load_predictor(tmp_path / "model")
    assert predictor.task == trained.task
    history = trained.data.test["history"][:16]
    served = predictor.predict({"history": history.tolist()})
    for name, values in predict(trained, history).items():
        np.testing.assert_array_equal(served[name], values, err_msg=name)
        assert served[name].dtype == np.float32 and served[name].shape == (16, 13)
    longer = np.concatenate([history, history], axis=1)
    np.testing.assert_array_equal(predictor.predict({"history": longer})["forecast"], served["forecast"])
    with pytest.raises(InputError, match="'history'.*too short"):
        predictor.predict({"history": history[:, :50]})
    with pytest.raises(InputError, match="'history'"):
        predictor.predict({"history": np.full((1, 104), np.nan, dtype=np.float32)})
    with pytest.raises(InputError, match="'history'"):
        predictor.predict({"history": np.array([["a"] * 104])})
    with pytest.raises(InputError, match="'history'"):
        predictor.predict({"history": np.zeros((1, 5000), dtype=np.float32)})
    names, rows = predictor.drift_rows(predictor.check({"history": history}))
    assert names == ["level", "scale", "last"] and rows.shape == (16, 3)


def test_the_task_is_found_by_its_entry_point_with_its_arguments():
    task = load_task("forecasting", {"series": "sunspots", "context": 33, "horizon": 5})
    assert isinstance(task, Forecasting) and task.period == 11
    assert task.signature({}).input("history").max_length == task.max_history


@pytest.mark.parametrize("args, problem", [
    ({"series": "gold"}, "unknown series"),
    ({"context": 40}, "seasonal-naive"),
    ({"horizon": 0}, "horizon"),
    ({"max_history": 50}, "max_history"),
])
def test_bad_task_arguments_are_refused(args, problem):
    with pytest.raises(ConfigError, match=problem):
        Forecasting(**args)
