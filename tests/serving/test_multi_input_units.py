"""In-process units of serving any task: batching by instance shape, bad input isolated in a merged pass,
the codec's size limits from the signature, drift on named features, the hot-reload input check."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from pillars.components.errors import ConfigError
from pillars.components.model.predictor import Predictor, check_inputs, load_predictor
from pillars.components.task.contract import InputError, Signature, TensorSpec
from pillars.serving.protocol import codec
from pillars.serving.protocol import tensors
from pillars.serving.batching import Batcher, merge_key
from pillars.serving.monitoring.drift import DriftConfig, DriftMonitor
from pillars.serving.errors import TooManyRows
from pillars.serving.versions import check_same_inputs, placeholder_inputs
from tests.serving.toy import make_classifier
from tests.serving.toy_task import MAX_HISTORY, MAX_TEXT_BYTES, make_toy_model, toy_inputs


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> Predictor:
    return load_predictor(make_toy_model(tmp_path_factory.mktemp("toy-task") / "model"))


def _run_held(predictor: Predictor, requests: list[dict], **kwargs) -> tuple[list, list[tuple]]:
    """Submit ``requests`` while the first pass is held, so the rest queue up; returns results and the
    (rows, history length) of every forward pass."""
    passes: list[tuple] = []
    gate = threading.Event()

    def forward(inputs):
        gate.wait(5)
        passes.append((len(inputs["user_id"]), inputs["history"].shape[1], "k" in inputs))
        return predictor.predict_checked(inputs)

    async def run():
        batcher = Batcher(forward, max_batch_size=64, max_latency_ms=1, **kwargs)
        tasks = [asyncio.create_task(batcher.submit(r)) for r in requests]
        await asyncio.sleep(0.05)
        gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        batcher.close()
        return results

    return asyncio.run(run()), passes


def test_only_requests_of_equal_instance_shapes_and_inputs_are_merged(predictor):
    requests = [toy_inputs(2, seed=i, history=[3, 5][i % 2], k=3 if i in (4, 5) else None) for i in range(8)]
    results, passes = _run_held(predictor, requests)
    assert sum(rows for rows, _, _ in passes) == 16
    assert len(passes) <= 5 and max(rows for rows, _, _ in passes) >= 4, passes  # merged, but only alike
    assert {(h, k) for _, h, k in passes} == {(3, False), (5, False), (3, True), (5, True)}
    for request, result in zip(requests, results, strict=True):
        expected = predictor.predict(request)
        assert result["item_ids"].tolist() == expected["item_ids"].tolist()
        np.testing.assert_allclose(result["scores"], expected["scores"], rtol=1e-5, atol=1e-6)
    assert merge_key(requests[0]) == merge_key(requests[2]) != merge_key(requests[1])


def test_bad_input_in_a_merged_pass_fails_only_its_own_request(predictor):
    requests = [toy_inputs(2, seed=i) for i in range(5)]
    requests[2]["user_id"][0] = 1234
    results, passes = _run_held(predictor, requests, isolate=(InputError,))
    assert isinstance(results[2], InputError) and "1234" in str(results[2])
    assert all(isinstance(r, dict) for i, r in enumerate(results) if i != 2)
    assert passes[-5:] == [(2, 4, False)] * 5  # the merged pass failed, then each ran alone

    results, _ = _run_held(predictor, requests)  # without isolation the whole merged pass fails
    assert sum(isinstance(r, InputError) for r in results) >= 2


def test_size_limits_follow_the_signature(predictor):
    signature = predictor.signature
    per_row_json = (6 * MAX_TEXT_BYTES + 16) + 64 + 64 * MAX_HISTORY + 64
    assert codec.json_body_limit(signature, 10) == 10 * per_row_json + codec.JSON_OVERHEAD_BYTES
    per_row_grpc = (MAX_TEXT_BYTES + 10) + 10 + 10 * MAX_HISTORY + 10
    assert codec.grpc_message_limit(signature, 10) == 10 * per_row_grpc + codec.JSON_OVERHEAD_BYTES
    with pytest.raises(TooManyRows):
        codec.parse_json(b" " * (codec.json_body_limit(signature, 2) + 1), signature, 2)


@pytest.mark.parametrize("declared_tensors,fragment", [
    ([("text", "BYTES", [2]), ("user_id", "INT64", [2])], "'history' is missing"),
    ([("text", "BYTES", [2]), ("user_id", "UINT8", [2]), ("history", "INT32", [2, 3])], None),
    ([("text", "BYTES", [2, 1]), ("user_id", "INT64", [2]), ("history", "FP32", [2, 3])], None),
    ([("text", "BYTES", [2]), ("user_id", "FP99", [2]), ("history", "FP32", [2, 3])], "not an Open Inference"),
    ([("text", "BYTES", [2]), ("user_id", "INT64", [-2]), ("history", "FP32", [2, 3])], "negative"),
    ([("text", "BYTES", [2]), ("user_id", "INT64", [2]), ("history", "FP32", [2, 3]), ("color", "FP32", [2])],
     r"unknown input\(s\) \['color'\]"),
    ([("text", "BYTES", [2]), ("user_id", "INT64", [2]), ("history", "FP32", [2])], "not a batch"),
    ([("text", "BYTES", [2]), ("user_id", "INT64", [2]), ("history", "FP32", [2, 9])], "1..8"),
    ([("text", "BYTES", [2]), ("user_id", "INT64", [2, 2]), ("history", "FP32", [2, 1])], "'user_id'"),
])
def test_declared_tensors_are_checked_against_the_signature_before_decoding(predictor, declared_tensors, fragment):
    """Names, shapes and rows by the contract's rules; datatypes only for being Open Inference Protocol ones
    (whether the input takes them is judged on the decoded arrays, by ``check_inputs``)."""
    if fragment is None:
        declared = tensors.check_declared(declared_tensors, predictor.signature, 10)
        assert [d.spec.name for d in declared] == [t[0] for t in declared_tensors]
        return
    with pytest.raises(InputError, match=fragment):
        tensors.check_declared(declared_tensors, predictor.signature, 10)


def test_drift_features_are_matched_by_name_and_a_missing_one_turns_drift_off(predictor):
    inputs = predictor.check(toy_inputs(600, seed=3))
    names, rows = predictor.drift_rows(inputs)
    from pillars.components.data.profile import feature_profile

    profile = {"features": {n: feature_profile(rows[:, i]) for i, n in enumerate(names)}, "label": None}
    reversed_names = names[::-1]
    monitor = DriftMonitor(profile, reversed_names, "ranking", None, DriftConfig(min_rows=500))
    monitor.observe_named(names, rows, {})
    report = monitor.compute()
    assert report is not None and not report.detected and report.prediction_jsd == 0.0
    np.testing.assert_allclose(monitor._inputs[:10, 0], rows[:10, -1].astype(np.float32))
    monitor.observe_named(names[:1], rows[:, :1], {})
    assert monitor.failed


def test_a_version_with_other_inputs_is_refused(predictor, tmp_path):
    table = load_predictor(make_classifier(tmp_path / "table"))
    check_same_inputs(predictor.signature, predictor.signature, "2")
    with pytest.raises(ConfigError, match="version 3 takes other inputs .*input-0 FP32.*refused"):
        check_same_inputs(predictor.signature, table.signature, "3")
    longer = Signature(tuple(TensorSpec(s.name, s.datatype, s.shape, s.optional, 16 if s.max_length else 0,
                                        s.max_bytes) for s in predictor.signature.inputs), predictor.signature.outputs)
    with pytest.raises(ConfigError, match="other inputs"):
        check_same_inputs(predictor.signature, longer, "4")


def test_placeholders_fit_every_required_input(predictor):
    inputs = placeholder_inputs(predictor.signature, 3)
    assert sorted(inputs) == ["history", "text", "user_id"]
    assert inputs["history"].shape == (3, MAX_HISTORY) and inputs["text"].dtype.kind == "U"
    assert predictor.predict(inputs)["item_ids"].shape == (3, 2)


TEXT = Signature((TensorSpec("text", "BYTES", (), max_bytes=8),),
                 (TensorSpec("label", "BYTES"), TensorSpec("probabilities", "FP32", (2,))))


def test_v1_takes_plain_strings_for_one_bytes_input_and_objects_by_name():
    inputs = check_inputs(TEXT, codec.decode_v1({"instances": ["good", "bad \u00e9"]}, TEXT, 10).inputs)
    assert inputs["text"].tolist() == ["good", "bad \u00e9"] and inputs["text"].dtype.kind == "U"
    assert codec.decode_v1({"instances": [{"text": "ok"}]}, TEXT, 10).inputs["text"] == ["ok"]
    for instances, fragment in (([1, 2], "has datatype INT64; expected BYTES"), ([1, "a"], "element 0 is a int"),
                                (["x" * 9], "longer than 8 bytes"),
                                ([["a", "b"]], "each instance must have shape []"),
                                ([{"txt": "a"}], "unknown input"), ([], "empty batch")):
        with pytest.raises(InputError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
            check_inputs(TEXT, codec.decode_v1({"instances": instances}, TEXT, 10).inputs)
    with pytest.raises(TooManyRows):
        codec.decode_v1({"instances": ["a"] * 11}, TEXT, 10)


def test_v1_answers_one_output_as_values_and_several_as_objects_per_row():
    outputs = {"label": np.asarray(["pos", "neg"], dtype=object),
               "probabilities": np.asarray([[0.25, 0.75], [0.5, 0.5]], dtype=np.float32)}
    assert codec.encode_v1(outputs, TEXT) == {"predictions": [
        {"label": "pos", "probabilities": [0.25, 0.75]}, {"label": "neg", "probabilities": [0.5, 0.5]}]}
    single = Signature(TEXT.inputs, (TensorSpec("forecast", "FP32", (2,)),))
    assert codec.encode_v1({"forecast": outputs["probabilities"]}, single) == {
        "predictions": [[0.25, 0.75], [0.5, 0.5]]}


def test_remembered_headers_never_change_a_decision():
    """check_declared remembers accepted names and shapes per signature object: the same shapes are judged
    again by another signature, a refused header is refused every time, and float dimensions are never
    taken for the int ones remembered."""
    from pillars.components.task import contract

    three = Signature((TensorSpec("x", "FP32", (3,)),), (TensorSpec("y", "FP32"),))
    four = Signature((TensorSpec("x", "FP32", (4,)),), (TensorSpec("y", "FP32"),))
    for _ in range(2):
        assert contract.check_declared(three, [("x", (2, 3))]) == {"x": (3,)}
        with pytest.raises(InputError, match=r"each instance must have shape \[4\]"):
            contract.check_declared(four, [("x", (2, 3))])
        with pytest.raises(InputError, match=r"input 'x' is given twice"):
            contract.check_declared(three, [("x", (2, 3)), ("x", (2, 3))])
    assert contract._header_key(three, [("x", [2.0, 3])]) is None
    assert contract._header_key(three, [("x", (True, 3))]) is None
    for rows in range(1, contract.ACCEPTED_HEADERS_KEPT + 10):  # bounded: forgotten at once when full
        contract.check_declared(three, [("x", (rows, 3))])
    assert len(contract._ACCEPTED_HEADERS) <= contract.ACCEPTED_HEADERS_KEPT


def test_remembered_declarations_never_change_a_decision():
    """The wire-level check remembers accepted declarations per signature and row limit: a lower limit,
    another datatype spelling or float dimensions are judged in full."""
    sig = Signature((TensorSpec("x", "FP32", (3,)),), (TensorSpec("y", "FP32"),))
    for _ in range(2):
        assert [d.shape for d in tensors.check_declared([("x", "FP32", [2, 3])], sig, 4)] == [[2, 3]]
        with pytest.raises(TooManyRows, match="2 rows; at most 1 rows"):
            tensors.check_declared([("x", "FP32", [2, 3])], sig, 1)
        with pytest.raises(InputError, match="datatype FP33"):
            tensors.check_declared([("x", "FP33", [2, 3])], sig, 4)
        with pytest.raises(InputError, match="shape must be a list of integers"):
            tensors.check_declared([("x", "FP32", [2.0, 3])], sig, 4)
    assert [d.datatype for d in tensors.check_declared([("x", "fp32", [2, 3])], sig, 4)] == ["FP32"]
