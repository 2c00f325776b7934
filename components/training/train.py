"""Step 2, training, as a pipeline step: the MLflow run, the warm start, and where the training runs.

The epoch loop itself is :func:`pillars.components.training.fit.fit`. :func:`run_training` wraps it in an
MLflow run (params, per-epoch metrics, learning curve) and a checkpoint folder that a retried step
finds again, so a killed step continues from its last finished epoch instead of starting over; it
trains in this process, as ``nproc`` local DDP processes (:mod:`pillars.components.training.distributed`),
or as a Kubeflow Trainer TrainJob (:mod:`pillars.components.training.trainjob`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow

from pillars.components.training.distributed import launch_local, worker_args
from pillars.components.errors import ConfigError
from pillars.components.evaluation.calibration import calibrate_saved_model
from pillars.components.evaluation.evaluate import learning_curve_figure
from pillars.components.evaluation.importance import store_importance
from pillars.components.training.fit import TrainParams, fingerprint, fit, load_history, write_model
from pillars.components.model.predictor import load_predictor
from pillars.components.data.splits import PreparedMetadata, lineage_tags, load_metadata, load_split, task_of
from pillars.components.task import Signature
from pillars.components.registry.references import check_model_name
from pillars.components.registry.register import champion_version, downloaded_version
from pillars.components.registry.versions import REASON_TAG
from pillars.components.settings import Settings
from pillars.components.registry.tracking import EpochLogger, configure_tracking, ensure_experiment
from pillars.components.training.stream import fit_stream
from pillars.components.training.trainjob import TrainJobSpec, current_namespace, launch_trainjob

logger = logging.getLogger(__name__)

LAUNCHERS = ("local", "trainjob")


@contextlib.contextmanager
def warm_start(model_name: str, metadata: Mapping[str, Any]) -> Iterator[tuple[str | None, Path | None]]:
    """The champion of ``model_name`` as a starting point: ``(version, model folder)`` when it is a model of
    the same task (reference and arguments) with the same signature and classes as the prepared data, else
    ``(None, None)``. The downloaded folder is removed when the block ends."""
    version = champion_version(model_name)
    if version is None:
        yield None, None
        return
    with downloaded_version(model_name, version) as folder:
        champion = load_predictor(folder)
        task = task_of(metadata)
        signature = Signature.from_dict(json.loads(json.dumps(task.signature(metadata["prep"]).to_dict())))
        args = json.loads(json.dumps(task.task_args()))
        same = (champion.config.task == metadata["task"] and champion.config.task_args == args
                and champion.signature == signature
                and champion.prep.get("classes") == metadata["prep"].get("classes"))
        if not same:
            logger.warning("not warm-starting from %s v%s: another task, or its inputs or outputs differ from "
                           "the data", model_name, version)
            yield None, None
        else:
            yield version, folder


def checkpoint_dir_for(root: str | Path, experiment: str, metadata: dict[str, Any], params: TrainParams,
                       warm_from: str = "") -> Path:
    """The checkpoint folder of one training job: the same for every attempt at the same job (same
    model name, task, data, hyperparameters and warm-start version), so a retried step and a rerun
    of a killed ``pillars run`` continue where it stopped. :func:`run_training` removes it once the
    job is done, so the next run with the same parameters trains anew.

    Args:
        warm_from: ``NAME/VERSION`` of the warm start's weights ("": none).

    Raises:
        ConfigError: ``experiment`` (the model name) is not a valid, filesystem-safe model name.
    """
    check_model_name(experiment)
    job = fingerprint(metadata, params, bool(warm_from))
    key = hashlib.sha256(f"{job}/{warm_from}".encode()).hexdigest()[:16]
    root = Path(root).resolve()
    folder = (root / experiment / key).resolve()
    if not folder.is_relative_to(root):
        raise ConfigError(f"model name {experiment!r} leads outside the checkpoint root {root}")
    return folder


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
    reason: str = "",
) -> str:
    """Train inside an MLflow run (resumed on retry) and save the best model to ``model_dir``.

    ``launcher="local"`` trains in this process (or ``nproc`` local DDP processes); ``"trainjob"``
    runs ``nodes x nproc`` processes as a Kubeflow Trainer TrainJob, staging data on the shared
    checkpoint volume (``checkpoint_root`` must be a PVC mount). ``warm_start_from`` names a registered
    model whose champion's weights start the training when its inputs and outputs match. ``reason`` (why
    the run started; the trigger's alert) is the run's ``pillars.reason`` tag and ``reason`` param.

    Returns:
        The MLflow run id, which evaluation and registration continue in.

    Raises:
        ConfigError: a bad model name, launcher or node count.
    """
    check_model_name(experiment)
    if warm_start_from:
        check_model_name(warm_start_from)
    if launcher not in LAUNCHERS:
        raise ConfigError(f"launcher must be 'local' or 'trainjob', got {launcher!r}")
    if launcher == "local" and params.nodes > 1:
        raise ConfigError("nodes > 1 needs launcher=trainjob (a Kubeflow Trainer TrainJob on a cluster)")
    configure_tracking(tracking_uri or None)
    metadata = load_metadata(metadata_path)
    with contextlib.ExitStack() as stack:
        warm_version, warm_dir = (stack.enter_context(warm_start(warm_start_from, metadata)) if warm_start_from
                                  else (None, None))
        return _train_in_run(train_path, val_path, metadata_path, metadata, params, model_dir, experiment,
                             kfp_run_id, checkpoint_root, progress, launcher, gpus_per_node,
                             warm_start_from, warm_version, warm_dir, reason)


def _train_in_run(train_path: str, val_path: str, metadata_path: str, metadata: PreparedMetadata,
                  params: TrainParams, model_dir: str, experiment: str, kfp_run_id: str, checkpoint_root: str,
                  progress: bool | None, launcher: str, gpus_per_node: int, warm_start_from: str,
                  warm_version: str | None, warm_dir: Path | None, reason: str = "") -> str:
    initial_state = load_predictor(warm_dir).model.state_dict() if warm_dir is not None else None
    settings = Settings()
    root = checkpoint_root or str(settings.resolved_checkpoint_root())
    warm_from = f"{warm_start_from}/{warm_version}" if initial_state is not None else ""
    ckpt = checkpoint_dir_for(root, experiment, metadata, params, warm_from)
    ckpt.mkdir(parents=True, exist_ok=True)
    run_file = ckpt / "mlflow_run_id"
    run_id = run_file.read_text().strip() if run_file.is_file() else None
    experiment_id = ensure_experiment(experiment)
    with mlflow.start_run(run_id=run_id, experiment_id=None if run_id else experiment_id,
                          tags={"pillars.task": metadata.task, "pillars.kfp_run_id": kfp_run_id,
                                "pillars.data_hash": metadata.data_hash, **lineage_tags(metadata),
                                **({REASON_TAG: reason} if reason else {})}) as run:
        if run_id is None:
            run_file.write_text(run.info.run_id)
            if warm_version is not None:
                mlflow.set_tag("pillars.warm_started_from", f"{warm_start_from}/{warm_version}")
            mlflow.log_params({"task": metadata.task, "task_args": json.dumps(metadata.task_args or {}),
                               "data_hash": metadata.data_hash, "data_engine": metadata.get("engine", "pandas"),
                               "source": metadata.source, "reason": reason, **dataclasses.asdict(params),
                               **{f"rows_{k}": v for k, v in metadata.split_rows.items()}})

        log_epoch = EpochLogger(run.info.run_id)
        if launcher == "trainjob":
            summary = _train_on_cluster(train_path, val_path, metadata_path, params, model_dir, ckpt,
                                        run.info.run_id, mlflow.get_tracking_uri(), gpus_per_node, settings, warm_dir)
            history = load_history(model_dir)
        elif params.nproc > 1:
            summary = launch_local(params.nproc, worker_args(
                train_path, val_path, metadata_path, params, model_dir, str(ckpt), run.info.run_id,
                mlflow.get_tracking_uri(), str(warm_dir or "")))
            history = load_history(model_dir)
        else:
            if metadata.table:  # Parquet shards (the table data step): streamed, never loaded whole
                result = fit_stream(train_path, val_path, metadata, params, ckpt, log_epoch, progress, initial_state)
            else:
                result = fit(load_split(train_path), load_split(val_path), metadata, params, ckpt, log_epoch,
                             progress, initial_state)
            log_epoch.flush()
            write_model(result, model_dir)
            history = result.history
            summary = {"start_epoch": result.start_epoch, "best_epoch": result.best_epoch, "seconds": result.seconds,
                       "stopped_early": result.stopped_early, "device": result.device, "world_size": 1}
        if summary["start_epoch"] > 1:
            log_epoch.backfill(history)
        calibration = calibrate_saved_model(model_dir, val_path)  # CBPE's temperature, stored in config.json
        store_importance(model_dir, val_path, seed=params.seed)  # what weighted drift weighs, in config.json
        if calibration is not None:
            mlflow.log_metrics({"calibration_temperature": calibration.temperature,
                                "calibration_expected_accuracy": calibration.expected_accuracy})
        trained = metadata.split_rows["train"] * (len(history) - summary["start_epoch"] + 1)
        mlflow.log_metrics({"train_seconds": summary["seconds"],
                            "train_samples_per_second": trained / max(summary["seconds"], 1e-9)})
        mlflow.set_tags({"pillars.device": summary["device"], "pillars.world_size": summary["world_size"],
                         "pillars.resumed_from_epoch": summary["start_epoch"] - 1,
                         "pillars.best_epoch": summary["best_epoch"], "pillars.stopped_early": summary["stopped_early"]})
        if history:
            figure = learning_curve_figure(history)
            mlflow.log_figure(figure, "plots/learning_curve.png")
    shutil.rmtree(ckpt, ignore_errors=True)  # the job is done: the next run with these parameters trains anew
    return run.info.run_id


def _train_on_cluster(train_path: str, val_path: str, metadata_path: str, params: TrainParams, model_dir: str,
                      ckpt: Path, run_id: str, tracking_uri: str, gpus_per_node: int, settings: Settings,
                      warm_dir: Path | None = None) -> dict[str, Any]:
    """Stage inputs on the shared volume, run a TrainJob, copy the model back into ``model_dir``."""
    stage = ckpt / "inputs"
    stage.mkdir(parents=True, exist_ok=True)
    for name, source in (("train", train_path), ("val", val_path), ("metadata.json", metadata_path)):
        if Path(source).is_dir():  # a split of Parquet shards
            shutil.copytree(source, stage / name, dirs_exist_ok=True)
        else:
            shutil.copyfile(source, stage / name)
    if warm_dir is not None:
        shutil.copytree(warm_dir, stage / "init_model", dirs_exist_ok=True)
    shared_model = ckpt / "model"
    args = worker_args(str(stage / "train"), str(stage / "val"), str(stage / "metadata.json"), params,
                       str(shared_model), str(ckpt), run_id, tracking_uri,
                       str(stage / "init_model") if warm_dir is not None else "")
    spec = TrainJobSpec(name=f"pillars-train-{ckpt.name}", namespace=current_namespace(), image=settings.image,
                        worker_args=args, nodes=params.nodes, procs_per_node=params.nproc,
                        gpus_per_node=gpus_per_node, volume_claim=settings.checkpoint_pvc,
                        mount_path=str(ckpt.parents[1]), env={"MLFLOW_TRACKING_URI": tracking_uri})
    summary = launch_trainjob(spec, str(shared_model))
    shutil.copytree(shared_model, model_dir, dirs_exist_ok=True)
    return summary
