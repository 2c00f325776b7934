"""Logging a saved Pillars model to MLflow as a pyfunc, with signature and input example."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import infer_signature
from mlflow.models.model import ModelInfo

from pillars.components.models import CONFIG_FILE, PROFILE_FILE, WEIGHTS_FILE, Predictor, locate_model_dir
from pillars.components.settings import DISTRIBUTION, package_version

PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
ARTIFACT_PATH = "model"


def example_frame(predictor: Predictor, rows: np.ndarray | None = None) -> pd.DataFrame:
    """A small input DataFrame with the model's feature names (zeros when no rows are given)."""
    config = predictor.config
    values = rows if rows is not None else np.zeros((2, config.n_features), dtype=np.float32)
    return pd.DataFrame(np.asarray(values, dtype=np.float64).reshape(len(values), -1), columns=config.feature_names)


def log_pillars_model(
    model_dir: str | Path,
    profile_path: str | Path | None = None,
    example_rows: np.ndarray | None = None,
) -> ModelInfo:
    """Log the model in ``model_dir`` to the active MLflow run as a pyfunc (models from code).

    Args:
        model_dir: folder with ``config.json`` and ``model.safetensors``.
        profile_path: the training data profile JSON, stored as ``data_profile.json`` beside the weights.
        example_rows: a few raw input rows for the input example and signature.

    Returns:
        MLflow's ``ModelInfo`` of the logged model.
    """
    model_dir = locate_model_dir(model_dir)
    predictor = Predictor.load(model_dir)
    example = example_frame(predictor, example_rows)
    output = PillarsPredict(predictor)(example)
    artifacts = {
        "config": str(model_dir / CONFIG_FILE),
        "weights": str(model_dir / WEIGHTS_FILE),
    }
    if profile_path is not None:
        profile_path = Path(profile_path)
        if profile_path.name != PROFILE_FILE:
            raise ValueError(f"the data profile must be named {PROFILE_FILE}, got {profile_path.name}")
        artifacts["profile"] = str(profile_path)
    return mlflow.pyfunc.log_model(
        name=ARTIFACT_PATH,
        python_model=str(PYFUNC_CODE),
        artifacts=artifacts,
        signature=infer_signature(example, output),
        input_example=example,
        pip_requirements=[f"{DISTRIBUTION}=={package_version()}"],
    )


class PillarsPredict:
    """Calls the pyfunc's predict in-process (used to infer the output signature)."""

    def __init__(self, predictor: Predictor) -> None:
        from pillars.components.pyfunc_model import PillarsPyfunc

        self._model = PillarsPyfunc()
        self._model.predictor = predictor

    def __call__(self, frame: pd.DataFrame) -> pd.DataFrame:
        return self._model.predict(None, frame)
