"""Training a task in-process, through the task API alone (load, preprocess, encode, loss, evaluate).

The pipeline's own tests train through kfp.local and a real MLflow server; these tests prove a task's
own contract (data, model, floor, behaviour) quickly, with the same encode/decode the server runs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch

from pillars.components.task import Dataset, DataParams, Examples, Outputs, Preprocessing, Task


@dataclasses.dataclass
class Trained:
    """A task trained in-process: its data, preprocessing, model and the served predict path."""

    task: Task
    data: Dataset
    prep: Preprocessing
    model: torch.nn.Module

    @torch.inference_mode()
    def predict(self, inputs: Examples) -> Outputs:
        self.model.eval()
        return self.task.decode(self.model(**self.task.encode(inputs, self.prep)), inputs, self.prep)

    def inputs(self, split: str = "test") -> Examples:
        names = [s.name for s in self.task.signature(self.prep).inputs]
        examples = self.data.splits()[split]
        return {n: examples[n] for n in names if n in examples}

    def evaluate(self, split: str = "test") -> dict[str, float]:
        return self.task.evaluate(self.predict, self.data.splits()[split], self.prep)


def train_in_process(task: Task, epochs: int = 10, batch_size: int = 64, learning_rate: float = 1e-3,
                     seed: int = 0, params: DataParams | None = None) -> Trained:
    """Adam on the task's loss for ``epochs`` epochs; keeps the weights of the best validation loss."""
    torch.manual_seed(seed)
    data = task.load_data(params or DataParams(seed=seed))
    prep = task.fit_preprocessing(data.train, data.info)
    model = task.build_model(prep)
    names = [s.name for s in task.signature(prep).inputs]
    encode = {split: ({k: v for k, v in task.encode({n: ex[n] for n in names if n in ex}, prep).items()},
                      task.targets(ex, prep)) for split, ex in (("train", data.train), ("val", data.val))}
    x_train, y_train = encode["train"]
    x_val, y_val = encode["val"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    best: tuple[float, dict[str, Any]] = (float("inf"), {})
    n = len(y_train)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            loss = task.loss(model(**{k: v[idx] for k, v in x_train.items()}), y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            val_loss = float(task.loss(model(**x_val), y_val))
        if val_loss < best[0]:
            best = (val_loss, {k: v.clone() for k, v in model.state_dict().items()})
    model.load_state_dict(best[1])
    return Trained(task, data, prep, model.eval())


@pytest.fixture
def trainer() -> Any:
    return train_in_process


def as_float(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)
