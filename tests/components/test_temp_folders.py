"""The gate's champion download and the warm start's download are removed after use."""

from __future__ import annotations

import tempfile

import mlflow
import numpy as np
import pytest

from pillars.components.model.predictor import load_predictor, save_model
from pillars.components.registry.register import promote, register_model
from pillars.components.registry.tracking import ensure_experiment
from pillars.components.training.train import warm_start
from pillars.components.evaluation.gate import champion_score
from tests.models import TABULAR, tabular_classifier, tabular_prep

FEATURES = ["a", "b", "c"]


@pytest.fixture
def champion(local_store, tmp_path):
    task, prep, model = tabular_classifier(FEATURES, hidden_sizes=[4])
    model_dir = save_model(task, TABULAR, prep, model, tmp_path / "model")
    with mlflow.start_run(experiment_id=ensure_experiment("toy")) as run:
        pass
    promote("toy", register_model(model_dir, None, "toy", run.info.run_id, {}), "first")
    return task, prep


@pytest.fixture
def temp_root(tmp_path, monkeypatch):
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def test_scoring_the_champion_leaves_no_download_behind(champion, temp_root):
    task, prep = champion
    test = {"input-0": np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32), "label": np.arange(8) % 2}
    version, score, how = champion_score("toy", task, TABULAR, prep, test)
    assert version == "1" and 0 <= score <= 1 and how == "scored on the same test split"
    assert list(temp_root.iterdir()) == []


def test_the_warm_start_download_lives_only_while_training(champion, temp_root):
    task, prep = champion
    metadata = {"task": TABULAR, "task_args": {"hidden_sizes": [4]}, "prep": prep}
    with warm_start("toy", metadata) as (version, folder):
        assert version == "1" and load_predictor(folder).prep["classes"] == ["no", "yes"]
        assert list(temp_root.iterdir()), "the download is in the temporary folder while in use"
    assert list(temp_root.iterdir()) == []
    with warm_start("toy", {**metadata, "prep": tabular_prep(FEATURES, ["a", "b", "c"])}) as (version, folder):
        assert (version, folder) == (None, None), "a champion with other outputs is not a starting point"
    with warm_start("toy", {**metadata, "task": "pillars.tasks.tabular:breast_cancer"}) as (version, folder):
        assert (version, folder) == (None, None), "a champion of another task is not a starting point"
    assert list(temp_root.iterdir()) == []
