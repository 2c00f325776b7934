"""The stock task bases: :class:`ClassificationTask` and :class:`RegressionTask`.

They supply the target's preprocessing, the targets, the loss, ``decode``, the outputs and the metrics, so a
task built on one implements only ``load_data``, ``build_model``, ``inputs`` and ``encode``. Re-exported by
:mod:`pillars.components.task`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from pillars.components.errors import DataError
from pillars.components.task.base import Examples, Outputs, Preprocessing, Task
from pillars.components.task.contract import TensorSpec


class ClassificationTask(Task):
    """A classifier: the head is logits ``[N, classes]``; outputs ``label``, ``class_index``, ``probabilities``.

    ``prep["classes"]`` holds the class names (set it in :meth:`fit_preprocessing`, or leave the default,
    which reads ``info["classes"]``); targets are class indices in the column ``target_column``.
    """

    kind: ClassVar[str] = "classification"
    primary_metric: ClassVar[str] = "accuracy"
    target_column: ClassVar[str] = "label"

    def fit_preprocessing(self, train: Examples, info: Mapping[str, Any]) -> Preprocessing:
        if not info.get("classes"):
            raise DataError("a classification task's data info needs its class names under 'classes'")
        return {"classes": list(info["classes"])}

    def outputs(self, prep: Preprocessing) -> tuple[TensorSpec, ...]:
        """``label`` BYTES, ``class_index`` INT64 and ``probabilities`` FP32 ``[classes]``, as :meth:`decode` gives."""
        return (TensorSpec("label", "BYTES"), TensorSpec("class_index", "INT64"),
                TensorSpec("probabilities", "FP32", (len(prep["classes"]),)))

    def targets(self, examples: Examples, prep: Preprocessing) -> torch.Tensor:
        return torch.as_tensor(np.asarray(examples[self.target_column], dtype=np.int64))

    def loss(self, head: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(head.float(), targets)

    def decode(self, head: torch.Tensor, inputs: Examples, prep: Preprocessing) -> Outputs:
        probabilities = torch.softmax(head.float(), dim=-1).cpu().numpy().astype(np.float32)
        index = probabilities.argmax(axis=1).astype(np.int64)
        labels = np.asarray(prep["classes"], dtype=object)[index]
        return {"label": labels, "class_index": index, "probabilities": probabilities}

    def batch_metrics(self, head: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        return {"accuracy": float((head.argmax(-1) == targets).float().mean())}

    def evaluate(self, predict: Callable[[Examples], Outputs], examples: Examples,
                 prep: Preprocessing) -> dict[str, float]:
        from sklearn import metrics as skm  # seconds of imports: only in the processes that score

        out = predict(examples)
        y = np.asarray(examples[self.target_column], dtype=np.int64)
        n = len(prep["classes"])
        result = {"accuracy": skm.accuracy_score(y, out["class_index"]),
                  "f1_macro": skm.f1_score(y, out["class_index"], average="macro", labels=range(n), zero_division=0)}
        if n == 2 and len(np.unique(y)) == 2:
            result["roc_auc"] = skm.roc_auc_score(y, out["probabilities"][:, 1])
        return {k: float(v) for k, v in result.items()}

    def label_profile(self, train: Examples, prep: Preprocessing) -> dict[str, Any] | None:
        counts = np.bincount(np.asarray(train[self.target_column], dtype=np.int64), minlength=len(prep["classes"]))
        return {"classes": list(prep["classes"]), "counts": counts.tolist(),
                "shares": (counts / max(counts.sum(), 1)).tolist()}


class RegressionTask(Task):
    """A regressor of one value: the head is ``[N, 1]`` on a standardised target scale; outputs ``value``.

    :meth:`fit_preprocessing` stores the target's train mean and standard deviation as
    ``prep["target_mean"]``/``prep["target_std"]``; the loss is MSE on that scale.
    """

    kind: ClassVar[str] = "regression"
    primary_metric: ClassVar[str] = "rmse"
    lower_is_better: ClassVar[bool] = True
    target_column: ClassVar[str] = "label"

    def fit_preprocessing(self, train: Examples, info: Mapping[str, Any]) -> Preprocessing:
        y = np.asarray(train[self.target_column], dtype=np.float64)
        return {"target_mean": float(y.mean()), "target_std": float(y.std() or 1.0)}

    def outputs(self, prep: Preprocessing) -> tuple[TensorSpec, ...]:
        """``value`` FP32, one number per row on the target's own scale, as :meth:`decode` gives."""
        return (TensorSpec("value", "FP32"),)

    def targets(self, examples: Examples, prep: Preprocessing) -> torch.Tensor:
        y = np.asarray(examples[self.target_column], dtype=np.float32)
        return torch.as_tensor((y - prep["target_mean"]) / prep["target_std"], dtype=torch.float32)

    def loss(self, head: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(head.float().reshape(-1), targets)

    def decode(self, head: torch.Tensor, inputs: Examples, prep: Preprocessing) -> Outputs:
        value = head.float().reshape(-1).cpu().numpy() * prep["target_std"] + prep["target_mean"]
        return {"value": value.astype(np.float32)}

    def evaluate(self, predict: Callable[[Examples], Outputs], examples: Examples,
                 prep: Preprocessing) -> dict[str, float]:
        from sklearn import metrics as skm  # seconds of imports: only in the processes that score

        y = np.asarray(examples[self.target_column], dtype=np.float64)
        value = predict(examples)["value"]
        return {"rmse": float(np.sqrt(skm.mean_squared_error(y, value))),
                "mae": float(skm.mean_absolute_error(y, value)), "r2": float(skm.r2_score(y, value))}

    def label_profile(self, train: Examples, prep: Preprocessing) -> dict[str, Any] | None:
        from pillars.components.data.profile import feature_profile

        return feature_profile(np.asarray(train[self.target_column], dtype=np.float64))
