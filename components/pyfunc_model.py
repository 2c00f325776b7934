"""MLflow pyfunc flavour of a Pillars model, logged as "models from code" (nothing is pickled).

``mlflow.pyfunc.load_model("models:/NAME@champion").predict(df)`` takes a DataFrame whose columns
are the model's feature names (or any ``n_features`` numeric columns in order) and returns a
DataFrame: ``label``, ``class_index`` and ``prob_<class>`` columns for a classifier, ``value``
for a regressor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from pillars.components.models import Predictor


class PillarsPyfunc(mlflow.pyfunc.PythonModel):
    """Loads the safetensors weights and config from the model's artifacts and predicts."""

    def load_context(self, context: Any) -> None:
        self.predictor = Predictor.load(Path(context.artifacts["config"]).parent)

    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
        config = self.predictor.config
        if isinstance(model_input, pd.DataFrame):
            columns = [c for c in config.feature_names if c in model_input.columns]
            frame = model_input[columns] if len(columns) == config.n_features else model_input
            values = frame.to_numpy(dtype=np.float32)
        else:
            values = np.asarray(model_input, dtype=np.float32)
        out = self.predictor.predict(values)
        if config.kind == "regression":
            return pd.DataFrame({"value": out["value"]})
        frame = pd.DataFrame({"label": out["label"].astype(str), "class_index": out["class_index"]})
        for i, name in enumerate(config.classes or []):
            frame[f"prob_{name}"] = out["probabilities"][:, i]
        return frame


mlflow.models.set_model(PillarsPyfunc())
