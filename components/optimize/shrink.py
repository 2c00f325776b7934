"""Smaller PyTorch models of a task: magnitude pruning with a short fine-tune, and distillation.

- :func:`prune_model`: global L1 magnitude pruning (``torch.nn.utils.prune``) of every Linear/Conv
  weight to a stated sparsity, a fine-tune on the task's own targets and loss with the masks on, then
  ``prune.remove``. The weights stay dense tensors: the zeros show in a count of nonzero weights and in
  the compressed size, not in the raw file size.
- :func:`distill`: the task's :meth:`~pillars.components.task.Task.student` trained on the teacher's
  soft targets at a temperature, mixed with the labels' own loss.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from pillars.components.errors import ConfigError, DataError
from pillars.components.task.examples import input_columns, row_count, take
from pillars.components.task import Examples, Task

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclasses.dataclass(frozen=True)
class FitParams:
    """The short training pruning's fine-tune and distillation run."""

    epochs: int = 2
    learning_rate: float = 1e-3
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ConfigError(f"fine-tune needs epochs >= 0, batch_size >= 1, learning_rate > 0; got {self}")


def _fit(task: Task, prep: Mapping[str, Any], model: nn.Module, train: Examples, params: FitParams,
         loss: Callable[[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]) -> nn.Module:
    """AdamW on ``loss(head, targets, encoded)`` over the train split, batches encoded as training does."""
    if row_count(train) == 0:
        raise DataError("the train split is empty: nothing to fine-tune on")
    inputs, targets = input_columns(task.signature(prep), train), task.targets(train, prep)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=params.learning_rate)
    n = row_count(inputs)
    model.train()
    for epoch in range(params.epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(params.seed + epoch)).numpy()
        for start in range(0, n, params.batch_size):
            index = order[start:start + params.batch_size]
            encoded = task.encode(take(inputs, index), prep)
            value = loss(model(**encoded), targets[torch.as_tensor(index)], encoded)
            optimizer.zero_grad()
            value.backward()
            optimizer.step()
    return model.eval()


def prunable(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """The ``weight`` of every Linear and Conv layer: what global magnitude pruning ranks together."""
    return [(m, "weight") for m in model.modules() if isinstance(m, PRUNABLE)]


def prune_model(task: Task, prep: Mapping[str, Any], model: nn.Module, train: Examples, sparsity: float,
                params: FitParams = FitParams()) -> nn.Module:
    """A copy of ``model`` with the ``sparsity`` share of its Linear/Conv weights of smallest magnitude
    (ranked globally) set to zero, fine-tuned with the zeros held, the masks then made permanent.

    Raises:
        ConfigError: ``sparsity`` is not in (0, 1), or the model has no Linear/Conv layer.
    """
    if not 0.0 < sparsity < 1.0:
        raise ConfigError(f"sparsity must be in (0, 1), got {sparsity}")
    pruned = copy.deepcopy(model).cpu()
    targets = prunable(pruned)
    if not targets:
        raise ConfigError(f"{type(model).__name__} has no Linear or Conv layer to prune")
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=sparsity)
    _fit(task, prep, pruned, train, params, lambda head, y, _: task.loss(head, y))
    for module, name in targets:
        prune.remove(module, name)
    return pruned


def distill(task: Task, student_task: Task, prep: Mapping[str, Any], teacher: nn.Module, train: Examples,
            temperature: float = 2.0, alpha: float = 0.5, params: FitParams = FitParams(epochs=10)) -> nn.Module:
    """Train ``student_task``'s model on ``teacher``'s soft targets and the labels.

    The loss is ``alpha * soft + (1 - alpha) * task.loss``: ``soft`` is the KL divergence between the
    student's and teacher's distributions at ``temperature``, times ``temperature**2`` (classification),
    else the MSE between their heads.

    Raises:
        ConfigError: ``temperature`` <= 0 or ``alpha`` outside [0, 1].
    """
    if temperature <= 0 or not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"distillation needs temperature > 0 and alpha in [0, 1]; got {temperature}, {alpha}")
    torch.manual_seed(params.seed)
    student = student_task.build_model(dict(prep))
    teacher = teacher.cpu().eval()

    def loss(head: torch.Tensor, y: torch.Tensor, encoded: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            soft_target = teacher(**encoded).float()
        if task.kind == "classification":
            soft = nn.functional.kl_div(torch.log_softmax(head.float() / temperature, dim=-1),
                                        torch.softmax(soft_target / temperature, dim=-1),
                                        reduction="batchmean") * temperature ** 2
        else:
            soft = nn.functional.mse_loss(head.float(), soft_target)
        return alpha * soft + (1 - alpha) * student_task.loss(head, y)

    return _fit(student_task, prep, student, train, params, loss)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
