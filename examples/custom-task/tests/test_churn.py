"""The example's own tests: found by entry point and by ``module:attribute``, trains to its own floor,
saves pickle-free, serves the same outputs through Pillars' predictor, refuses bad input naming it.

Run them with ``pytest examples/custom-task/tests`` after ``pip install -e examples/custom-task``
(Pillars' ``make test`` installs the example and runs them).
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import numpy as np
import pytest

from pillars.components.errors import ConfigError
from pillars.components.model.predictor import CONFIG_FILE, load_predictor, save_model
from pillars.components.task import InputError, known_tasks, load_task
import churn_example.tasks as churn_example
import torch

from pillars.components.task import DataParams, Task


class Trained:
    """The task trained in-process with a plain loop: data, preprocessing, model, the served predict path."""

    def __init__(self, task: Task, epochs: int) -> None:
        torch.manual_seed(0)
        self.task, self.data = task, task.load_data(DataParams(seed=0))
        self.prep = task.fit_preprocessing(self.data.train, self.data.info)
        self.model = task.build_model(self.prep)
        x, y = task.encode(self.inputs("train"), self.prep), task.targets(self.data.train, self.prep)
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        for epoch in range(epochs):
            order = torch.randperm(len(y), generator=torch.Generator().manual_seed(epoch))
            for start in range(0, len(y), 64):
                idx = order[start:start + 64]
                loss = task.loss(self.model(**{k: v[idx] for k, v in x.items()}), y[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        self.model.eval()

    def inputs(self, split: str = "test") -> dict[str, np.ndarray]:
        examples = self.data.splits()[split]
        return {"plan": examples["plan"], "usage": examples["usage"]}

    @torch.inference_mode()
    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.task.decode(self.model(**self.task.encode(inputs, self.prep)), inputs, self.prep)

    def evaluate(self) -> dict[str, float]:
        return self.task.evaluate(self.predict, self.data.test, self.prep)


@pytest.fixture(scope="module")
def trained() -> Trained:
    return Trained(load_task("churn_example.tasks:churn", {"customers": 3000}), epochs=10)


def test_installed_as_its_own_distribution_and_found_by_entry_point() -> None:
    assert importlib.metadata.distribution("pillars-example-churn").version == "0.1.0"
    assert known_tasks()["churn"] == "churn_example.tasks:churn"
    by_name, by_reference = load_task("churn"), load_task("churn_example.tasks:churn")
    assert type(by_name) is type(by_reference) is churn_example.Churn
    assert load_task("churn", {"hidden": 8}).hidden == 8


def test_beats_predicting_that_nobody_churns_by_half(trained: Trained) -> None:
    metrics = trained.evaluate()
    y = trained.data.test["label"]
    everyone_stays = churn_example.cost_per_customer(y, np.zeros_like(y))
    assert metrics["cost_per_customer"] < 0.5 * everyone_stays, (metrics, everyone_stays)
    assert metrics["cost_per_customer"] <= trained.task.thresholds["cost_per_customer"]


def test_saved_model_is_pickle_free_and_serves_the_same_outputs(trained: Trained, tmp_path: Path) -> None:
    save_model(trained.task, "churn_example.tasks:churn", trained.prep, trained.model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors", "preprocessing.json"]
    predictor = load_predictor(tmp_path)
    inputs = trained.inputs()
    served, direct = predictor.predict(inputs), trained.predict(inputs)
    np.testing.assert_allclose(served["probabilities"], direct["probabilities"], rtol=1e-6)
    assert list(served["label"]) == list(direct["label"])
    names, rows = predictor.drift_rows(inputs)
    assert names[-1] == "plan_pro" and rows.shape == (len(inputs["plan"]), 5)


def test_bad_inputs_name_the_input(trained: Trained, tmp_path: Path) -> None:
    save_model(trained.task, "churn_example.tasks:churn", trained.prep, trained.model, tmp_path)
    predictor = load_predictor(tmp_path)
    usage = np.ones((1, 4), dtype=np.float32)
    with pytest.raises(InputError, match="'plan'.*gold"):
        predictor.predict({"plan": ["gold"], "usage": usage})
    with pytest.raises(InputError, match="'usage'.*shape"):
        predictor.predict({"plan": ["basic"], "usage": np.ones((1, 3), dtype=np.float32)})
    with pytest.raises(InputError, match="'usage'.*NaN"):
        predictor.predict({"plan": ["basic"], "usage": np.full((1, 4), np.nan, dtype=np.float32)})
    with pytest.raises(InputError, match="'plan' is missing"):
        predictor.predict({"usage": usage})


def test_a_model_whose_task_is_not_installed_names_the_package(trained: Trained, tmp_path: Path) -> None:
    save_model(trained.task, "churn_example.tasks:churn", trained.prep, trained.model, tmp_path)
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    (tmp_path / CONFIG_FILE).write_text(json.dumps({**config, "task": "acme_churn.tasks:churn"}))
    with pytest.raises(ConfigError, match="install 'acme_churn'") as raised:
        load_predictor(tmp_path)
    assert "\n" not in str(raised.value)
