"""Ground truth and estimated performance through a real server: request ids on every protocol, the feedback
route (auth, bad input, duplicates, unknown ids, bounds), the realised accuracy equal to the offline one,
labels surviving a restart, and the CBPE estimate (present with a calibration, absent without)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from kserve import InferenceGRPCClient, InferInput, InferRequest

from pillars.components.evaluation.calibration import (calibrate, confidence, fit_temperature, platt_map,
                                                      read_calibration)
from pillars.components.model.predictor import load_predictor
from pillars.serving.demo import v2_request
from pillars.serving.monitoring.feedback import FeedbackLog, PredictionMemory
from pillars.serving.monitoring.performance import AccuracyEstimator, estimator_for
from pillars.serving.errors import BadFeedback
from pillars.serving.protocol.feedback_grpc import FeedbackRequest, submit_stub
from tests.serving.conftest import start_server
from tests.serving.test_metrics_and_batching import scrape
from tests.serving.toy import CLASSES, make_calibrated_classifier, make_classifier, toy_rows

TOKEN = "feedback-test-token"
MODEL = "fb"


def _start(root: Path, model_dir: Path, labels: Path, *extra: str):
    token_file = root / "token"
    token_file.write_text(TOKEN)
    return start_server(["--model_dir", str(model_dir), "--model_name", MODEL, "--auth-token-file", str(token_file),
                         "--feedback_dir", str(labels), "--feedback_max_batch", "500",
                         "--performance_min_rows", "50", "--metrics_open", *extra],
                        root / f"server-{time.monotonic_ns()}.log", model=MODEL, token=TOKEN)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_calibrated_classifier(tmp_path_factory.mktemp("fb-model") / "model")


@pytest.fixture(scope="module")
def labelled(model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("fb")
    server = _start(root, model_dir, root / "labels")
    server.temp_dir = root / "labels"
    yield server
    server.process.stop()


def _infer(client: httpx.Client, server, rows: np.ndarray, request_id: str | None = None) -> dict:
    body = v2_request(rows) | ({"id": request_id} if request_id else {})
    response = client.post(f"{server.http}/v2/models/{MODEL}/infer", json=body, headers=server.headers)
    assert response.status_code == 200, response.text
    return response.json()


def _feedback(client: httpx.Client, server, labels: list[dict], headers: dict | None = None) -> httpx.Response:
    return client.post(f"{server.http}/v2/models/{MODEL}/feedback", json={"labels": labels},
                       headers=server.headers if headers is None else headers)


def _rule(x: np.ndarray) -> np.ndarray:
    return (x[:, 0] > 5.0).astype(np.int64) + (x[:, 1] > 6.0).astype(np.int64)


def _realised(server) -> tuple[float, float]:
    samples = scrape(server)
    scored = sum(samples.get("pillars_feedback_scored_rows_total", {}).values())
    correct = sum(samples.get("pillars_feedback_correct_rows_total", {}).values())
    return scored, correct


# ---- units ------------------------------------------------------------------------------------------

def test_temperature_scaling_softens_overconfident_probabilities_and_keeps_the_argmax():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 2000)
    logits = rng.normal(0, 1, (2000, 3))
    logits[np.arange(2000), y] += 1.0  # right about 60% of the time ...
    overconfident = np.exp(4 * logits) / np.exp(4 * logits).sum(1, keepdims=True)  # ... but sure of itself
    t = fit_temperature(overconfident, y)
    assert 3.0 < t < 5.5
    calibration = calibrate(overconfident, y)
    assert abs(calibration.expected_accuracy - calibration.val_accuracy) < 0.03
    assert overconfident.max(1).mean() - calibration.val_accuracy > 0.2
    assert np.array_equal(np.argmax(overconfident, 1), np.argmax(overconfident ** (1 / t), 1))
    assert np.all(confidence(overconfident, t) <= overconfident.max(1) + 1e-12)


def test_isotonic_calibration_bends_where_one_temperature_cannot_and_survives_the_config(tmp_path):
    rng = np.random.default_rng(1)
    top = rng.uniform(0.5, 1.0, 4000)  # a binary model's confidence, unrelated to its chance of being right:
    y = (rng.uniform(size=4000) < 0.9).astype(np.int64)  # right 90% of the time at every confidence
    probabilities = np.stack([top, 1 - top], axis=1)  # class 0 predicted; label 1 is a miss
    temperature, isotonic = calibrate(probabilities, 1 - y), calibrate(probabilities, 1 - y, "isotonic")
    assert isotonic.method == "isotonic" and isotonic.temperature == temperature.temperature
    low = probabilities[top < 0.6]  # traffic moves to where the model is least sure
    truth = 0.9
    assert abs(isotonic.confidence(low).mean() - truth) < 0.05 < abs(temperature.confidence(low).mean() - truth)
    assert np.all(np.diff(isotonic.knots[1]) >= 0) and np.all(np.diff(isotonic.knots[0]) >= 0)
    back = read_calibration({"calibration": json.loads(json.dumps(isotonic.to_dict()))})
    assert back == isotonic and np.array_equal(back.confidence(low), isotonic.confidence(low))
    estimator = estimator_for("classification", {"calibration": isotonic.to_dict()}, 100, 100)[0]
    estimator.observe({"probabilities": low[:100].astype(np.float32)})
    assert estimator.estimate() == pytest.approx(isotonic.confidence(low[:100].astype(np.float32)).mean(), abs=1e-6)
    with pytest.raises(ValueError, match="knots"):
        read_calibration({"calibration": {**isotonic.to_dict(), "knots": [[0.2, 0.1], [0.5, 0.6]]}})
    with pytest.raises(ValueError, match="unknown calibration method 'beta'"):
        calibrate(probabilities, 1 - y, "beta")


def test_platt_calibration_learns_an_intercept_one_temperature_cannot_and_stays_put_on_few_rows():
    rng = np.random.default_rng(2)
    top = rng.uniform(0.5, 1.0, 4000)  # a binary model under-confident when unsure, over-confident when sure:
    chance = platt_map(top, 0.5, 1.0)  # its chance of being right is sigmoid(0.5 logit(top) + 1)
    y = (rng.uniform(size=4000) < chance).astype(np.int64)
    probabilities = np.stack([top, 1 - top], axis=1)  # class 0 predicted; label 1 is a miss
    temperature, platt = calibrate(probabilities, 1 - y), calibrate(probabilities, 1 - y, "platt")
    assert platt.method == "platt" and platt.temperature == temperature.temperature and platt.knots is None
    low = top < 0.6  # traffic moves to where the model is least sure
    truth = chance[low].mean()
    assert abs(platt.confidence(probabilities[low]).mean() - truth) < 0.02
    assert abs(temperature.confidence(probabilities[low]).mean() - truth) > 0.05
    assert abs(platt.expected_accuracy - platt.val_accuracy) < 0.01
    back = read_calibration({"calibration": json.loads(json.dumps(platt.to_dict()))})
    assert back == platt and np.array_equal(back.confidence(probabilities), platt.confidence(probabilities))
    estimator = estimator_for("classification", {"calibration": platt.to_dict()}, 100, 100)[0]
    rows = probabilities[low][:100].astype(np.float32)
    estimator.observe({"probabilities": rows})
    assert estimator.estimate() == pytest.approx(platt.confidence(rows).mean(), abs=1e-6)
    for bad in ([1.0], [1.0, float("nan")], None):
        with pytest.raises(ValueError, match="platt"):
            read_calibration({"calibration": {**platt.to_dict(), "platt": bad}})
    # ten rows, all right: separable, yet the prior keeps the map finite and near the temperature's
    few = calibrate(probabilities[:10], np.zeros(10, dtype=np.int64), "platt")
    a, b = few.platt
    assert np.isfinite(a) and np.isfinite(b) and abs(a - 1) < 3 and abs(b) < 3


def test_a_model_without_calibration_gets_no_estimator_and_never_an_estimate(tmp_path):
    predictor = load_predictor(make_classifier(tmp_path / "plain"))
    estimator, status = estimator_for("classification", predictor.config.extra, 100, 10)
    assert estimator is None and status.startswith("unavailable")
    assert read_calibration(predictor.config.extra) is None
    estimator, status = estimator_for("regression", {}, 100, 10)
    assert estimator is None and status.startswith("not estimable")
    estimator, status = estimator_for("classification", {"calibration": {"temperature": -1}}, 100, 10)
    assert estimator is None and "cannot be read" in status


def test_the_estimator_window_keeps_the_latest_rows():
    calibration = calibrate(np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([0, 1]))
    estimator = AccuracyEstimator(calibration, window=4, min_rows=2)
    assert estimator.estimate() is None
    certain = {"probabilities": np.array([[1.0, 0.0]] * 3)}
    estimator.observe(certain)
    assert estimator.estimate() == pytest.approx(1.0)
    estimator.observe({"probabilities": np.array([[0.5, 0.5]] * 3)})  # wraps around: 1 certain row left
    assert estimator.rows == 4
    assert estimator.estimate() == pytest.approx((1.0 + 3 * 0.5) / 4)


def test_bad_feedback_is_refused_whole_and_nothing_is_written(tmp_path):
    log = FeedbackLog("m", tmp_path / "m.jsonl", "classification", CLASSES, max_labels=10, max_batch=5)
    memory = PredictionMemory(100)
    memory.remember("a", "1", np.array([0]), {"input-0": np.zeros((1, 4), np.float32)})
    for body, needle in [({"labels": [{"id": "a", "label": 1.5}]}, "float"),
                         ({"labels": [{"id": "a", "label": True}]}, "bool"),
                         ({"labels": [{"id": "a", "label": "tulip"}]}, "unknown class 'tulip'"),
                         ({"labels": [{"id": "a", "label": 7}]}, "outside 0..2"),
                         ({"labels": [{"id": 3, "label": 0}]}, "id must be a non-empty string"),
                         ({"labels": [{"id": "a", "label": [0, 1]}]}, "1 row(s)"),
                         ({"rows": []}, '{"labels"')]:
        with pytest.raises(BadFeedback, match=needle.replace("(", r"\(").replace(")", r"\)")):
            log.record(body, memory)
    assert not (tmp_path / "m.jsonl").exists()


def test_labels_with_remembered_inputs_become_training_rows(tmp_path):
    from pillars.components.data.feedback import feedback_examples

    log = FeedbackLog("m", tmp_path / "m.jsonl", "classification", CLASSES, max_labels=100, max_batch=10)
    memory = PredictionMemory(100)
    x = toy_rows(5, seed=2)
    memory.remember("two-rows", "1", np.array([0, 2]), {"input-0": x[:2]})
    memory.remember("three-rows", "1", np.array([1, 1, 1]), {"input-0": x[2:]})
    outcome = log.record({"labels": [{"id": "two-rows", "label": ["virginica", 0]},
                                     {"id": "three-rows", "label": [1, 1, "setosa"]},
                                     {"id": "forgotten", "label": 2}]}, memory)
    assert outcome.to_dict() == {"scored": 2, "unscored": 1, "duplicates": 0}
    rows = feedback_examples(tmp_path / "m.jsonl", ["input-0"], "label", CLASSES)
    assert rows.rows == 5 and rows.without_inputs == 1
    np.testing.assert_array_equal(rows.examples["input-0"], x)
    np.testing.assert_array_equal(rows.examples["label"], [2, 0, 1, 1, 0])
    assert log.realised() == {"1": {"rows": 5, "accuracy": 2 / 5}}


def test_a_store_that_cannot_be_written_refuses_the_batch_and_counts_nothing(tmp_path):
    from pillars.serving.errors import FeedbackNotStored

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the store's folder should be")
    log = FeedbackLog("m", blocker / "m.jsonl", "classification", CLASSES, max_labels=10, max_batch=5)
    memory = PredictionMemory(10)
    memory.remember("a", "1", np.array([0]), None)
    with pytest.raises(FeedbackNotStored, match="cannot be written"):
        log.record({"labels": [{"id": "a", "label": 0}]}, memory)
    assert log.labels == 0 and log.realised() == {}
    blocker.unlink()  # the disk is back: the same label is accepted, once
    assert log.record({"labels": [{"id": "a", "label": 0}]}, memory).scored == 1


# ---- through the server -----------------------------------------------------------------------------

def test_every_response_carries_a_request_id_echoed_or_generated(labelled):
    with httpx.Client(timeout=30) as client:
        assert _infer(client, labelled, toy_rows(1), "mine-1")["id"] == "mine-1"
        generated = _infer(client, labelled, toy_rows(1))["id"]
        assert generated and generated != "mine-1"
        v1 = client.post(f"{labelled.http}/v1/models/{MODEL}:predict", json={"instances": toy_rows(2).tolist()},
                         headers=labelled.headers)
        assert v1.status_code == 200 and isinstance(v1.json()["id"], str) and len(v1.json()["predictions"]) == 2

    async def grpc_ids() -> list[str]:
        async with InferenceGRPCClient(labelled.grpc, timeout=10, retries=0) as client:
            ids = []
            for request_id in ("grpc-7", ""):
                tensor = InferInput("input-0", [1, 4], "FP32")
                tensor.set_data_from_numpy(toy_rows(1))
                response = await client.infer(InferRequest(MODEL, [tensor], request_id=request_id or None),
                                              headers=(("authorization", f"Bearer {TOKEN}"),))
                ids.append(response.id)
            return ids

    echoed, generated = asyncio.run(grpc_ids())
    assert echoed == "grpc-7" and generated and generated != "grpc-7"
    with httpx.Client(timeout=30) as client:  # a gRPC id is remembered like a REST one
        assert _feedback(client, labelled, [{"id": "grpc-7", "label": 0}]).json()["scored"] == 1


def test_feedback_needs_the_token_and_refuses_wrong_types_naming_them(labelled):
    with httpx.Client(timeout=30) as client:
        request_id = _infer(client, labelled, toy_rows(1))["id"]
        assert _feedback(client, labelled, [{"id": request_id, "label": 0}], headers={}).status_code == 401
        wrong = _feedback(client, labelled, [{"id": request_id, "label": {"class": 0}}])
        assert wrong.status_code == 422 and "dict" in wrong.json()["error"] and request_id in wrong.json()["error"]
        unknown_class = _feedback(client, labelled, [{"id": request_id, "label": "tulip"}])
        assert unknown_class.status_code == 422 and "tulip" in unknown_class.json()["error"]
        too_many = _feedback(client, labelled, [{"id": f"x{i}", "label": 0} for i in range(501)])
        assert too_many.status_code == 413 and "500" in too_many.json()["error"]
        not_json = client.post(f"{labelled.http}/v2/models/{MODEL}/feedback", content=b"{",
                               headers=labelled.headers)
        assert not_json.status_code == 422
        page = client.post(f"{labelled.http}/v2/models/{MODEL}/feedback", content=b'{"labels": []}',
                           headers={**labelled.headers, "origin": "http://evil.example", "content-type": "text/plain"})
        assert page.status_code == 415
        no_shadow = client.get(f"{labelled.http}/v2/models/{MODEL}/shadow", headers=labelled.headers).json()
        assert no_shadow["shadow"] is None and no_shadow["decision"]["action"] == "none"


def test_grpc_feedback_takes_labels_with_the_same_auth_checks_and_status_codes(labelled):
    with httpx.Client(timeout=30) as client:
        first, second = (_infer(client, labelled, toy_rows(1))["id"] for _ in range(2))
    token = (("authorization", f"Bearer {TOKEN}"),)

    def request(labels: list[dict]) -> FeedbackRequest:
        return FeedbackRequest(model_name=MODEL, labels_json=json.dumps({"labels": labels}))

    def refused(stub, message: FeedbackRequest, metadata=token) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as error:
            stub(message, metadata=metadata, timeout=10)
        return error.value

    with grpc.insecure_channel(labelled.grpc) as channel:
        stub = submit_stub(channel)
        assert refused(stub, request([{"id": first, "label": 0}]), metadata=()).code() == \
            grpc.StatusCode.UNAUTHENTICATED
        wrong = refused(stub, request([{"id": first, "label": {"class": 0}}]))
        assert wrong.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "dict" in wrong.details() and first in wrong.details()
        too_many = refused(stub, request([{"id": f"g{i}", "label": 0} for i in range(501)]))
        assert too_many.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "500" in too_many.details()
        not_json = refused(stub, FeedbackRequest(model_name=MODEL, labels_json="{"))
        assert not_json.code() == grpc.StatusCode.INVALID_ARGUMENT and "JSON" in not_json.details()
        assert refused(stub, FeedbackRequest(model_name="nope", labels_json="{}")).code() == grpc.StatusCode.NOT_FOUND
        accepted = stub(request([{"id": first, "label": 0}, {"id": second, "label": CLASSES[1]},
                                 {"id": first, "label": 1}]), metadata=token, timeout=10)
        assert (accepted.scored, accepted.unscored, accepted.duplicates) == (2, 0, 1)
    with httpx.Client(timeout=30) as client:  # the same store as REST: the gRPC labels count there as duplicates
        again = _feedback(client, labelled, [{"id": first, "label": 0}, {"id": second, "label": 1}]).json()
    assert again == {"scored": 0, "unscored": 0, "duplicates": 2}


def test_unknown_ids_are_kept_not_scored_and_duplicates_count_once(labelled):
    with httpx.Client(timeout=30) as client:
        before = _realised(labelled)
        known = _infer(client, labelled, toy_rows(1, seed=5))["id"]
        answer = _feedback(client, labelled, [{"id": known, "label": 1}, {"id": known, "label": 2},
                                              {"id": "never-served", "label": "setosa"}])
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"scored": 1, "unscored": 1, "duplicates": 1}
        again = _feedback(client, labelled, [{"id": known, "label": 1}])
        assert again.json() == {"scored": 0, "unscored": 0, "duplicates": 1}
    assert _realised(labelled)[0] == before[0] + 1
    lines = [json.loads(line) for line in (labelled.temp_dir / f"{MODEL}.jsonl").read_text().splitlines()]
    mine = {r["id"]: r for r in lines if r["id"] in (known, "never-served")}
    assert mine[known]["scored"] and mine[known]["labels"] == ["versicolor"]
    assert mine[known]["inputs"] == {"input-0": toy_rows(1, seed=5).tolist()}
    assert not mine["never-served"]["scored"] and mine["never-served"]["version"] is None


def test_estimated_accuracy_is_exported_once_the_window_fills(labelled):
    with httpx.Client(timeout=30) as client:
        for rows in np.array_split(toy_rows(120, seed=9), 6):
            _infer(client, labelled, rows)
        performance = client.get(f"{labelled.http}/v2/models/{MODEL}/performance", headers=labelled.headers).json()
    estimate = performance["estimate"]
    assert estimate["status"] == "available" and estimate["window_rows"] >= 120
    assert 0.0 < estimate["estimated_accuracy"] <= 1.0
    samples = scrape(labelled)
    exported = list(samples["pillars_performance_estimated_accuracy"].values())
    assert exported == [pytest.approx(estimate["estimated_accuracy"], abs=0.05)]


def test_a_regressor_says_its_estimate_is_not_estimable_and_exports_none(served_with_auth):
    performance = httpx.get(f"{served_with_auth.http}/v2/models/reg/performance",
                            headers=served_with_auth.headers).json()
    assert performance["estimate"]["estimated_accuracy"] is None
    assert performance["estimate"]["status"].startswith("not estimable")
    samples = httpx.get(f"{served_with_auth.http}/metrics", headers=served_with_auth.headers).text
    assert 'pillars_performance_estimated_accuracy{model="reg"' not in samples
    assert 'pillars_performance_estimate_available{model="reg",version="1"} 0.0' in samples


def test_realised_accuracy_equals_offline_accuracy_exactly_and_a_restart_loses_no_label(model_dir, tmp_path):
    labels_dir = tmp_path / "labels"
    server = _start(tmp_path, model_dir, labels_dir)
    x = toy_rows(300, seed=21)
    y = _rule(x)
    try:
        with httpx.Client(timeout=30) as client:
            ids = [_infer(client, server, x[i:i + 3])["id"] for i in range(0, len(x), 3)]
            labels = [{"id": request_id, "label": [CLASSES[c] for c in y[i * 3:i * 3 + 3]]}
                      for i, request_id in enumerate(ids)]
            for start in range(0, len(labels), 40):
                answer = _feedback(client, server, labels[start:start + 40])
                assert answer.status_code == 200 and answer.json()["scored"] == len(labels[start:start + 40])
        offline = load_predictor(model_dir).predict({"input-0": x})["class_index"]
        expected_correct = int((offline == y).sum())
        assert 0 < expected_correct < len(y)  # a metric that can be wrong
        assert _realised(server) == (len(y), expected_correct)
        performance = httpx.get(f"{server.http}/v2/models/{MODEL}/performance", headers=server.headers).json()
        assert performance["realised"]["1"] == {"rows": 300, "accuracy": expected_correct / 300}
    finally:
        server.process.stop()

    restarted = _start(tmp_path, model_dir, labels_dir)
    try:
        assert _realised(restarted) == (len(y), expected_correct)
        with httpx.Client(timeout=30) as client:
            again = _feedback(client, restarted, labels[:5])  # labelled before the restart: counted once
            assert again.json() == {"scored": 0, "unscored": 0, "duplicates": 5}
            forgotten = _feedback(client, restarted, [{"id": "after-restart-unknown", "label": 0}])
            assert forgotten.json() == {"scored": 0, "unscored": 1, "duplicates": 0}
        assert _realised(restarted) == (len(y), expected_correct)
        assert len((labels_dir / f"{MODEL}.jsonl").read_text().splitlines()) == len(ids) + 1
    finally:
        restarted.process.stop()


def test_a_flood_of_feedback_is_bounded_and_health_stays_fast(labelled):
    stop = threading.Event()
    statuses: list[int] = []

    def flood(worker: int) -> None:
        with httpx.Client(timeout=30) as client:
            batch = 0
            while not stop.is_set():
                labels = [{"id": f"flood-{worker}-{batch}-{i}", "label": i % 3} for i in range(500)]
                statuses.append(_feedback(client, labelled, labels).status_code)
                batch += 1

    threads = [threading.Thread(target=flood, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    try:
        slowest = 0.0
        with httpx.Client(timeout=30) as client:
            for _ in range(20):
                started = time.perf_counter()
                assert client.get(f"{labelled.http}/v2/health/ready").status_code == 200
                slowest = max(slowest, time.perf_counter() - started)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert statuses and set(statuses) == {200}
    assert slowest < 0.5, f"health took {slowest:.3f}s under a feedback flood"


def test_a_worse_challenger_in_shadow_is_scored_on_the_same_labels_and_not_promoted(model_dir, tmp_path):
    worse = make_classifier(tmp_path / "worse", steps=2, seed=5)
    server = _start(tmp_path, model_dir, tmp_path / "labels", "--shadow_uri", str(worse), "--shadow_min_labels", "100")
    x = toy_rows(300, seed=31)
    y = _rule(x)
    try:
        with httpx.Client(timeout=30) as client:
            ids = [_infer(client, server, x[i:i + 3])["id"] for i in range(0, len(x), 3)]
            url = f"{server.http}/v2/models/{MODEL}/shadow"
            deadline = time.monotonic() + 30
            while client.get(url, headers=server.headers).json()["shadow"]["rows"] < len(x):
                assert time.monotonic() < deadline, "the shadow did not answer every row"
                time.sleep(0.05)
            labels = [{"id": request_id, "label": y[i * 3:i * 3 + 3].tolist()} for i, request_id in enumerate(ids)]
            assert _feedback(client, server, labels).json()["scored"] == len(ids)
            shadow = client.get(url, headers=server.headers).json()
        offline_champion = load_predictor(model_dir).predict({"input-0": x})["class_index"]
        offline_shadow = load_predictor(worse).predict({"input-0": x})["class_index"]
        assert shadow["decision"]["champion_accuracy"] == (offline_champion == y).mean()
        assert shadow["decision"]["shadow_accuracy"] == (offline_shadow == y).mean() < (offline_champion == y).mean()
        assert shadow["shadow"]["agreement"] == pytest.approx((offline_shadow == offline_champion).mean())
        assert shadow["decision"]["action"] == "reject", shadow["decision"]
        assert sum(shadow["labelled_pairs"].values()) == len(x)
        samples = scrape(server)
        assert sum(samples["pillars_shadow_rows_total"].values()) == len(x)
    finally:
        server.process.stop()
