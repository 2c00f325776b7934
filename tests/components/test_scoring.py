"""Evaluation, calibration, importance and the gate's scoring on a split of Parquet shards
(:mod:`pillars.components.evaluation.scoring`): streamed batch by batch, the same numbers as the split
loaded into memory, and only the outputs asked for and the target kept."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pillars.components.data.shards import load_examples
from pillars.components.data.splits import save_split
from pillars.components.errors import DataError
from pillars.components.evaluation.calibration import calibrate_saved_model
from pillars.components.evaluation.evaluate import evaluate
from pillars.components.evaluation.importance import IMPORTANCE_KEY, store_importance
from pillars.components.evaluation.scoring import sample_rows, score, task_metrics
from pillars.components.model.predictor import load_predictor
from pillars.components.training.fit import TrainParams, write_model
from pillars.components.training.stream import fit_stream
from tests.components.tables import prepared_table

SPLITS = ("train", "val", "test")


def _trained(tmp_path: Path, task: str) -> tuple[Path, Path, dict]:
    metadata, out = prepared_table(tmp_path, rows=2500, task=task)
    result = fit_stream(out / "train", out / "val", metadata, TrainParams(epochs=2, batch_size=64, seed=0))
    return write_model(result, tmp_path / "model"), out, metadata


@pytest.mark.parametrize("task", ["tabular_classification", "tabular_regression"])
def test_a_streamed_split_scores_the_same_as_the_split_in_memory(tmp_path, task):
    model_dir, out, metadata = _trained(tmp_path, task)
    predictor = load_predictor(model_dir)
    in_memory = {s: load_examples(out / s, metadata["table"]) for s in SPLITS}
    streamed = evaluate(predictor, {s: out / s for s in SPLITS})
    loaded = evaluate(predictor, in_memory)
    assert streamed.metrics.keys() == loaded.metrics.keys() and len(streamed.metrics) >= 7
    assert streamed.metrics == pytest.approx(loaded.metrics, rel=1e-9, abs=1e-12)
    assert (streamed.confusion, streamed.roc) == (loaded.confusion, loaded.roc)
    if task == "tabular_classification":
        assert streamed.confusion is not None and streamed.roc is not None

    scored = score(predictor, out / "test", batch=100)  # several batches, a last one shorter
    assert scored.streamed and set(scored.examples) == {"label"}  # the inputs are not kept
    assert len(scored.examples["label"]) == len(in_memory["test"]["label"])
    np.testing.assert_array_equal(scored.examples["label"], in_memory["test"]["label"])


def test_calibration_and_importance_read_shards_as_they_read_the_split_in_memory(tmp_path):
    model_dir, out, metadata = _trained(tmp_path, "tabular_classification")
    val = load_examples(out / "val", metadata["table"])
    save_split(tmp_path / "val.npz", val)
    from_shards = calibrate_saved_model(model_dir, out / "val")
    from_file = calibrate_saved_model(model_dir, tmp_path / "val.npz")
    assert from_shards is not None and from_shards.to_dict() == from_file.to_dict()
    assert from_shards.rows == len(val["label"])
    sampled = calibrate_saved_model(model_dir, out / "val", rows=100)  # a larger split: a seeded sample of it
    assert sampled is not None and 50 <= sampled.rows <= 150
    assert sampled.to_dict() == calibrate_saved_model(model_dir, tmp_path / "val.npz", rows=100).to_dict()

    importance = store_importance(model_dir, out / "val", seed=4)
    assert importance == store_importance(model_dir, tmp_path / "val.npz", seed=4)
    assert max(importance, key=importance.get) in {"x0", "x1", "x2"} and importance["x0"] > 0
    config = json.loads((model_dir / "config.json").read_text())
    assert config["extra"][IMPORTANCE_KEY] == importance


def test_a_sample_of_a_streamed_split_is_bounded_seeded_and_in_order(tmp_path):
    _, out, metadata = _trained(tmp_path, "tabular_classification")
    whole = load_examples(out / "val", metadata["table"])
    total = len(whole["label"])
    assert {k: v.tolist() for k, v in sample_rows(out / "val", total).items()} == \
        {k: v.tolist() for k, v in whole.items()}  # no more rows than asked: all of them
    name = metadata["table"]["input"]
    a, b = sample_rows(out / "val", 100, seed=7, batch=64), sample_rows(out / "val", 100, seed=7, batch=64)
    assert 50 <= len(a["label"]) <= 150 and np.array_equal(a[name], b[name])
    positions = {tuple(r): i for i, r in enumerate(whole[name].tolist())}
    taken = [positions[tuple(r)] for r in a[name].tolist()]  # every sampled row is a row of the split ...
    assert taken == sorted(taken)  # ... in the split's order
    assert not np.array_equal(a[name], sample_rows(out / "val", 100, seed=8, batch=64)[name])


def test_a_task_that_scores_other_rows_than_it_was_given_is_refused_on_a_streamed_split(tmp_path):
    model_dir, out, _ = _trained(tmp_path, "tabular_classification")
    predictor = load_predictor(model_dir)

    class Resampling(type(predictor.task)):
        def evaluate(self, predict, examples, prep):
            return {"n": float(len(predict({k: v[:10] for k, v in examples.items()})["label"]))}

    predictor.task.__class__ = Resampling
    with pytest.raises(DataError, match="evaluate must call predict\\(examples\\) with the examples it was given"):
        task_metrics(predictor, score(predictor, out / "test"))
