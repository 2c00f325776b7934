"""Permutation importance of a model's drift features on the validation split: which drift matters.

The server weighs each drifted feature by how much the model relies on it
(:mod:`pillars.serving.monitoring.drift`), so a shift in a feature the model ignores does not ask for
retraining and a shift in one it leans on does. Importance here is Breiman's permutation importance: the
rise of the task's own loss (its training loss: smoother than an accuracy over a few hundred rows) on the
validation split when one column is shuffled, the mean of ``repeats`` shuffles, clipped at 0.

Only features that are columns of the model's inputs can be shuffled: a task whose drift features are its
numeric inputs' columns one for one (the tabular tasks: every built-in table, the digits images) gets an
importance per feature; any other (token counts of a text, an audio's length) gets none, and the server then
weighs its features equally (said in its log).

The result travels in the saved model's ``config.json`` (``extra["feature_importance"]``: feature name ->
importance), beside the calibration (:mod:`pillars.components.evaluation.calibration`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from pillars.components.evaluation.scoring import Split, sample_rows
from pillars.components.model.predictor import CONFIG_FILE, Predictor, load_predictor, locate_model_dir
from pillars.components.task import Examples
from pillars.components.task.examples import input_columns, row_count, take

IMPORTANCE_KEY = "feature_importance"
"""The key of the importances in a saved model's ``config.json`` ``extra``."""
PREDICT_ROWS = 1024
SAMPLE_ROWS = 50_000
"""Validation rows the importance is measured on at most (a seeded sample of a larger split, read streaming)."""


def _loss(predictor: Predictor, inputs: Examples, targets: torch.Tensor) -> float:
    """The task's own loss on ``inputs`` (its training loss: smoother than an accuracy on a few hundred rows)."""
    task = predictor.task
    heads = []
    with torch.inference_mode():
        for i in range(0, row_count(inputs), PREDICT_ROWS):
            encoded = task.encode(take(inputs, slice(i, i + PREDICT_ROWS)), predictor.prep)
            heads.append(predictor.forward(encoded).float().cpu())
        return float(task.loss(torch.cat(heads), targets))


def permutation_importance(predictor: Predictor, val: Examples, repeats: int = 3, seed: int = 0
                           ) -> dict[str, float] | None:
    """Importance of each drift feature (name -> rise of the task's loss, >= 0), or None when the task's
    drift features are not its input columns one for one.

    Args:
        predictor: the trained model, loaded as the server loads it.
        val: the validation split (inputs and targets).
        repeats: shuffles per feature (their mean drop is the importance).
        seed: for the shuffles.
    """
    inputs = input_columns(predictor.signature, val)
    numeric = {k: np.asarray(v) for k, v in inputs.items() if np.asarray(v).dtype.kind in "iuf"}
    if len(numeric) != 1 or len(numeric) != len(inputs):
        return None
    (name, array), = numeric.items()
    flat = array.reshape(len(array), -1)
    names, matrix = predictor.drift_rows(predictor.check(inputs))
    if matrix.shape[1] != flat.shape[1] or not np.allclose(matrix, flat, equal_nan=True):
        return None
    targets = predictor.task.targets(val, predictor.prep)
    base = _loss(predictor, inputs, targets)
    rng = np.random.default_rng(seed)
    importance = {}
    for j, feature in enumerate(names):
        drops = []
        for _ in range(repeats):
            shuffled = flat.copy()
            shuffled[:, j] = rng.permutation(shuffled[:, j])
            drops.append(_loss(predictor, {name: shuffled.reshape(array.shape)}, targets) - base)
        importance[feature] = max(float(np.mean(drops)), 0.0)
    return importance


def store_importance(model_dir: str | Path, val_path: Split, repeats: int = 3, seed: int = 0,
                     rows: int = SAMPLE_ROWS) -> dict[str, float] | None:
    """:func:`permutation_importance` of the model in ``model_dir`` on the split at ``val_path`` (on a seeded
    sample of ``rows`` rows when it has more), written into its ``config.json``; None (nothing written) when
    the task's drift features cannot be shuffled."""
    directory = locate_model_dir(model_dir)
    importance = permutation_importance(load_predictor(directory), sample_rows(val_path, rows, seed), repeats, seed)
    if importance is None:
        return None
    config_file = directory / CONFIG_FILE
    config = json.loads(config_file.read_text())
    config.setdefault("extra", {})[IMPORTANCE_KEY] = importance
    config_file.write_text(json.dumps(config, indent=2))
    return importance
