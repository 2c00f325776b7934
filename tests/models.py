"""Toy models of the tests, in one place: tiny tabular classifiers saved in the task API's format.

They are the built-in tabular task (``pillars.tasks.tabular``) over a few named features with made-up
standardisation, so each builds and saves in milliseconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from pillars.components.model.predictor import SavedConfig, TorchPredictor, save_model
from pillars.components.task import Task, load_task

TABULAR = "pillars.tasks.tabular:tabular_classification"


def tabular_prep(feature_names: Sequence[str], classes: Sequence[str] | None = ("no", "yes"),
                 input_shape: Sequence[int] | None = None) -> dict:
    n = len(feature_names)
    prep = {"feature_names": list(feature_names), "input_shape": list(input_shape or [n]),
            "mean": [0.0] * n, "std": [1.0] * n}
    if classes is not None:
        prep["classes"] = list(classes)
    return prep


def tabular_classifier(feature_names: Sequence[str] = ("a", "b", "c"), classes: Sequence[str] = ("no", "yes"),
                       hidden_sizes: Sequence[int] = (8,), seed: int = 0, architecture: str = "mlp",
                       input_shape: Sequence[int] | None = None) -> tuple[Task, dict, torch.nn.Module]:
    """``(task, prep, model)``: an untrained (seeded) classifier of the tabular task."""
    task = load_task(TABULAR, {"hidden_sizes": list(hidden_sizes), "architecture": architecture})
    prep = tabular_prep(feature_names, classes, input_shape)
    torch.manual_seed(seed)
    return task, prep, task.build_model(prep).eval()


def save_classifier(directory: str | Path, feature_names: Sequence[str] = ("a", "b", "c"),
                    classes: Sequence[str] = ("no", "yes"), seed: int = 0, **kwargs) -> Path:
    """A tabular classifier saved in ``directory`` (config.json, model.safetensors, preprocessing.json)."""
    task, prep, model = tabular_classifier(feature_names, classes, seed=seed, **kwargs)
    return save_model(task, TABULAR, prep, model, directory)


def predictor_of(task: Task, prep: dict, model: torch.nn.Module, reference: str = TABULAR) -> TorchPredictor:
    """A predictor over an in-memory model, as :func:`pillars.components.model.predictor.load_predictor` builds one."""
    config = SavedConfig(reference, task.task_args(), task.signature(prep).to_dict())
    return TorchPredictor(task, prep, config, model.eval(), torch.device("cpu"))


def rows(n: int, features: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, features)).astype(np.float32)


def save_legacy_classifier(directory: str | Path, feature_names: Sequence[str] = ("a", "b", "c"),
                           classes: Sequence[str] = ("no", "yes"), seed: int = 0) -> Path:
    """A model folder exactly as Pillars 0.1 saved one: ``config.json`` a serialised ``ModelConfig``
    (``format: pillars.v1``) and ``model.safetensors`` with the standardisation as buffers, nothing else."""
    import json

    from safetensors.torch import save_file

    from pillars.tasks.tabular.network import ModelConfig, build_model

    config = ModelConfig(task="toy", kind="classification", architecture="mlp", input_shape=[len(feature_names)],
                         feature_names=list(feature_names), classes=list(classes), hidden_sizes=[8])
    torch.manual_seed(seed)
    model = build_model(config)
    model.standardize.fit(np.linspace(-0.5, 0.5, len(feature_names)), np.linspace(0.5, 2.0, len(feature_names)))
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / "model.safetensors"),
              metadata={"format": "pillars.v1"})
    (directory / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    return directory
