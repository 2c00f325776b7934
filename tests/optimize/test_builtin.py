"""A built-in task end to end: the breast_cancer MLP (pillars.tasks.tabular) exported, quantized and
distilled into its own student, judged on its own test split."""

from __future__ import annotations

from pillars.components.optimize.variants import FitParams, OptimizeParams, optimize_model
from pillars.components.model.predictor import load_predictor, save_model
from pillars.components.optimize.shrink import count_parameters
from pillars.components.task import load_task
from tests.tasks.conftest import train_in_process


def test_breast_cancer_exports_quantizes_and_distills_within_the_guard(tmp_path):
    task = load_task("breast_cancer")
    trained = train_in_process(task, epochs=15)
    directory = save_model(task, "pillars.tasks.tabular:breast_cancer", trained.prep, trained.model, tmp_path / "m")
    params = OptimizeParams(variants=("onnx", "onnx-int8", "onnx-int8-static", "distilled"), timing_repeats=3,
                            distill_fit=FitParams(epochs=20, learning_rate=3e-3))
    report = optimize_model(directory, trained.data, tmp_path / "variants", params, parent="breast_cancer/1")
    onnx, int8, static, distilled = report.variants
    assert report.original.metrics["accuracy"] >= 0.9
    assert onnx.passed and abs(onnx.metric_delta) < 1e-9  # the same decisions, to the row
    assert int8.passed, int8.reason
    assert static.skipped  # an MLP: dynamic int8 covers it
    assert distilled.passed and distilled.metric_delta >= -0.02, distilled.reason
    student = load_predictor(distilled.directory)
    assert student.task.task_args()["hidden_sizes"] == [32, 16]
    assert count_parameters(student.model) <= 0.5 * count_parameters(trained.model)
    raw = trained.inputs("test")  # raw features: the standardisation is inside the exported graph too
    served = load_predictor(onnx.directory).predict(raw)
    assert (served["class_index"] == trained.predict(raw)["class_index"]).all()
