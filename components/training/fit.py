"""The training core: hyperparameters, the task's model, and :func:`fit`, the epoch loop.

Framework-free (no MLflow, no KFP): the train step (:mod:`pillars.components.training.train`) and every
distributed worker (:mod:`pillars.components.training.distributed`) call :func:`fit`. It trains any task of the
task API (:mod:`pillars.components.task`): ``task.build_model(prep)``, each split encoded once with
``task.encode``, batches of every encoded tensor and the targets, ``task.loss``; with early stopping on
validation loss, mixed precision on GPU, DDP under ``torchrun``, and a checkpoint per epoch
(:mod:`pillars.components.training.checkpoints`) that a restarted process resumes from.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pillars.components.training.checkpoints import CheckpointWriter, load_checkpoint
from pillars.components.devices import pick_device
from pillars.components.errors import ConfigError
from pillars.components.model.predictor import save_model
from pillars.components.data.splits import inputs_of, task_of
from pillars.components.task import Examples, Preprocessing, Task

logger = logging.getLogger(__name__)

__all__ = ["EpochBatches", "TrainParams", "TrainResult", "Validation", "fingerprint", "fit", "init_model",
           "load_history", "placement", "save_history", "train_epochs", "write_model"]

EVAL_BATCH = 1024
"""Rows per forward pass when scoring the validation split."""

HISTORY = "history.json"
MIN_DELTA = 1e-4


@dataclasses.dataclass
class TrainParams:
    """Hyperparameters (each is a pipeline parameter)."""

    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    dropout: float = -1.0
    """Probability of every ``nn.Dropout`` in the task's model; -1 keeps the model's own."""
    seed: int = 0
    patience: int = 5
    device: str = "auto"
    nproc: int = 1
    """Data-parallel processes per node (DDP through torchrun: gloo on CPU, NCCL on GPU); batch_size is per process."""
    nodes: int = 1
    """Nodes of a Kubeflow Trainer TrainJob (``launcher="trainjob"``); locally always 1."""

    def __post_init__(self) -> None:
        checks = {
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "learning_rate": self.learning_rate > 0,
            "weight_decay": self.weight_decay >= 0,
            "dropout": self.dropout == -1 or 0 <= self.dropout < 1,
            "patience": self.patience >= 1,
            "nproc": 1 <= self.nproc <= 64,
            "nodes": 1 <= self.nodes <= 512,
            "device": self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(", ".join(f"invalid {name}={getattr(self, name)!r}" for name in bad))


@dataclasses.dataclass
class TrainResult:
    """What :func:`fit` did: the best model, where it started (after a resume) and its curve."""

    model: nn.Module
    history: list[dict[str, float]]
    start_epoch: int
    best_epoch: int
    best_val_loss: float
    stopped_early: bool
    device: str
    seconds: float = 0.0
    """Wall time of the epoch loop (training, validation, checkpoints, callbacks) in this call."""
    task: Task | None = None
    reference: str = ""
    prep: Preprocessing = dataclasses.field(default_factory=dict)


def init_model(task: Task, prep: Preprocessing, params: TrainParams) -> nn.Module:
    """A fresh model of the task (seeded), with every dropout at ``params.dropout`` unless that is -1."""
    torch.manual_seed(params.seed)
    model = task.build_model(prep)
    if params.dropout != -1:
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = params.dropout
    return model


def fingerprint(metadata: dict[str, Any], params: TrainParams, warm: bool = False) -> str:
    """Identity of a training job: a checkpoint is resumed only by the same task, data and hyperparameters."""
    blob = json.dumps({"data": metadata["data_hash"], "task": metadata["task"],
                       "task_args": metadata.get("task_args") or {}, "warm": warm,
                       "params": dataclasses.asdict(params)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


EpochBatches = Callable[[int], Iterable[tuple[dict[str, torch.Tensor], torch.Tensor]]]
"""One epoch's training batches, given the epoch (from 1): the model's keyword tensors and the targets, on the
device; this process's share of them under DDP."""

Validation = Callable[[nn.Module, "torch.dtype | None"], dict[str, float]]
"""``val_loss`` and ``val_<metric>`` of the model over the whole validation split, given the autocast dtype."""


def fit(
    train: Examples,
    val: Examples,
    metadata: dict[str, Any],
    params: TrainParams,
    checkpoint_dir: str | Path | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool | None = None,
    initial_state: dict[str, torch.Tensor] | None = None,
) -> TrainResult:
    """Train with early stopping on validation loss, checkpointing every epoch.

    Args:
        train: the train split's named arrays (the task's inputs and targets).
        val: the validation split's.
        metadata: what :func:`pillars.components.data.prepare.prepare` wrote (task reference and arguments,
            preprocessing, data hash).
        params: hyperparameters.
        checkpoint_dir: where a checkpoint is written after each epoch and read at start
            (:mod:`pillars.components.training.checkpoints`); one with the same :func:`fingerprint` is resumed
            from its next epoch.
        on_epoch: called with ``(epoch, metrics)`` after each epoch (epochs count from 1).
        progress: show a progress bar; default: when stderr is a terminal.
        initial_state: weights to start from (warm start from the champion of the same task and signature).

    Returns:
        The best model (lowest validation loss) and the run's history.
    """
    rank, world, device = placement(params)
    task = task_of(metadata)
    prep = metadata["prep"]
    x_train, y_train = _encoded(task, prep, train, device, "train")
    x_val, y_val = _encoded(task, prep, val, device, "val")

    def batches(epoch: int) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        order = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(params.seed + epoch))
        # The same permutation on every process, a disjoint shard each; on the device once per epoch, so
        # no step waits on a copy from pageable host memory.
        order = order[rank::world].to(device)
        for start in range(0, len(order), params.batch_size):
            idx = order[start:start + params.batch_size]
            yield {k: v[idx] for k, v in x_train.items()}, y_train[idx]

    return train_epochs(task, metadata, params, (rank, world, device), batches,
                        lambda model, amp_dtype: _validate(task, model, x_val, y_val, amp_dtype),
                        checkpoint_dir, on_epoch, progress, initial_state)


def placement(params: TrainParams) -> tuple[int, int, torch.device]:
    """This process's rank, the world size and the device it trains on (its own GPU under DDP)."""
    rank, world = _rank_and_world()
    device = pick_device(params.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return rank, world, device


def train_epochs(task: Task, metadata: dict[str, Any], params: TrainParams, where: tuple[int, int, torch.device],
                 batches: EpochBatches, validate: Validation, checkpoint_dir: str | Path | None = None,
                 on_epoch: Callable[[int, dict[str, float]], None] | None = None, progress: bool | None = None,
                 initial_state: dict[str, torch.Tensor] | None = None) -> TrainResult:
    """The epoch loop of :func:`fit` and of :func:`pillars.components.training.stream.fit_stream`: the task's
    model (DDP under ``torchrun``), AdamW, mixed precision on GPU, early stopping on validation loss, and a
    checkpoint per epoch resumed by a restarted process. ``where`` is :func:`placement`'s answer; ``batches``
    and ``validate`` are where the two differ (arrays in memory, or Parquet shards)."""
    rank, world, device = where
    prep = metadata["prep"]
    model = init_model(task, prep, params)
    if initial_state is not None:
        model.load_state_dict(initial_state)
    model = model.to(device)
    # Under torchrun, DDP averages gradients across processes; each process trains on its share.
    step_model: nn.Module = model
    if world > 1:
        step_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.index is not None else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay)
    amp_dtype = _amp_dtype(device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    state = {"epoch": 0, "best_val_loss": float("inf"), "best_epoch": 0, "bad_epochs": 0,
             "history": [], "best_model": None}
    key = fingerprint(metadata, params, warm=initial_state is not None)
    saved = load_checkpoint(checkpoint_dir, key, device) if checkpoint_dir else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scaler.load_state_dict(saved["scaler"])
        state = {k: saved[k] for k in state}
        logger.info("resuming from checkpoint in %s after epoch %d", checkpoint_dir, state["epoch"])
    start_epoch = state["epoch"] + 1
    done = state["bad_epochs"] >= params.patience
    writer = CheckpointWriter(checkpoint_dir) if checkpoint_dir and rank == 0 else None

    epochs = range(start_epoch, params.epochs + 1)
    bar = _progress(epochs, progress if rank == 0 else False)
    started = time.perf_counter()
    for epoch in bar:
        if done:
            break
        torch.manual_seed(params.seed + epoch)
        model.train()
        train_loss = _train_epoch(task, step_model, optimizer, scaler, amp_dtype, batches(epoch), device, world)
        metrics = {"train_loss": train_loss, **validate(model, amp_dtype)}
        done = _record(state, epoch, metrics, model, params.patience)
        if writer is not None:
            writer.save({"fingerprint": key, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scaler": scaler.state_dict(), **state})
        if on_epoch is not None and rank == 0:
            on_epoch(epoch, metrics)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{metrics['train_loss']:.4f}", val_loss=f"{metrics['val_loss']:.4f}")

    if writer is not None:
        writer.wait()
    if state["best_model"] is not None:
        model.load_state_dict(state["best_model"])
    seconds = time.perf_counter() - started
    return TrainResult(model.cpu().eval(), state["history"], start_epoch, state["best_epoch"],
                       state["best_val_loss"], done and state["epoch"] < params.epochs, str(device), seconds,
                       task, metadata["task"], prep)


def _train_epoch(task: Task, step_model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                 amp_dtype: torch.dtype | None, batches: Iterable[tuple[dict[str, torch.Tensor], torch.Tensor]],
                 device: torch.device, world: int) -> float:
    """One pass over this process's batches; the mean train loss over every process's rows."""
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    total = torch.zeros((), device=device)
    seen = torch.zeros((), dtype=torch.long, device=device)
    for inputs, targets in batches:
        with autocast:
            head = step_model(**inputs)
            loss = task.loss(head, targets)
        optimizer.zero_grad(set_to_none=True)
        if scaler.is_enabled():
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        total.add_(loss.detach(), alpha=len(targets))
        seen.add_(len(targets))
    if world > 1:
        torch.distributed.all_reduce(total)
        torch.distributed.all_reduce(seen)
    return float(total) / max(int(seen), 1)


def _record(state: dict[str, Any], epoch: int, metrics: dict[str, float], model: nn.Module, patience: int) -> bool:
    """An epoch's metrics into the run's state (the best weights kept when the validation loss improved);
    whether early stopping ends the run."""
    state["history"].append({"epoch": epoch, **metrics})
    state["epoch"] = epoch
    if metrics["val_loss"] < state["best_val_loss"] - MIN_DELTA:
        state.update(best_val_loss=metrics["val_loss"], best_epoch=epoch, bad_epochs=0,
                     best_model={k: v.detach().clone() for k, v in model.state_dict().items()})
    else:
        state["bad_epochs"] += 1
    return state["bad_epochs"] >= patience


def _rank_and_world() -> tuple[int, int]:
    """This process's rank and the world size under ``torch.distributed`` (``(0, 1)`` when not distributed)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _encoded(task: Task, prep: Preprocessing, split: Examples, device: torch.device, name: str
             ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """A split encoded once: the model's keyword tensors and the targets, on ``device``.

    Raises:
        ConfigError: an encoded tensor or the targets do not have one row per example.
    """
    encoded = task.encode(inputs_of(task, prep, split), prep)
    targets = task.targets(split, prep)
    rows = {k: len(v) for k, v in encoded.items()} | {"targets": len(targets)}
    if len(set(rows.values())) > 1:
        raise ConfigError(f"the {name} split encodes to tensors of different lengths {rows}: task.encode and "
                          "task.targets must give one row per example")
    return {k: v.to(device) for k, v in encoded.items()}, targets.to(device)


def _amp_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed precision on GPU: bf16 where supported, else fp16 (with a gradient scaler)."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@torch.no_grad()
def _validate(task: Task, model: nn.Module, x: dict[str, torch.Tensor], y: torch.Tensor,
              amp_dtype: torch.dtype | None) -> dict[str, float]:
    """``val_loss`` and the task's ``batch_metrics`` (as ``val_<name>``) over the whole validation split."""
    model.eval()
    device = y.device
    heads = []
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        for start in range(0, len(y), EVAL_BATCH):
            heads.append(model(**{k: v[start:start + EVAL_BATCH] for k, v in x.items()}).float())
    head = torch.cat(heads)
    metrics = {"val_loss": float(task.loss(head, y))}
    metrics.update({f"val_{k}": float(v) for k, v in task.batch_metrics(head, y).items()})
    return metrics


def _progress(epochs: range, progress: bool | None) -> Any:
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return epochs
    from tqdm import tqdm

    return tqdm(epochs, desc="train", unit="epoch", initial=epochs.start - 1, total=epochs.stop - 1)


def save_history(directory: str | Path, history: list[dict[str, float]]) -> None:
    """The per-epoch curve as ``history.json`` beside the saved model."""
    Path(directory, HISTORY).write_text(json.dumps(history))


def load_history(directory: str | Path) -> list[dict[str, float]]:
    """The curve written by :func:`save_history` (empty when absent)."""
    path = Path(directory, HISTORY)
    return json.loads(path.read_text()) if path.is_file() else []


def write_model(result: TrainResult, output_dir: str | Path) -> Path:
    """Save the trained model (the task API's saved-model format) and its history into ``output_dir``."""
    if result.task is None:
        raise ConfigError("a training result without its task cannot be saved")
    save_model(result.task, result.reference, result.prep, result.model, output_dir)
    save_history(output_dir, result.history)
    return Path(output_dir)
