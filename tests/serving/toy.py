"""Tiny real Pillars models for serving tests: the built-in tabular task's network, fitted a few steps,
saved in the task API's format (``pillars.components.model.predictor.save_model``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from pillars.components.model.predictor import save_model
from pillars.components.task import load_task

N_FEATURES = 4
CLASSES = ["setosa", "versicolor", "virginica"]


def toy_rows(n: int, seed: int = 0) -> np.ndarray:
    """``n`` raw input rows of the toy classifier (float32)."""
    return np.random.default_rng(seed).normal(5.0, 2.0, size=(n, N_FEATURES)).astype(np.float32)


def make_classifier(directory: Path, steps: int = 30, seed: int = 0) -> Path:
    """A 4-feature, 3-class MLP fitted for a few steps on separable synthetic data; saved to ``directory``."""
    torch.manual_seed(seed)
    reference = "pillars.tasks.tabular:TabularClassification"
    task = load_task(reference, {"hidden_sizes": [16], "dropout": 0.0})
    x = toy_rows(256)
    y = (x[:, 0] > 5.0).astype(np.int64) + (x[:, 1] > 6.0).astype(np.int64)
    prep = {"feature_names": [f"f{i}" for i in range(N_FEATURES)], "input_shape": [N_FEATURES],
            "mean": x.mean(axis=0).tolist(), "std": x.std(axis=0).tolist(), "classes": CLASSES}
    model = task.build_model(prep)
    _fit(model, torch.from_numpy(x), torch.from_numpy(y), steps)
    return save_model(task, reference, prep, model, directory)


def make_regressor(directory: Path) -> Path:
    """A 3-feature regressor (untrained is enough to check the output contract); saved to ``directory``."""
    torch.manual_seed(0)
    reference = "pillars.tasks.tabular:TabularRegression"
    task = load_task(reference, {"hidden_sizes": [8], "dropout": 0.0})
    prep = {"feature_names": ["a", "b", "c"], "input_shape": [3], "mean": [0.0] * 3, "std": [1.0] * 3,
            "target_mean": 0.0, "target_std": 1.0}
    return save_model(task, reference, prep, task.build_model(prep).eval(), directory)


def _fit(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    model.eval()


def train_split(n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows and labels of the toy classifier's train split (the same rule as :func:`make_classifier`)."""
    x = toy_rows(n, seed)
    return x, (x[:, 0] > 5.0).astype(np.int64) + (x[:, 1] > 6.0).astype(np.int64)


def make_profiled_classifier(directory: Path, steps: int = 30, seed: int = 0) -> Path:
    """The toy classifier with ``data_profile.json`` of its train split beside the weights (the drift baseline).

    ``seed`` changes the weights' initialisation (a different "retrained" version), not the data.
    """
    from pillars.components.data.profile import build_profile

    make_classifier(directory, steps=steps, seed=seed)
    x, y = train_split()
    profile = build_profile(x, y, [f"f{i}" for i in range(N_FEATURES)], "classification", CLASSES)
    (directory / "data_profile.json").write_text(json.dumps(profile))
    return directory


def make_calibrated_classifier(directory: Path, steps: int = 30) -> Path:
    """The toy classifier with its CBPE calibration fitted on a held-out split of the same rule, by the
    training step's own function (:func:`pillars.components.evaluation.calibration.calibrate_saved_model`)."""
    from pillars.components.data.splits import save_split
    from pillars.components.evaluation.calibration import calibrate_saved_model
    from pillars.tasks.tabular import INPUT

    make_classifier(directory, steps=steps)
    x, y = train_split(500, seed=11)
    val = directory.parent / "val.npz"
    save_split(val, {INPUT: x, "label": y})
    calibrate_saved_model(directory, val)
    return directory
