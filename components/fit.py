"""The training core: hyperparameters, the model to train, and :func:`fit`, the epoch loop.

Framework-free (no MLflow, no KFP): the train step (:mod:`pillars.components.train`) and every
distributed worker (:mod:`pillars.components.distributed`) call :func:`fit`. It trains with early
stopping on validation loss, mixed precision on GPU, DDP under ``torchrun``, and a checkpoint per
epoch (:mod:`pillars.components.checkpoints`) that a restarted process resumes from.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pillars.components.checkpoints import CheckpointWriter, load_checkpoint
from pillars.components.errors import ConfigError
from pillars.components.models import ModelConfig, PillarsNet, build_model, save_model

logger = logging.getLogger("pillars.fit")

__all__ = ["TrainParams", "TrainResult", "fingerprint", "fit", "init_model", "load_history", "pick_device",
           "save_history", "write_model"]

HISTORY = "history.json"
MIN_DELTA = 1e-4


@dataclasses.dataclass
class TrainParams:
    """Hyperparameters (each is a pipeline parameter)."""

    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    dropout: float = 0.1
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
            "dropout": 0 <= self.dropout < 1,
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

    model: PillarsNet
    history: list[dict[str, float]]
    start_epoch: int
    best_epoch: int
    best_val_loss: float
    stopped_early: bool
    device: str
    seconds: float = 0.0
    """Wall time of the epoch loop (training, validation, checkpoints, callbacks) in this call."""


def pick_device(requested: str = "auto") -> torch.device:
    """``cuda`` when present (or asked for), else ``cpu``."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {requested!r} asked for, but no CUDA device is available")
    return torch.device(requested)


def model_config(metadata: dict[str, Any], params: TrainParams) -> ModelConfig:
    """The architecture the task calls for, sized by the prepared data."""
    return ModelConfig(
        task=metadata["task"], kind=metadata["kind"], architecture=metadata["architecture"],
        input_shape=list(metadata["input_shape"]), feature_names=list(metadata["feature_names"]),
        classes=metadata["classes"], dropout=params.dropout,
    )


def init_model(metadata: dict[str, Any], params: TrainParams) -> PillarsNet:
    """A fresh model with the train-split standardisation (and target scale) from ``metadata``."""
    torch.manual_seed(params.seed)
    model = build_model(model_config(metadata, params))
    norm = metadata["normalization"]
    model.standardize.fit(np.asarray(norm["mean"]), np.asarray(norm["std"]))
    if metadata.get("target"):
        model.target_mean.fill_(metadata["target"]["mean"])
        model.target_std.fill_(metadata["target"]["std"])
    return model


def fingerprint(metadata: dict[str, Any], params: TrainParams, warm: bool = False) -> str:
    """Identity of a training job: a checkpoint is resumed only by the same data and hyperparameters."""
    blob = json.dumps({"data": metadata["data_hash"], "task": metadata["task"], "warm": warm,
                       "params": dataclasses.asdict(params)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def fit(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    metadata: dict[str, Any],
    params: TrainParams,
    checkpoint_dir: str | Path | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool | None = None,
    initial_state: dict[str, torch.Tensor] | None = None,
) -> TrainResult:
    """Train with early stopping on validation loss, checkpointing every epoch.

    Args:
        train: ``(x, y)`` of the train split, raw features.
        val: ``(x, y)`` of the validation split.
        metadata: what :func:`pillars.components.prepare_data.prepare` wrote (task, kind, shapes, normalisation).
        params: hyperparameters.
        checkpoint_dir: where a checkpoint is written after each epoch and read at start
            (:mod:`pillars.components.checkpoints`); one with the same :func:`fingerprint` is resumed
            from its next epoch.
        on_epoch: called with ``(epoch, metrics)`` after each epoch (epochs count from 1).
        progress: show a progress bar; default: when stderr is a terminal.
        initial_state: weights to start from (warm start from the champion), standardisation included.

    Returns:
        The best model (lowest validation loss) and the run's history.
    """
    rank, world = _rank_and_world()
    device = pick_device(params.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    model = init_model(metadata, params)
    if initial_state is not None:
        model.load_state_dict(initial_state)
    model = model.to(device)
    # Under torchrun, DDP averages gradients across processes; each process trains on its shard.
    step_model: nn.Module = model
    if world > 1:
        step_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.index is not None else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay)
    classification = metadata["kind"] == "classification"
    loss_fn: nn.Module = nn.CrossEntropyLoss() if classification else nn.MSELoss()
    amp_dtype = _amp_dtype(device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()

    x_train, y_train = _tensors(train, classification, device)
    x_val, y_val = _tensors(val, classification, device)
    if not classification:
        y_train, y_val = model.encode_target(y_train), model.encode_target(y_val)

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
        order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(params.seed + epoch))
        order = order[rank::world]  # the same permutation on every process, a disjoint shard each
        total = torch.zeros((), device=device)
        for start in range(0, len(order), params.batch_size):
            idx = order[start:start + params.batch_size].to(device)
            with autocast:
                head = step_model(x_train[idx])
                loss = loss_fn(head if classification else head.squeeze(-1), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            if scaler.is_enabled():
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            total.add_(loss.detach(), alpha=len(idx))
        if world > 1:
            torch.distributed.all_reduce(total)
        metrics = {"train_loss": float(total) / len(x_train), **_validate(model, x_val, y_val, loss_fn,
                                                                          classification, amp_dtype)}
        state["history"].append({"epoch": epoch, **metrics})
        state["epoch"] = epoch
        if metrics["val_loss"] < state["best_val_loss"] - MIN_DELTA:
            state.update(best_val_loss=metrics["val_loss"], best_epoch=epoch, bad_epochs=0,
                         best_model={k: v.detach().clone() for k, v in model.state_dict().items()})
        else:
            state["bad_epochs"] += 1
        done = state["bad_epochs"] >= params.patience
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
                       state["best_val_loss"], done and state["epoch"] < params.epochs, str(device), seconds)


def _rank_and_world() -> tuple[int, int]:
    """This process's rank and the world size under ``torch.distributed`` (``(0, 1)`` when not distributed)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _tensors(split: tuple[np.ndarray, np.ndarray], classification: bool, device: torch.device
             ) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = split
    return (torch.as_tensor(x, dtype=torch.float32, device=device),
            torch.as_tensor(y, dtype=torch.long if classification else torch.float32, device=device))


def _amp_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed precision on GPU: bf16 where supported, else fp16 (with a gradient scaler)."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@torch.no_grad()
def _validate(model: PillarsNet, x: torch.Tensor, y: torch.Tensor, loss_fn: nn.Module, classification: bool,
              amp_dtype: torch.dtype | None) -> dict[str, float]:
    model.eval()
    with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        head = model(x).float()
    if classification:
        return {"val_loss": float(loss_fn(head, y)), "val_accuracy": float((head.argmax(1) == y).float().mean())}
    head = head.squeeze(-1)
    rmse = torch.sqrt(torch.mean((model.decode(head) - model.decode(y)) ** 2))
    return {"val_loss": float(loss_fn(head, y)), "val_rmse": float(rmse)}


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
    """Save the trained model and its history into ``output_dir``."""
    save_model(result.model, output_dir)
    save_history(output_dir, result.history)
    return Path(output_dir)
