"""Customer churn: a user's own task, model, data and metric, on the public Pillars task API only.

- Data: synthetic customers generated deterministically from the seed (a real project reads its
  warehouse export here): the plan they are on (``basic``, ``plus``, ``pro``) and four usage numbers.
- Model: :class:`ChurnNet`, an embedding of the plan next to standardised usage, then an MLP.
- Metric: ``cost_per_customer``: a missed churner costs 5 (the customer is lost), a false alarm costs
  1 (a retention offer), averaged over customers; lower is better, and it is what the gate compares.
  The decision is cost-aware too: a customer is flagged when P(churn) > 1/6.
- Serving: ``plan`` BYTES ``[N]`` and ``usage`` FP32 ``[N, 4]`` -> ``label``, ``class_index``,
  ``probabilities``. An unknown plan is refused, naming the input.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from pillars.components.task import (
    ClassificationTask,
    DataParams,
    Dataset,
    Examples,
    InputError,
    Outputs,
    Preprocessing,
    Signature,
    TensorSpec,
)

PLANS = ("basic", "plus", "pro")
USAGE = ("minutes", "data_gb", "support_calls", "tenure_months")
MISSED_CHURNER_COST = 5.0
FALSE_ALARM_COST = 1.0


class ChurnNet(nn.Module):
    """Plan embedding + standardised usage -> churn logits."""

    def __init__(self, plans: int, usage_mean: list[float], usage_std: list[float], hidden: int) -> None:
        super().__init__()
        self.plan = nn.Embedding(plans, 4)
        self.register_buffer("mean", torch.tensor(usage_mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(usage_std, dtype=torch.float32))
        self.mlp = nn.Sequential(nn.Linear(4 + len(usage_mean), hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def forward(self, plan: torch.Tensor, usage: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([self.plan(plan), (usage - self.mean) / self.std], dim=1))


def cost_per_customer(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Average business cost of the decisions: missed churners and needless retention offers."""
    missed = np.sum((y_true == 1) & (y_pred == 0))
    false_alarms = np.sum((y_true == 0) & (y_pred == 1))
    return float((MISSED_CHURNER_COST * missed + FALSE_ALARM_COST * false_alarms) / max(len(y_true), 1))


@dataclasses.dataclass
class Churn(ClassificationTask):
    """Will this customer leave? Constructor arguments are saved with the model."""

    customers: int = 4000
    hidden: int = 32

    primary_metric = "cost_per_customer"
    lower_is_better = True
    thresholds = {"cost_per_customer": 0.9}  # predicting "stays" for everyone costs ~1.2
    lower_is_better_metrics = ClassificationTask.lower_is_better_metrics | {"cost_per_customer"}
    description = "Example user task: customer churn from plan (BYTES) and usage (FP32 [N, 4])."

    def load_data(self, params: DataParams) -> Dataset:
        rng = np.random.default_rng(1234)  # the "warehouse": the same customers every time
        n = self.customers
        plan = rng.choice(len(PLANS), size=n, p=[0.5, 0.3, 0.2])
        usage = np.stack([rng.gamma(2.0, 150.0, n), rng.gamma(2.0, 5.0, n), rng.poisson(1.5, n),
                          rng.integers(1, 72, n)], axis=1).astype(np.float32)
        logit = (-1.0 + 0.9 * usage[:, 2] - 0.05 * usage[:, 3] - 0.6 * plan + 0.002 * (300 - usage[:, 0]))
        churned = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
        order = np.random.default_rng(params.seed).permutation(n)  # the split follows the run's seed
        n_test, n_val = int(n * params.test_fraction), int(n * params.val_fraction)
        parts = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
        splits = {name: {"plan": np.asarray(PLANS)[plan[idx]], "usage": usage[idx], "label": churned[idx]}
                  for name, idx in parts.items()}
        return Dataset(splits["train"], splits["val"], splits["test"],
                       {"classes": ["stays", "churns"], "source": "churn_example (synthetic, seed 1234)"})

    def fit_preprocessing(self, train: Examples, info: Mapping[str, Any]) -> Preprocessing:
        usage = train["usage"].astype(np.float64)
        return {**super().fit_preprocessing(train, info), "plans": list(PLANS),
                "usage_mean": usage.mean(axis=0).tolist(), "usage_std": (usage.std(axis=0) + 1e-6).tolist()}

    def signature(self, prep: Preprocessing) -> Signature:
        return Signature(
            (TensorSpec("plan", "BYTES", max_bytes=32, description=f"one of {', '.join(prep['plans'])}"),
             TensorSpec("usage", "FP32", (len(USAGE),), labels=USAGE)),
            self.outputs(prep))

    def build_model(self, prep: Preprocessing) -> nn.Module:
        return ChurnNet(len(prep["plans"]), prep["usage_mean"], prep["usage_std"], self.hidden)

    def encode(self, inputs: Examples, prep: Preprocessing) -> dict[str, torch.Tensor]:
        index = {name: i for i, name in enumerate(prep["plans"])}
        unknown = sorted({str(p) for p in inputs["plan"] if p not in index})
        if unknown:
            raise InputError(f"input 'plan': unknown plan(s) {unknown[:3]}; known plans: {', '.join(prep['plans'])}")
        plan = torch.tensor([index[p] for p in inputs["plan"]], dtype=torch.long)
        return {"plan": plan, "usage": torch.as_tensor(np.asarray(inputs["usage"], dtype=np.float32))}

    def decode(self, head: torch.Tensor, inputs: Examples, prep: Preprocessing) -> Outputs:
        """Flag a customer when the expected cost of missing them exceeds that of a needless offer."""
        outputs = super().decode(head, inputs, prep)
        churns = outputs["probabilities"][:, 1] > FALSE_ALARM_COST / (FALSE_ALARM_COST + MISSED_CHURNER_COST)
        outputs["class_index"] = churns.astype(np.int64)
        outputs["label"] = np.asarray(prep["classes"], dtype=object)[outputs["class_index"]]
        return outputs

    def evaluate(self, predict: Callable[[Examples], Outputs], examples: Examples,
                 prep: Preprocessing) -> dict[str, float]:
        metrics = super().evaluate(predict, examples, prep)
        predicted = predict(examples)["class_index"]
        return {**metrics, "cost_per_customer": cost_per_customer(examples["label"], predicted)}

    def drift_features(self, inputs: Examples, prep: Preprocessing) -> dict[str, np.ndarray]:
        usage = np.asarray(inputs["usage"], dtype=np.float64)
        features = {name: usage[:, i] for i, name in enumerate(USAGE)}
        features["plan_pro"] = (np.asarray(inputs["plan"]) == "pro").astype(np.float64)
        return features


churn = Churn()
