"""The variants of a small CNN: each saved in the v2 format, loaded by the server's loader, judged on the
same test split as the original, smaller where it should be."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pillars.components.optimize.variants import ORIGINAL, VARIANTS
from pillars.components.optimize.shrink import count_parameters
from pillars.components.model.predictor import OnnxPredictor, TorchPredictor, load_predictor


def _by_name(report):
    return {v.variant: v for v in report.variants}


def test_every_variant_is_made_saved_with_its_parent_and_judged_on_the_same_split(blobs_report, blobs):
    variants = _by_name(blobs_report)
    assert list(variants) == list(VARIANTS)
    original = blobs_report.original
    assert original.variant == ORIGINAL and original.metrics["accuracy"] >= 0.9
    assert original.metrics == blobs.trained.evaluate()  # the same split, the same task.evaluate
    for name, result in variants.items():
        assert not result.skipped, result.reason
        config = json.loads((Path(result.directory) / "config.json").read_text())
        assert config["extra"]["variant"] == name and config["extra"]["parent"] == "blobs/1"
        assert config["framework"] == ("onnx" if name.startswith("onnx") else "torch")
        assert result.metric_delta == pytest.approx(result.metrics["accuracy"] - original.metrics["accuracy"])
        assert result.speed is not None and result.speed.latency_ms_b1 > 0 and result.speed.throughput_b64 > 0


def test_the_loader_picks_the_runtime_from_the_saved_framework(blobs_report, blobs):
    variants = _by_name(blobs_report)
    rows = blobs.trained.inputs("test")
    expected = blobs.trained.predict(rows)["class_index"]
    onnx_model = load_predictor(variants["onnx"].directory, onnx_threads=1)
    assert isinstance(onnx_model, OnnxPredictor)
    assert onnx_model.session.get_session_options().intra_op_num_threads == 1
    assert (onnx_model.predict(rows)["class_index"] == expected).all()
    probabilities = onnx_model.predict(rows)["probabilities"]
    np.testing.assert_allclose(probabilities, blobs.trained.predict(rows)["probabilities"], atol=1e-4)
    assert isinstance(load_predictor(variants["pruned"].directory), TorchPredictor)


def test_int8_is_at_most_035_of_fp32_and_within_a_point(blobs_report):
    variants = _by_name(blobs_report)
    fp32 = blobs_report.original.footprint.size_bytes
    for name in ("onnx-int8", "onnx-int8-static"):
        v = variants[name]
        assert v.footprint.size_bytes <= 0.35 * fp32, (name, v.footprint, fp32)
        assert v.passed and v.metric_delta >= -0.01, v.reason


def test_pruning_zeroes_the_stated_share_and_reports_size_not_only_sparsity(blobs_report, blobs):
    pruned = _by_name(blobs_report)["pruned"]
    original = blobs_report.original.footprint
    model = load_predictor(pruned.directory).model
    weights = [m.weight for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros == pytest.approx(0.5, abs=0.01)  # global magnitude pruning to sparsity 0.5, kept by the fine-tune
    assert pruned.footprint.parameters == original.parameters
    assert pruned.footprint.nonzero < 0.6 * original.nonzero
    assert pruned.footprint.size_bytes == original.size_bytes  # dense file: the zeros are stored
    assert pruned.footprint.compressed_bytes < original.compressed_bytes
    assert not any(k.endswith(("_orig", "_mask")) for k in model.state_dict())  # prune.remove was applied


def test_the_student_has_at_most_half_the_parameters_and_drops_at_most_two_points(blobs_report, blobs):
    distilled = _by_name(blobs_report)["distilled"]
    teacher = count_parameters(blobs.trained.model)
    student = load_predictor(distilled.directory)
    assert student.task.task_args()["channels"] == 4  # the task's own student(), saved with its arguments
    assert count_parameters(student.model) <= 0.5 * teacher
    assert distilled.footprint.parameters == count_parameters(student.model)
    assert distilled.metric_delta >= -0.02, distilled.reason


def test_the_edge_choice_is_the_fastest_variant_within_the_guard(blobs_report):
    edge = blobs_report.edge()
    passing = blobs_report.passing()
    assert edge in passing
    assert edge.speed.latency_ms_b1 == min(v.speed.latency_ms_b1 for v in passing)
    assert "PASS" in blobs_report.summary() and edge.variant in json.dumps(blobs_report.to_dict())
