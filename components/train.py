"""Step 2, training: a PyTorch loop with early stopping, per-epoch checkpoints and resume.

:func:`fit` is the framework-free core (no MLflow, no KFP). :func:`run_training` adds the
MLflow run (params, per-epoch metrics, learning curve) and the checkpoint folder that a retried
step finds again, so a killed step continues from its last finished epoch instead of starting over.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pillars.components.errors import ConfigError
from pillars.components.models import ModelConfig, PillarsNet, build_model, save_model

logger = logging.getLogger("pillars.train")

CHECKPOINT = "last.pt"
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
        checkpoint_dir: where ``last.pt`` is written after each epoch and read at start; a checkpoint
            with the same :func:`fingerprint` is resumed from its next epoch.
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
    path = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir else None
    if path is not None and path.is_file():
        saved = torch.load(path, map_location=device, weights_only=True)
        if saved.get("fingerprint") == key:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            scaler.load_state_dict(saved["scaler"])
            state = {k: saved[k] for k in state}
            logger.info("resuming from checkpoint %s after epoch %d", path, state["epoch"])
        else:
            logger.warning("ignoring checkpoint %s: it belongs to other data or hyperparameters", path)
    start_epoch = state["epoch"] + 1
    done = state["bad_epochs"] >= params.patience
    writer = CheckpointWriter(path) if path is not None and rank == 0 else None

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


def _snapshot(value: Any) -> Any:
    """A copy of nested dicts/lists of tensors that later training steps cannot change."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _snapshot(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_snapshot(v) for v in value)
    return value


class CheckpointWriter:
    """Writes checkpoints on a background thread so training goes on while the file is written.

    The state is snapshotted synchronously (so it is exactly that epoch's), the write is atomic
    (a kill mid-write leaves the previous checkpoint intact), and at most one write is pending:
    the next epoch's checkpoint first waits for the previous one.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pending: threading.Thread | None = None
        self._error: BaseException | None = None

    def save(self, state: dict[str, Any]) -> None:
        snapshot = _snapshot(state)
        self.wait()
        self._pending = threading.Thread(target=self._write, args=(snapshot,), daemon=True)
        self._pending.start()

    def _write(self, snapshot: dict[str, Any]) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            torch.save(snapshot, tmp)
            os.replace(tmp, self.path)
        except BaseException as e:  # re-raised on the training thread by wait()
            self._error = e

    def wait(self) -> None:
        """Block until the pending write is on disk; raise its error, if any."""
        if self._pending is not None:
            self._pending.join()
            self._pending = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


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



def warm_start_state(model_name: str, metadata: dict[str, Any]) -> tuple[str | None, Path | None]:
    """The champion of ``model_name`` as a starting point: ``(version, model folder)`` when its inputs,
    outputs and architecture match the prepared data, else ``(None, None)``."""
    from pillars.components.models import Predictor
    from pillars.components.register import champion_version, download_version

    version = champion_version(model_name)
    if version is None:
        return None, None
    folder = download_version(model_name, version)
    config = Predictor.load(folder).config
    same = (config.feature_names == metadata["feature_names"] and config.classes == metadata["classes"]
            and config.architecture == metadata["architecture"] and config.input_shape == metadata["input_shape"])
    if not same:
        logger.warning("not warm-starting from %s v%s: its inputs or outputs differ from the data", model_name, version)
        return None, None
    return version, folder


class EpochLogger:
    """Logs per-epoch metrics to MLflow in batches: at most one request every ``interval`` seconds, so
    short epochs do not pay a round trip each, while a long run still shows its curve as it goes."""

    def __init__(self, run_id: str, interval: float = 2.0) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient()
        self.run_id = run_id
        self.interval = interval
        self.pending: list[Any] = []
        self.last = time.monotonic()

    def __call__(self, epoch: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now_ms = int(time.time() * 1000)
        self.pending += [Metric(k, float(v), now_ms, epoch) for k, v in metrics.items()]
        if time.monotonic() - self.last >= self.interval:
            self.flush()

    def flush(self) -> None:
        """Send what is buffered."""
        if self.pending:
            self.client.log_batch(self.run_id, metrics=self.pending)
            self.pending = []
        self.last = time.monotonic()

    def backfill(self, history: list[dict[str, float]]) -> None:
        """After a resume, log the checkpointed epochs a killed attempt had not sent yet."""
        logged = {m.step for m in self.client.get_metric_history(self.run_id, "val_loss")}
        for entry in history:
            if entry["epoch"] not in logged:
                self(int(entry["epoch"]), {k: v for k, v in entry.items() if k != "epoch"})
        self.flush()


def checkpoint_dir_for(root: str | Path, experiment: str, kfp_run_id: str, metadata: dict[str, Any],
                       params: TrainParams, warm: bool = False) -> Path:
    """The checkpoint folder of one training job: stable across retries of the same pipeline run."""
    key = hashlib.sha256(f"{kfp_run_id}/{fingerprint(metadata, params, warm)}".encode()).hexdigest()[:16]
    return Path(root) / experiment / key


def run_training(
    train_path: str,
    val_path: str,
    metadata_path: str,
    params: TrainParams,
    model_dir: str,
    experiment: str,
    kfp_run_id: str = "",
    tracking_uri: str = "",
    checkpoint_root: str = "",
    progress: bool | None = None,
    launcher: str = "local",
    gpus_per_node: int = 0,
    warm_start_from: str = "",
) -> str:
    """Train inside an MLflow run (resumed on retry) and save the best model to ``model_dir``.

    ``launcher="local"`` trains in this process (or ``nproc`` local DDP processes); ``"trainjob"``
    runs ``nodes x nproc`` processes as a Kubeflow Trainer TrainJob, staging data on the shared
    checkpoint volume (``checkpoint_root`` must be a PVC mount). ``warm_start_from`` names a registered
    model whose champion's weights start the training when its inputs and outputs match.

    Returns:
        The MLflow run id, which evaluation and registration continue in.
    """
    import mlflow

    from pillars.components.evaluate import learning_curve_figure
    from pillars.components.prepare_data import load_metadata, load_split
    from pillars.components.settings import Settings
    from pillars.components.tracking import configure_tracking, ensure_experiment

    configure_tracking(tracking_uri or None)
    metadata = load_metadata(metadata_path)
    warm_version, warm_dir = warm_start_state(warm_start_from, metadata) if warm_start_from else (None, None)
    initial_state = None
    if warm_dir is not None:
        from pillars.components.models import load_model

        initial_state = load_model(warm_dir).state_dict()
    root = checkpoint_root or str(Settings().resolved_checkpoint_root())
    ckpt = checkpoint_dir_for(root, experiment, kfp_run_id, metadata, params, warm=initial_state is not None)
    ckpt.mkdir(parents=True, exist_ok=True)
    run_file = ckpt / "mlflow_run_id"
    run_id = run_file.read_text().strip() if run_file.is_file() else None
    experiment_id = ensure_experiment(experiment)
    with mlflow.start_run(run_id=run_id, experiment_id=None if run_id else experiment_id,
                          tags={"pillars.task": metadata["task"], "pillars.kfp_run_id": kfp_run_id,
                                "pillars.data_hash": metadata["data_hash"]}) as run:
        if run_id is None:
            run_file.write_text(run.info.run_id)
            if warm_version is not None:
                mlflow.set_tag("pillars.warm_started_from", f"{warm_start_from}/{warm_version}")
            mlflow.log_params({"task": metadata["task"], "data_hash": metadata["data_hash"],
                               "source": metadata["source"], **dataclasses.asdict(params),
                               **{f"rows_{k}": v for k, v in metadata["split_rows"].items()}})

        log_epoch = EpochLogger(run.info.run_id)
        if launcher == "trainjob":
            summary = _train_on_cluster(train_path, val_path, metadata_path, params, model_dir, ckpt,
                                        run.info.run_id, mlflow.get_tracking_uri(), gpus_per_node, warm_dir)
            history = load_history(model_dir)
        elif launcher != "local":
            raise ConfigError(f"launcher must be 'local' or 'trainjob', got {launcher!r}")
        elif params.nodes > 1:
            raise ConfigError("nodes > 1 needs launcher=trainjob (a Kubeflow Trainer TrainJob on a cluster)")
        elif params.nproc > 1:
            from pillars.components.distributed import launch_local, worker_args

            summary = launch_local(params.nproc, worker_args(
                train_path, val_path, metadata_path, params, model_dir, str(ckpt), run.info.run_id,
                mlflow.get_tracking_uri(), str(warm_dir or "")))
            history = load_history(model_dir)
        else:
            result = fit(load_split(train_path), load_split(val_path), metadata, params, ckpt, log_epoch, progress,
                         initial_state)
            log_epoch.flush()
            write_model(result, model_dir)
            history = result.history
            summary = {"start_epoch": result.start_epoch, "best_epoch": result.best_epoch, "seconds": result.seconds,
                       "stopped_early": result.stopped_early, "device": result.device, "world_size": 1}
        if summary["start_epoch"] > 1:
            log_epoch.backfill(history)
        trained = len(load_split(train_path)[1]) * (len(history) - summary["start_epoch"] + 1)
        mlflow.log_metrics({"train_seconds": summary["seconds"],
                            "train_samples_per_second": trained / max(summary["seconds"], 1e-9)})
        mlflow.set_tags({"pillars.device": summary["device"], "pillars.world_size": summary["world_size"],
                         "pillars.resumed_from_epoch": summary["start_epoch"] - 1,
                         "pillars.best_epoch": summary["best_epoch"], "pillars.stopped_early": summary["stopped_early"]})
        if history:
            figure = learning_curve_figure(history)
            mlflow.log_figure(figure, "plots/learning_curve.png")
        return run.info.run_id


def _train_on_cluster(train_path: str, val_path: str, metadata_path: str, params: TrainParams, model_dir: str,
                      ckpt: Path, run_id: str, tracking_uri: str, gpus_per_node: int,
                      warm_dir: Path | None = None) -> dict[str, Any]:
    """Stage inputs on the shared volume, run a TrainJob, copy the model back into ``model_dir``."""
    import shutil

    from pillars.components.distributed import worker_args
    from pillars.components.settings import Settings
    from pillars.components.trainjob import TrainJobSpec, current_namespace, launch_trainjob

    stage = ckpt / "inputs"
    stage.mkdir(parents=True, exist_ok=True)
    for name, source in (("train", train_path), ("val", val_path), ("metadata.json", metadata_path)):
        shutil.copyfile(source, stage / name)
    if warm_dir is not None:
        shutil.copytree(warm_dir, stage / "init_model", dirs_exist_ok=True)
    shared_model = ckpt / "model"
    args = worker_args(str(stage / "train"), str(stage / "val"), str(stage / "metadata.json"), params,
                       str(shared_model), str(ckpt), run_id, tracking_uri,
                       str(stage / "init_model") if warm_dir is not None else "")
    spec = TrainJobSpec(name=f"pillars-train-{ckpt.name}", namespace=current_namespace(), image=Settings().image,
                        worker_args=args, nodes=params.nodes, procs_per_node=params.nproc,
                        gpus_per_node=gpus_per_node, volume_claim=os.environ.get("PILLARS_CHECKPOINT_PVC", ""),
                        mount_path=str(ckpt.parents[1]), env={"MLFLOW_TRACKING_URI": tracking_uri})
    summary = launch_trainjob(spec, str(shared_model))
    shutil.copytree(shared_model, model_dir, dirs_exist_ok=True)
    return summary
