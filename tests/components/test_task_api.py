"""The task API's defaults (API_VERSION 1): what a task must implement, the signature derived from its
declared ``inputs`` and ``outputs`` (a tuple as a class attribute, or a method of ``prep``), a task that
still overrides ``signature``, and read-only gate thresholds that no task can change for another."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pillars.components.errors import ConfigError
from pillars.components.task import (
    API_VERSION,
    ClassificationTask,
    DataParams,
    Dataset,
    Examples,
    Preprocessing,
    RegressionTask,
    Signature,
    Task,
    TensorSpec,
)
from pillars.tasks.tabular import TabularClassification
from pillars.tasks.text import TextClassification

CLASSES = {"classes": ["no", "yes"]}
REGRESSION = {"target_mean": 0.0, "target_std": 1.0}


class _Minimal(ClassificationTask):
    """Data, model, inputs and encode: nothing else."""

    inputs = (TensorSpec("x", "FP32", (3,)),)

    def load_data(self, params: DataParams) -> Dataset:
        raise NotImplementedError

    def build_model(self, prep: Preprocessing) -> nn.Module:
        return nn.Linear(3, len(prep["classes"]))

    def encode(self, inputs: Examples, prep: Preprocessing) -> dict[str, torch.Tensor]:
        return {"input": torch.as_tensor(inputs["x"])}


def _subclass(base: type[Task], **attributes) -> type[Task]:
    """A concrete task of ``base`` with the abstract methods stubbed and ``attributes`` set."""
    stubs = {name: (lambda self, *args: None) for name in base.__abstractmethods__}
    return type("Stub", (base,), {**stubs, **attributes})


def test_the_api_version_stays_1():
    assert API_VERSION == 1


def test_a_classification_task_implements_only_data_model_and_encode():
    assert ClassificationTask.__abstractmethods__ == {"load_data", "build_model", "encode"}
    assert RegressionTask.__abstractmethods__ == {"load_data", "build_model", "encode"}
    assert Task.__abstractmethods__ == {"load_data", "build_model", "encode", "targets", "loss", "decode", "evaluate"}
    _Minimal()  # constructible


def test_the_signature_is_the_declared_inputs_and_the_base_classes_outputs():
    signature = _Minimal().signature(CLASSES)
    assert signature.inputs == (TensorSpec("x", "FP32", (3,)),)
    assert signature.outputs == (TensorSpec("label", "BYTES"), TensorSpec("class_index", "INT64"),
                                 TensorSpec("probabilities", "FP32", (2,)))
    value = _subclass(RegressionTask, inputs=(TensorSpec("x", "FP32"),))().signature(REGRESSION)
    assert [s.name for s in value.outputs] == ["value"]


def test_inputs_may_be_a_method_of_the_preprocessing():
    def inputs(self, prep: Preprocessing) -> tuple[TensorSpec, ...]:
        return (TensorSpec("features", "FP32", (len(prep["names"]),), labels=tuple(prep["names"])),)

    signature = _subclass(RegressionTask, inputs=inputs)().signature({**REGRESSION, "names": ["a", "b"]})
    assert signature.input("features").shape == (2,) and signature.input("features").labels == ("a", "b")


def test_a_task_on_task_itself_declares_its_outputs_too():
    ranking = _subclass(Task, inputs=(TensorSpec("user", "INT64"),),
                        outputs=[TensorSpec("items", "INT64", (-1,), max_length=10)])()
    assert [s.name for s in ranking.signature({}).outputs] == ["items"]
    with pytest.raises(ConfigError, match="Stub declares no outputs"):
        _subclass(Task, inputs=(TensorSpec("user", "INT64"),))().signature({})


def test_a_task_that_overrides_signature_needs_no_inputs():
    def signature(self, prep: Preprocessing) -> Signature:
        return Signature((TensorSpec("a", "FP32"),), self.outputs(prep))

    assert [s.name for s in _subclass(ClassificationTask, signature=signature)().signature(CLASSES).inputs] == ["a"]


def test_undeclared_or_malformed_inputs_are_refused_naming_the_task_and_the_fix():
    with pytest.raises(ConfigError, match=r"Stub declares no inputs: set the class attribute inputs = "):
        _subclass(ClassificationTask)().signature(CLASSES)
    with pytest.raises(ConfigError, match=r"inputs must be a tuple of TensorSpec, got TensorSpec \(a tuple of one "
                                          r"needs a trailing comma"):
        _subclass(ClassificationTask, inputs=(TensorSpec("x", "FP32")))().signature(CLASSES)
    with pytest.raises(ConfigError, match="inputs must be a tuple of TensorSpec, got tuple"):
        _subclass(ClassificationTask, inputs=("x",))().signature(CLASSES)


def test_the_default_drift_features_read_the_declared_inputs():
    features = _Minimal().drift_features({"x": torch.arange(6.0).reshape(2, 3).numpy()}, CLASSES)
    assert sorted(features) == ["x[0]", "x[1]", "x[2]"]


def _stacked(task: Task, inputs: Examples, prep: Preprocessing) -> tuple[list[str], np.ndarray]:
    return Task.drift_matrix(task, inputs, prep)  # the default: drift_features stacked


@pytest.mark.parametrize("shape, names", [
    ((5, 3), ["a", "b", "c"]),
    ((5, 1, 2, 2), ["p0", "p1", "p2", "p3"]),  # an image-shaped table: features are the flat pixels
    ((5, 4), ["a", "b", "c"]),  # more columns than names: the named ones
    ((5, 3), ["a", "b", "a"]),  # a name twice: drift_features keeps the last column under it
])
def test_a_tables_drift_matrix_is_its_drift_features_stacked(shape, names):
    task, prep = TabularClassification(), {"feature_names": names}
    inputs = {"input-0": np.arange(np.prod(shape), dtype=np.float32).reshape(shape) * 1.5}
    got_names, matrix = task.drift_matrix(inputs, prep)
    want_names, want = _stacked(task, inputs, prep)
    assert got_names == want_names and matrix.dtype == np.float64 and np.array_equal(matrix, want)


def test_a_table_task_with_drift_features_of_its_own_gets_them_in_its_drift_matrix():
    class Doubled(TabularClassification):
        def drift_features(self, inputs, prep):
            return {f"{k}*2": 2 * v for k, v in super().drift_features(inputs, prep).items()}

    inputs, prep = {"input-0": np.ones((2, 2), dtype=np.float32)}, {"feature_names": ["a", "b"]}
    names, matrix = Doubled().drift_matrix(inputs, prep)
    assert names == ["a*2", "b*2"] and np.array_equal(matrix, np.full((2, 2), 2.0))


def test_thresholds_are_read_only_so_no_task_changes_another_s():
    assert dict(Task.thresholds) == {}
    with pytest.raises(TypeError):
        Task.thresholds["accuracy"] = 0.0
    strict = _subclass(ClassificationTask, thresholds={"accuracy": 0.9})  # a dict, frozen with its class
    stricter = type("Stricter", (strict,), {})
    with pytest.raises(TypeError):
        stricter().thresholds["accuracy"] = 0.1
    assert strict.thresholds == stricter.thresholds == {"accuracy": 0.9}
    assert _Minimal.thresholds == {} and TextClassification.thresholds == {"accuracy": 0.7}
