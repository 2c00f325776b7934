"""Logging a saved Pillars model to MLflow as a pyfunc, with signature and input example."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import infer_signature
from mlflow.models.model import ModelInfo

from pillars.components.errors import ConfigError
from pillars.components.model.frames import frame_to_inputs, inputs_to_frame, outputs_to_frame
from pillars.components.model.predictor import (
    CONFIG_FILE,
    PREPROCESSING_FILE,
    PROFILE_FILE,
    WEIGHTS_FILE,
    Predictor,
    TorchPredictor,
    load_predictor,
    locate_model_dir,
    save_model,
)
from pillars.components.settings import DISTRIBUTION, package_version
from pillars.components.task import Examples

PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
ARTIFACT_PATH = "model"
EXAMPLE_ROWS = 3


def example_frame(predictor: Predictor, inputs: Mapping[str, np.ndarray] | None = None) -> pd.DataFrame:
    """A small input DataFrame (the input example): the first rows of ``inputs``, or zeros for a model
    whose inputs are all numbers of a fixed shape.

    Raises:
        ConfigError: no example inputs for a model that takes strings or variable-length inputs.
    """
    signature = predictor.signature
    if inputs is None:
        if any(s.datatype == "BYTES" or -1 in s.shape for s in signature.inputs):
            raise ConfigError("this model's inputs have no zero value: give a few example rows")
        inputs = {s.name: np.zeros((2, *s.shape), dtype=np.float32) for s in signature.inputs if not s.optional}
    names = {s.name for s in signature.inputs}
    rows = {k: np.asarray(v)[:EXAMPLE_ROWS] for k, v in inputs.items() if k in names}
    return inputs_to_frame(signature, rows)


def log_pillars_model(
    model_dir: str | Path,
    profile_path: str | Path | None = None,
    example_inputs: Examples | None = None,
) -> ModelInfo:
    """Log the model in ``model_dir`` to the active MLflow run as a pyfunc (models from code).

    The model is written afresh in the current saved-model format (a Pillars 0.1 model is translated on
    the way): ``config.json``, ``model.safetensors``, ``preprocessing.json`` and, when given,
    ``data_profile.json`` become the pyfunc's artifacts.

    Args:
        model_dir: a saved model folder (plain or MLflow layout).
        profile_path: the training data profile JSON, stored as ``data_profile.json`` beside the weights.
        example_inputs: a few rows of the model's inputs (named arrays) for the input example and signature.

    Returns:
        MLflow's ``ModelInfo`` of the logged model.
    """
    predictor = load_predictor(locate_model_dir(model_dir))
    if not isinstance(predictor, TorchPredictor):
        raise ConfigError(f"{model_dir}: only PyTorch models are logged as Pillars pyfuncs")
    example = example_frame(predictor, example_inputs)
    output = PillarsPredict(predictor)(example)
    if profile_path is not None and Path(profile_path).name != PROFILE_FILE:
        raise ValueError(f"the data profile must be named {PROFILE_FILE}, got {Path(profile_path).name}")
    with tempfile.TemporaryDirectory(prefix="pillars-log-") as tmp:
        folder = save_model(predictor.task, predictor.config.task, predictor.prep, predictor.model, tmp,
                            extra=predictor.config.extra)
        artifacts = {"config": str(folder / CONFIG_FILE), "weights": str(folder / WEIGHTS_FILE),
                     "preprocessing": str(folder / PREPROCESSING_FILE)}
        if profile_path is not None:
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
    """What the pyfunc returns for a DataFrame, computed in-process (used to infer the output signature)."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor

    def __call__(self, frame: pd.DataFrame) -> pd.DataFrame:
        inputs = frame_to_inputs(self.predictor.signature, frame)
        return outputs_to_frame(self.predictor.predict(inputs), self.predictor.prep)
