"""MLflow pyfunc flavour of a Pillars model, logged as "models from code" (nothing is pickled).

``mlflow.pyfunc.load_model("models:/NAME@champion").predict(df)`` loads the saved model from the
artifacts (:func:`pillars.components.model.predictor.load_predictor`: its task comes from the installed
packages) and takes a DataFrame whose columns are the model's input names (a single table input: its
feature names); it returns a DataFrame of the outputs (:mod:`pillars.components.model.frames`): ``label``,
``class_index`` and ``prob_<class>`` for a classifier, ``value`` for a regressor, lists for ``[N, k]`` outputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from pillars.components.model.frames import frame_to_inputs, outputs_to_frame
from pillars.components.model.predictor import Predictor, load_predictor


class PillarsPyfunc(mlflow.pyfunc.PythonModel):
    """Loads the saved model from the model's artifacts and predicts."""

    predictor: Predictor

    def load_context(self, context: Any) -> None:
        self.predictor = load_predictor(Path(context.artifacts["config"]).parent)

    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
        signature = self.predictor.signature
        if isinstance(model_input, pd.DataFrame):
            inputs = frame_to_inputs(signature, model_input)
        elif isinstance(model_input, Mapping):
            inputs = dict(model_input)
        else:
            inputs = {signature.inputs[0].name: np.asarray(model_input)}
        return outputs_to_frame(self.predictor.predict(inputs), self.predictor.prep)


mlflow.models.set_model(PillarsPyfunc())
