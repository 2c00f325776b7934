"""The typed records steps store and read back: each round-trips, and reads what older versions stored."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pillars.components.records import GateDecision, VersionRecord, as_test_metric, read_test_metrics

DECISION = GateDecision(False, ["accuracy=0.8000 >= 0.9 FAILED", "no champion to compare with"], "3", 0.91)


def test_a_decision_round_trips_through_the_artifact_and_its_reasons_through_the_tags():
    assert GateDecision.from_dict(DECISION.to_dict()) == DECISION
    assert DECISION.to_tags() == {"gate_approved": "false",
                                  "gate_reasons": "accuracy=0.8000 >= 0.9 FAILED; no champion to compare with"}
    assert GateDecision.from_tags(DECISION.to_tags()) == GateDecision(False, DECISION.reasons)


def test_tags_registered_before_the_typed_record_read_the_same_and_no_tags_mean_no_decision():
    old = {"gate_approved": "true", "gate_reasons": "accuracy=0.9 >= 0.5 passed; no champion to compare with"}
    assert GateDecision.from_tags(old) == GateDecision(True, ["accuracy=0.9 >= 0.5 passed", "no champion to compare with"])
    assert GateDecision.from_tags({"gate_approved": "true"}) == GateDecision(True, [])
    assert GateDecision.from_tags({"task": "toy"}) is None


def test_an_artifact_that_is_not_a_decision_is_refused_naming_what_it_lacks():
    with pytest.raises(ValueError, match="not a gate decision"):
        GateDecision.from_dict({"approved": "yes", "reasons": "ok"})


def test_test_metrics_are_logged_with_a_prefix_and_read_back_by_name():
    assert as_test_metric("accuracy") == "test_accuracy"
    assert read_test_metrics({"test_f1": 0.5, "eval_val_f1": 0.6, "overfit_gap": 0.1, "test_accuracy": 0.9}) == \
        {"accuracy": 0.9, "f1": 0.5}


def test_a_version_record_reads_the_gate_and_variant_from_its_tags():
    version = SimpleNamespace(version=4, creation_timestamp=0, run_id="r1",
                              tags={"gate_approved": "true", "gate_reasons": "passed"})
    record = VersionRecord.from_model_version(version, ["champion", "challenger"], {"test_accuracy": 0.9})
    assert record == VersionRecord("4", ["challenger", "champion"], "1970-01-01T00:00:00+00:00", "r1",
                                   {"gate_approved": "true", "gate_reasons": "passed"}, {"accuracy": 0.9})
    assert record.gate == GateDecision(True, ["passed"]) and record.variant is None
    assert VersionRecord(**{**record.to_dict(), "tags": {"pillars.variant": "onnx"}}).variant == "onnx"
