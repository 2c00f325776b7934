"""The examples of docs/task-api.md run as written: each ```python block, saved as the module the docs name,
trains through the public API and predicts with the saved model. The smallest one (iris) declares only
data, model, inputs and encode; the complete one (basket) saves pickle-free and predicts baskets of
different lengths."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from pillars.components.training.fit import TrainParams, fit, write_model
from pillars.components.model.predictor import load_predictor
from pillars.components.data.prepare import PrepareParams, prepare
from pillars.components.task import ClassificationTask, InputError, RegressionTask

DOC = Path(__file__).resolve().parents[2] / "docs" / "task-api.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", DOC.read_text(), re.S | re.M)


def _example(attribute: str) -> str:
    """The docs' ```python block that defines the task ``attribute`` (a line ``attribute = ...``)."""
    (block,) = [b for b in _blocks("python") if re.search(rf"^{attribute} = ", b, re.M)]
    return block


def _train(folder: Path, module: str, attribute: str, params: TrainParams):
    """The docs' block written to ``{module}.py`` on sys.path, prepared, trained, saved and loaded."""
    (folder / f"{module}.py").write_text(_example(attribute))
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(folder))
        data = prepare(PrepareParams(task=f"{module}:{attribute}"))
        result = fit(data.splits["train"], data.splits["val"], data.metadata, params, progress=False)
        model_dir = write_model(result, folder / "model")
        yield data, result, load_predictor(model_dir), model_dir


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """The basket block as ``basket_example.py``, trained for 2 epochs."""
    yield from _train(tmp_path_factory.mktemp("basket"), "basket_example", "basket",
                      TrainParams(epochs=2, learning_rate=3e-2))


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory):
    """The smallest block as ``iris_example.py``, trained for 20 epochs (150 rows: a second)."""
    yield from _train(tmp_path_factory.mktemp("iris"), "iris_example", "iris",
                      TrainParams(epochs=20, learning_rate=3e-2))


def test_the_smallest_classifier_declares_only_data_model_inputs_and_encode(iris):
    data, _, predictor, _ = iris
    task = type(data.task)
    assert issubclass(task, ClassificationTask)
    declared = {name for name in vars(task) if not name.startswith("_")}
    assert declared == {"description", "inputs", "load_data", "build_model", "encode"}, declared
    (measurements,) = predictor.signature.inputs
    assert (measurements.name, measurements.datatype, measurements.shape) == ("measurements", "FP32", (4,))
    assert [(o.name, o.datatype, o.shape) for o in predictor.signature.outputs] == [
        ("label", "BYTES", ()), ("class_index", "INT64", ()), ("probabilities", "FP32", (3,))]


def test_the_smallest_classifier_learns_and_its_saved_model_names_the_species(iris):
    data, result, predictor, _ = iris
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]
    metrics = data.task.evaluate(predictor.predict_checked, data.splits["test"], predictor.prep)
    assert metrics["accuracy"] > 0.8, metrics
    out = predictor.predict({"measurements": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]})
    assert out["label"].tolist() == ["setosa", "virginica"] and out["probabilities"].shape == (2, 3)
    with pytest.raises(InputError, match="measurements"):
        predictor.predict({"measurements": [[5.1, 3.5, 1.4]]})


def test_the_example_is_a_regression_whose_signature_has_a_variable_length_int64_and_a_number(trained):
    data, _, predictor, _ = trained
    assert isinstance(data.task, RegressionTask) and data.task.primary_metric == "rmse"
    items, discount = predictor.signature.inputs
    assert (items.name, items.datatype, items.shape, items.max_length) == ("items", "INT64", (-1,), 64)
    assert (discount.name, discount.datatype, discount.shape) == ("discount", "FP32", ())
    assert [o.name for o in predictor.signature.outputs] == ["value"]
    assert data.splits["train"]["items"].dtype == np.int64 and data.splits["train"]["items"].ndim == 2


def test_two_epochs_learn_it_and_the_saved_model_is_pickle_free(trained):
    data, result, predictor, model_dir = trained
    first, second = result.history
    assert second["val_loss"] < first["val_loss"]
    test = data.splits["test"]
    metrics = data.task.evaluate(predictor.predict_checked, test, predictor.prep)
    assert set(metrics) == {"rmse", "mae", "r2"} and metrics["r2"] > 0.5, metrics
    config = json.loads((model_dir / "config.json").read_text())
    assert config["task"] == "basket_example:basket" and config["task_args"]["dim"] == 16
    assert sorted(p.suffix for p in model_dir.iterdir()) == [".json", ".json", ".json", ".safetensors"], \
        sorted(p.name for p in model_dir.iterdir())


def test_it_predicts_baskets_of_different_lengths(trained):
    predictor = trained[2]
    one = predictor.predict({"items": [[3, 7]], "discount": [0.1]})["value"]
    five = predictor.predict({"items": [[3, 7, 9, 11, 2]], "discount": [0.1]})["value"]
    padded = predictor.predict({"items": [[3, 7, 9, 11, 2], [3, 7, -1, -1, -1]], "discount": [0.1, 0.1]})["value"]
    assert one.shape == five.shape == (1,) and padded.shape == (2,)
    assert five[0] > one[0]  # three more items cost more
    np.testing.assert_allclose(padded, [five[0], one[0]], rtol=1e-5)  # padding changes nothing
    (request,) = (json.loads(block) for block in _blocks("json"))  # the docs' V2 request, as its arrays
    inputs = {i["name"]: np.asarray(i["data"]).reshape(i["shape"]) for i in request["inputs"]}
    assert predictor.predict(inputs)["value"].shape == (2,)
    with pytest.raises(InputError, match="input 'items'"):
        predictor.predict({"items": [[3, 500]], "discount": [0.1]})
    with pytest.raises(InputError, match="'items'"):
        predictor.predict({"items": [[1] * 65], "discount": [0.1]})


def test_the_table_source_example_prepares_on_the_table_engine_streams_and_predicts(tmp_path):
    """The churn block: its table prepared by the data step's table path (the pandas engine: Spark is tested
    in tests/components/test_table_engines.py), streamed for 3 epochs, saved and served by its signature."""
    from pillars.components.data.prepare_table import prepare_table
    from pillars.components.training.stream import fit_stream

    # Its own module name: ``churn_example`` is examples/custom-task's package, installed in the venv.
    (tmp_path / "churn_table_doc.py").write_text(_example("churn"))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 3))
    rows = ["tenure,spend,calls,churned"] + [f"{a:.5f},{b:.5f},{c:.5f},{'yes' if a - b > 0 else 'no'}"
                                             for a, b, c in x]
    (tmp_path / "churn.csv").write_text("\n".join(rows) + "\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(tmp_path))
        params = PrepareParams(task="churn_table_doc:churn", source=str(tmp_path / "churn.csv"))
        with pytest.raises(Exception, match="engine=spark"):
            prepare(params)  # the arrays path: this task has none
        metadata = prepare_table(params, "pandas", {s: tmp_path / s for s in ("train", "val", "test")})
        assert metadata["prep"]["classes"] == ["no", "yes"] and metadata["table"]["input"] == "features"
        assert set(metadata["profile"]["features"]) == {"tenure", "spend", "calls"}
        result = fit_stream(tmp_path / "train", tmp_path / "val", metadata,
                            TrainParams(epochs=3, learning_rate=1e-2), shuffle_rows=512)
        assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]
        assert result.history[-1]["val_accuracy"] > 0.9
        predictor = load_predictor(write_model(result, tmp_path / "model"))
        out = predictor.predict({"features": [[2.0, -1.0, 0.0], [-2.0, 1.0, 0.0]]})
        assert out["label"].tolist() == ["yes", "no"]
