"""The accuracy guard, and bad input: a model that cannot be exported (its ONNX variants skipped, the
others made), a graph that does not match, an empty calibration set, a task without a student, a variant
optimised again."""

from __future__ import annotations

import copy

import pytest
import torch

from pillars.components.errors import ConfigError, DataError
from pillars.components.optimize.onnx_export import ExportError, check_onnx, export_onnx, quantize_int8_static
from pillars.components.optimize.variants import FitParams, Guard, OptimizeParams, optimize_model
from pillars.components.model.predictor import TorchPredictor, load_predictor, save_model
from tests.optimize.toy import REFERENCE, BrokenStudent, Branchy


def test_guard_is_points_for_fractions_and_relative_for_lower_is_better_metrics():
    guard = Guard()
    assert guard.judge("accuracy", False, 0.950, 0.941)[0]
    ok, why = guard.judge("accuracy", False, 0.950, 0.939)
    assert not ok and "-1.10 points" in why
    assert guard.judge("rmse", True, 2.0, 2.09)[0]
    ok, why = guard.judge("rmse", True, 2.0, 2.11)
    assert not ok and "+5.5%" in why
    assert guard.judge("rmse", True, 2.0, 1.5)[0]  # better is always within
    assert not guard.judge("accuracy", False, 0.9, float("nan"))[0]
    with pytest.raises(ConfigError, match="guard bounds"):
        Guard(max_drop_points=-1)


def test_a_variant_outside_the_guard_is_reported_with_its_delta_and_does_not_pass(line, tmp_path):
    ruinous = OptimizeParams(variants=("pruned",), sparsity=0.95, prune_fit=FitParams(epochs=0),
                             guard=Guard(max_relative_worsening=0.05), timing_repeats=2)
    report = optimize_model(line.directory, line.trained.data, tmp_path, ruinous, parent="line/1")
    (pruned,) = report.variants
    assert not pruned.passed and pruned.metric == "rmse"
    assert pruned.metric_delta == pytest.approx(pruned.metrics["rmse"] - report.original.metrics["rmse"])
    assert pruned.metric_delta > 0.05 * report.original.metrics["rmse"]
    assert "FAIL" in report.summary() and report.edge() is None


def test_static_int8_skips_a_graph_without_convolutions_and_a_task_without_a_student_says_so(line, tmp_path):
    params = OptimizeParams(variants=("onnx", "onnx-int8-static", "distilled"), timing_repeats=2)
    report = optimize_model(line.directory, line.trained.data, tmp_path, params, parent="line/1")
    onnx, static, distilled = report.variants
    assert onnx.passed and not onnx.skipped
    assert static.skipped and "no convolution" in static.reason
    assert distilled.skipped and "defines no student" in distilled.reason
    assert not (tmp_path / "distilled").exists()


def test_a_model_the_exporter_cannot_trace_skips_its_onnx_variants_in_one_line_and_keeps_the_others(line, tmp_path):
    task = Branchy()
    directory = save_model(task, f"{REFERENCE}:Branchy", line.trained.prep, task.build_model(line.trained.prep),
                           tmp_path / "branchy")
    predictor = load_predictor(directory)
    with pytest.raises(ExportError) as caught:
        export_onnx(predictor, line.trained.inputs("test"), tmp_path / "out.onnx")
    message = str(caught.value)
    assert message.startswith(f"cannot export {REFERENCE}:Branchy (BranchNet) to ONNX: ")
    assert "\n" not in message and len(message) < 400
    report = optimize_model(directory, line.trained.data, tmp_path / "variants", OptimizeParams(
        variants=("onnx", "onnx-int8", "pruned"), prune_fit=FitParams(epochs=1), timing_repeats=2))
    onnx, int8, pruned = report.variants
    assert onnx.state == int8.state == "skipped" and onnx.reason == int8.reason == message
    assert pruned.state in ("passed", "refused") and pruned.footprint is not None  # made and judged all the same
    assert not (tmp_path / "variants" / "onnx").exists() and not (tmp_path / "variants" / "onnx-int8").exists()


def test_a_variant_whose_making_crashes_fails_in_one_line_and_the_others_are_judged(line, tmp_path):
    task = BrokenStudent()
    directory = save_model(task, f"{REFERENCE}:BrokenStudent", line.trained.prep, line.trained.model,
                           tmp_path / "broken")
    report = optimize_model(directory, line.trained.data, tmp_path / "variants",
                            OptimizeParams(variants=("onnx", "distilled"), timing_repeats=2))
    onnx, distilled = report.variants
    assert onnx.state == "passed", onnx.reason
    assert distilled.state == "failed" and distilled.reason.startswith("RuntimeError: ") and "\n" not in distilled.reason
    assert not (tmp_path / "variants" / "distilled").exists()
    assert f"distilled         failed: {distilled.reason}" in report.summary()


def test_a_graph_that_computes_something_else_is_refused(line, tmp_path):
    predictor = load_predictor(line.directory)
    graph = export_onnx(predictor, line.trained.inputs("test"), tmp_path / "model.onnx")
    changed = copy.deepcopy(predictor.model)
    with torch.no_grad():
        changed.hidden.weight.add_(0.01)
    other = TorchPredictor(predictor.task, predictor.prep, predictor.config, changed, torch.device("cpu"))
    with pytest.raises(ExportError, match="differs from PyTorch by up to"):
        check_onnx(other, graph, line.trained.inputs("test"))


def test_an_empty_calibration_set_is_refused_before_quantizing(blobs, tmp_path):
    predictor = load_predictor(blobs.directory)
    empty = {k: v[:0] for k, v in blobs.trained.inputs("train").items()}
    with pytest.raises(DataError, match="calibration set .* has no rows \\(train rows at length 4\\)"):
        quantize_int8_static(tmp_path / "absent.onnx", tmp_path / "int8.onnx", predictor.task, predictor.prep,
                             {"train rows": blobs.trained.inputs("train"), "train rows at length 4": empty})
    assert not (tmp_path / "int8.onnx").exists()


def test_an_optimised_variant_is_not_optimised_again_and_unknown_variants_are_named(blobs_report, blobs, tmp_path):
    onnx_dir = next(v.directory for v in blobs_report.variants if v.variant == "onnx")
    with pytest.raises(ConfigError, match="is a onnx model .*optimise its PyTorch parent"):
        optimize_model(onnx_dir, blobs.trained.data, tmp_path)
    with pytest.raises(ConfigError, match="unknown variant.*'fp4'"):
        OptimizeParams(variants=("onnx", "fp4"))
