"""Drift against the training profile: the statistics, the monitor, a real server's /metrics, and hot reload."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from scipy.spatial.distance import jensenshannon
from scipy.stats import ks_2samp

from pillars.components.model.mlflow_model import log_pillars_model
from pillars.components.model.predictor import load_predictor
from pillars.components.data.profile import build_profile
from pillars.serving.demo import v2_request
from pillars.serving.monitoring.drift import DriftConfig, DriftMonitor
from pillars.serving.monitoring.statistics import (js_distance, js_distances, ks_pvalue, ks_pvalues, overflow_histogram,
                                                   overflow_histograms, psi, psi_band, psis, with_overflow)
from pillars.serving.monitoring.metrics import DriftStats
from tests.serving.conftest import start_server
from tests.serving.test_metrics_and_batching import scrape
from tests.serving.toy import CLASSES, N_FEATURES, make_profiled_classifier, train_split

FEATURES = [f"f{i}" for i in range(N_FEATURES)]


def _monitor(config: DriftConfig | None = None, profile: dict | None = None) -> DriftMonitor:
    x, y = train_split()
    profile = profile or build_profile(x, y, FEATURES, "classification", CLASSES)
    return DriftMonitor(profile, FEATURES, "classification", CLASSES, config or DriftConfig())


def _outputs(n: int, class_index: int | None = None) -> dict[str, np.ndarray]:
    index = np.arange(n) % len(CLASSES) if class_index is None else np.full(n, class_index)
    return {"class_index": index.astype(np.int64)}


# ---- the statistics --------------------------------------------------------------------------------

def test_js_distance_is_zero_for_identical_one_for_disjoint_and_matches_scipy():
    p = np.array([10, 20, 30, 40])
    assert js_distance(p, p * 3) == pytest.approx(0.0, abs=1e-7)
    assert js_distance([5, 5, 0, 0], [0, 0, 1, 9]) == pytest.approx(1.0)
    assert js_distance([1, 0], [1, 1]) == pytest.approx(0.5579, abs=1e-4)  # by hand: sqrt(0.3113) bits
    q = np.array([1, 2, 3, 0])
    assert js_distance(p, q) == pytest.approx(jensenshannon(p / p.sum(), q / q.sum(), base=2))


def test_psi_is_zero_for_identical_known_for_a_shift_and_finite_for_empty_bins():
    assert psi([10, 20, 30], [1, 2, 3]) == pytest.approx(0.0, abs=1e-12)
    expected = -0.25 * np.log(0.5) + 0.25 * np.log(1.5)  # (a - e) ln(a / e) summed
    assert psi([50, 50], [25, 75]) == pytest.approx(expected)
    assert psi_band(0.05) == "none" and psi_band(0.2) == "moderate" and psi_band(expected) == "major"
    assert 5 < psi([10, 0], [0, 10]) < 20  # epsilon-floored, not infinite


def test_overflow_histogram_puts_values_outside_the_training_range_in_their_own_bins():
    edges = np.array([0.0, 1.0, 2.0])
    counts = overflow_histogram(np.array([-5.0, 0.0, 0.5, 1.0, 2.0, 2.0001, 9.0]), edges)
    assert counts.tolist() == [1, 2, 2, 2]  # below | [0, 1) | [1, 2] (closed, as np.histogram) | above
    assert with_overflow([3, 4]).tolist() == [0, 3, 4, 0]


def test_vectorised_statistics_equal_the_per_feature_ones_and_scipy():
    rng = np.random.default_rng(3)
    window, reference = rng.normal(size=(500, 5)), rng.normal(size=(200, 5))
    window[:, 1] += 0.3
    window[:, 2], reference[:, 2] = np.round(window[:, 2]), np.round(reference[:, 2])  # ties
    edges = np.stack([np.linspace(-2, 2, 11)] * 5)
    edges[:, -1] = window.max(axis=0)  # a value exactly on the last edge
    counts = overflow_histograms(window, edges)
    for j in range(5):
        assert counts[j].tolist() == overflow_histogram(window[:, j], edges[j]).tolist()
        assert js_distances(counts, counts[::-1])[j] == pytest.approx(js_distance(counts[j], counts[4 - j]))
        assert psis(counts, counts[::-1])[j] == pytest.approx(psi(counts[j], counts[4 - j]))
    expected = [ks_2samp(window[:, j], reference[:, j], method="asymp").pvalue for j in range(5)]
    np.testing.assert_allclose(ks_pvalues(window, reference), expected, rtol=1e-9)


def test_ks_pvalue_is_high_for_the_same_distribution_and_tiny_for_a_shift():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=200)
    assert ks_pvalue(rng.normal(size=1000), reference) > 0.05
    assert ks_pvalue(rng.normal(size=1000) + 1.0, reference) < 1e-6


# ---- the monitor, in-process ------------------------------------------------------------------------

def test_in_distribution_rows_do_not_drift_and_stay_in_range():
    monitor = _monitor()
    x, _ = train_split()
    rows = x[np.random.default_rng(1).choice(len(x), 1000)]
    for batch in np.array_split(rows, 40):
        monitor.observe(batch, _outputs(len(batch)))
    report = monitor.compute()
    assert report is not None and report.rows == 1000
    assert report.jsd.max() < 0.1 and report.psi.max() < 0.1 and report.ks_pvalue.min() > 0.001
    assert report.share < 0.5 and not report.detected
    assert monitor.out_of_range_counts().sum() == 0


@pytest.mark.parametrize("method", ["jsd", "psi", "ks"])
def test_features_scaled_three_times_drift_by_every_method(method):
    monitor = _monitor(DriftConfig(method=method))
    x, _ = train_split()
    shifted = 3 * x[:1000]
    monitor.observe(shifted, _outputs(1000, class_index=2))
    report = monitor.compute()
    assert report.drifted.all() and report.share == 1.0 and report.detected
    assert report.jsd.min() > 0.5 and report.psi.min() > 0.25 and report.ks_pvalue.max() < 1e-6
    assert report.prediction_jsd > 0.3  # all one class vs the training label shares
    assert (monitor.out_of_range_counts() > 300).all()


def test_nothing_is_reported_before_the_minimum_window_and_the_window_keeps_the_latest_rows():
    monitor = _monitor(DriftConfig(window=100, min_rows=50))
    monitor.observe(np.zeros((49, N_FEATURES), np.float32) + 5, _outputs(49))
    assert monitor.compute() is None and monitor.window_rows == 49
    rows = np.arange(130 * N_FEATURES, dtype=np.float32).reshape(130, N_FEATURES)
    monitor.observe(rows[:70], _outputs(70))
    monitor.observe(rows[70:], _outputs(60))  # wraps around the ring
    assert monitor.window_rows == 100
    window = monitor._inputs[np.argsort(monitor._inputs[:, 0])]
    np.testing.assert_array_equal(window, rows[30:])


def test_the_drift_share_decides_when_the_model_drifts():
    x, _ = train_split()
    half_shifted = x[:1000].copy()
    half_shifted[:, :2] *= 3  # two of four features
    for share, detected in ((0.5, True), (0.75, False)):
        monitor = _monitor(DriftConfig(share=share))
        monitor.observe(half_shifted, _outputs(1000))
        report = monitor.compute()
        assert report.drifted.tolist() == [True, True, False, False]
        assert report.share == 0.5 and report.detected is detected


def test_ks_without_a_reference_sample_falls_back_to_jsd():
    x, y = train_split()
    profile = build_profile(x, y, FEATURES, "classification", CLASSES)
    profile.pop("reference_sample")
    monitor = _monitor(DriftConfig(method="ks"), profile)
    monitor.observe(3 * x[:600], _outputs(600))
    report = monitor.compute()
    assert monitor.method == "jsd" and report.ks_pvalue is None and report.detected


def test_regressor_predictions_are_compared_with_the_label_histogram():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 3))
    y = x.sum(axis=1)
    profile = build_profile(x, y, ["a", "b", "c"], "regression", None)
    calm, shifted = (DriftMonitor(profile, ["a", "b", "c"], "regression", None, DriftConfig()) for _ in range(2))
    calm.observe(x[:1000].astype(np.float32), {"value": y[:1000].astype(np.float32)})
    shifted.observe(x[:1000].astype(np.float32), {"value": (y[:1000] + 10).astype(np.float32)})
    assert calm.compute().prediction_jsd < 0.1 < shifted.compute().prediction_jsd


def test_a_failing_observation_turns_the_monitor_off_instead_of_failing_the_request():
    monitor = _monitor()
    monitor.observe(train_split()[0][:10], {"class_index": np.zeros(3, np.int64)})  # outputs do not match rows
    assert monitor.failed
    monitor.observe(train_split()[0][:10], _outputs(10))
    assert monitor.window_rows == 0


def test_image_models_export_one_pooled_series_not_one_per_pixel():
    rng = np.random.default_rng(0)
    names = [f"p{i}" for i in range(300)]
    x = rng.uniform(0, 1, size=(1000, 300)).astype(np.float32)
    profile = build_profile(x, np.zeros(1000), names, "classification", ["a", "b"])
    monitor = DriftMonitor(profile, names, "classification", ["a", "b"], DriftConfig())
    monitor.observe(x[:600] + 2, {"class_index": np.zeros(600, np.int64)})
    monitor.compute()
    stats = DriftStats()
    stats.register_model("digits", "3", monitor)
    families = {f.name: f.samples for f in stats.collect()}
    assert [s.labels for s in families["pillars_drift_feature_jsd"]] == [
        {"model": "digits", "version": "3", "feature": "all"}]
    assert families["pillars_drift_feature_drifted"][0].value == 1.0
    assert families["pillars_input_out_of_range"][0].value == 600 * 300


def test_observing_a_batch_costs_microseconds():
    monitor = _monitor()
    batch, outputs = train_split()[0][:64], _outputs(64)
    for _ in range(100):
        monitor.observe(batch, outputs)
    times = []
    for _ in range(500):
        started = time.perf_counter()
        monitor.observe(batch, outputs)
        times.append(time.perf_counter() - started)
    assert np.median(times) < 100e-6  # ~10-20 us here; a forward pass of the same batch is ~100 us


# ---- a real server ----------------------------------------------------------------------------------

def _drift_metrics(server, name: str = "drifty") -> dict[str, dict[str, float]]:
    """``{metric: {feature or "": value}}`` of the drift series of ``name``."""
    out: dict[str, dict[str, float]] = {}
    for metric, series in scrape(server).items():
        if metric.startswith(("pillars_drift_", "pillars_input_out_of_range")):
            for labels, value in series.items():
                labels = dict(labels)
                if labels.get("model") == name:
                    out.setdefault(metric, {})[labels.get("feature", "")] = value
    return out


def _wait_for(condition, server, timeout: float = 15.0) -> dict[str, dict[str, float]]:
    deadline = time.monotonic() + timeout
    while True:
        found = _drift_metrics(server)
        if condition(found):
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in {timeout}s; drift metrics: {found}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def drifty(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("drifty")
    model_dir = make_profiled_classifier(root / "model")
    server = start_server(["--model_dir", str(model_dir), "--model_name", "drifty", "--drift_interval_s", "0.2"],
                          root / "server.log", model="drifty")
    yield server
    server.process.stop()


def test_server_reports_no_drift_for_train_rows_then_drift_for_rows_scaled_three_times(drifty):
    url = f"{drifty.http}/v2/models/drifty/infer"
    x, _ = train_split()
    rows = x[np.random.default_rng(2).choice(len(x), 1000)]
    with httpx.Client(timeout=30) as client:
        for batch in np.array_split(rows, 20):
            assert client.post(url, json=v2_request(batch)).status_code == 200
        calm = _wait_for(lambda m: m.get("pillars_drift_window_rows", {}).get("") == 1000
                         and "pillars_drift_share" in m, drifty)
        time.sleep(0.5)  # one more computation, over the full window
        calm = _drift_metrics(drifty)
        assert calm["pillars_drift_detected"][""] == 0 and calm["pillars_drift_share"][""] < 0.5
        assert max(calm["pillars_drift_feature_jsd"].values()) < 0.1
        assert set(calm["pillars_drift_feature_psi"]) == set(FEATURES)
        assert min(calm["pillars_drift_feature_ks_pvalue"].values()) > 0.001
        assert sum(calm["pillars_input_out_of_range_total"].values()) == 0

        for batch in np.array_split(3 * rows, 20):
            assert client.post(url, json=v2_request(batch)).status_code == 200
    drifted = _wait_for(lambda m: m.get("pillars_drift_detected", {}).get("") == 1, drifty)
    assert drifted["pillars_drift_share"][""] == 1.0
    assert all(v == 1 for v in drifted["pillars_drift_feature_drifted"].values())
    assert min(drifted["pillars_drift_feature_jsd"].values()) > 0.1
    assert max(drifted["pillars_drift_feature_ks_pvalue"].values()) < 0.05
    assert sum(drifted["pillars_input_out_of_range_total"].values()) > 1000
    assert drifted["pillars_drift_prediction_jsd"][""] > calm["pillars_drift_prediction_jsd"][""]


def test_a_model_without_a_profile_serves_without_drift_series(served):
    assert not any(dict(k).get("model") == "toy" for k in scrape(served).get("pillars_drift_window_rows", {}))


def test_bad_drift_flags_exit_with_status_2(tmp_path):
    from pillars.serving.__main__ import main

    model_dir = make_profiled_classifier(tmp_path / "model")
    assert main(["--model_dir", str(model_dir), "--drift_share", "1.5"]) == 2
    assert main(["--model_dir", str(model_dir), "--drift_threshold", "-1"]) == 2


# ---- hot reload ------------------------------------------------------------------------------------

def _register(model_dir: Path, name: str) -> str:
    with mlflow.start_run():
        info = log_pillars_model(model_dir, model_dir / "data_profile.json")
    return mlflow.register_model(info.model_uri, name).version


def test_moving_the_champion_alias_swaps_the_served_version_without_a_failed_request(
        tracking_uri, mlflow_server, tmp_path):
    name = "reloading"
    mlflow.set_experiment("serving-reload")
    v1_dir = make_profiled_classifier(tmp_path / "v1")
    v2_dir = make_profiled_classifier(tmp_path / "v2", steps=3, seed=1)
    MlflowClient().set_registered_model_alias(name, "champion", _register(v1_dir, name))
    server = start_server(["--model_uri", f"models:/{name}@champion", "--model_name", name,
                           "--reload_interval_s", "0.5", "--drift_interval_s", "0.2"],
                          tmp_path / "server.log", env={"MLFLOW_TRACKING_URI": mlflow_server}, model=name)
    rows = train_split()[0][:8]
    answers: list[tuple[int, str, list[float]]] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                response = http.post(f"{server.http}/v2/models/{name}/infer", json=v2_request(rows))
                body = response.json()
                outputs = {o["name"]: o["data"] for o in body.get("outputs", [])}
                answers.append((response.status_code, body.get("model_version", ""), outputs.get("probabilities")))

    sender = threading.Thread(target=client)
    try:
        sender.start()
        time.sleep(1.0)
        v2 = _register(v2_dir, name)
        MlflowClient().set_registered_model_alias(name, "champion", v2)
        deadline = time.monotonic() + 30
        while not (answers and answers[-1][1] == v2) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        stop.set()
        sender.join()
        metrics = scrape(server)
    finally:
        stop.set()
        server.process.stop()
    assert v2 == "2" and all(status == 200 for status, _, _ in answers), {s for s, _, _ in answers}
    versions = [version for _, version, _ in answers]
    switch = versions.index("2")
    assert switch > 0 and set(versions[:switch]) == {"1"} and set(versions[switch:]) == {"2"}
    for model_dir, answer in ((v1_dir, answers[0]), (v2_dir, answers[-1])):
        expected = load_predictor(model_dir).predict({"input-0": rows})["probabilities"]
        np.testing.assert_allclose(np.asarray(answer[2]).reshape(expected.shape), expected, rtol=1e-5, atol=1e-6)
    requests = metrics["pillars_serving_requests_total"]
    assert {dict(k)["version"] for k in requests if dict(k)["model"] == name} == {"1", "2"}
    assert [dict(k)["version"] for k in metrics["pillars_drift_window_rows"] if dict(k)["model"] == name] == ["2"]
    assert "now points to version 2 (was 1)" in server.process.log()
