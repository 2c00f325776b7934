"""Distributed data-parallel training: the ``torchrun`` worker, and launching it on this machine.

The same worker runs everywhere: ``pillars run training --param nproc=2`` starts it as two local
processes (gloo on CPU), and on a cluster the Kubeflow Trainer launcher (``pillars.components.training.trainjob``)
starts it as a ``TrainJob`` of N nodes x M GPUs (NCCL). Rank 0 writes checkpoints, logs epochs to
MLflow and saves the model; every rank computes the same validation, so early stopping agrees.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import mlflow
import torch

from pillars.components.errors import PillarsError
from pillars.components.devices import pick_device
from pillars.components.training.fit import TrainParams, fit, write_model
from pillars.components.model.predictor import load_predictor
from pillars.components.data.splits import load_metadata, load_split
from pillars.components.training.stream import fit_stream
from pillars.components.registry.tracking import EpochLogger

RESULT_FILE = "train_result.json"
ERROR_MARK = "pillars-worker-error:"


class DistributedTrainingError(PillarsError, RuntimeError):
    """The distributed job failed; the message carries the end of its output."""


def worker_args(train: str, val: str, metadata: str, params: TrainParams, model_dir: str, checkpoint_dir: str,
                mlflow_run_id: str = "", tracking_uri: str = "", init_model: str = "") -> list[str]:
    """Arguments of :func:`worker_main` for one job (``init_model``: a model folder to warm-start from)."""
    return ["--train", train, "--val", val, "--metadata", metadata,
            "--params", json.dumps(dataclasses.asdict(params)), "--model-dir", model_dir,
            "--checkpoint-dir", checkpoint_dir, "--mlflow-run-id", mlflow_run_id, "--tracking-uri", tracking_uri,
            "--init-model", init_model]


def torchrun_command(nproc: int, nnodes: int = 1, standalone: bool = True) -> list[str]:
    """``torchrun`` (as ``python -m torch.distributed.run``) starting this module's worker."""
    rendezvous = ["--standalone"] if standalone else []
    return [sys.executable, "-m", "torch.distributed.run", *rendezvous, f"--nnodes={nnodes}",
            f"--nproc-per-node={nproc}", "-m", "pillars.components.training.distributed"]


def launch_local(nproc: int, args: list[str], timeout: float | None = None) -> dict[str, Any]:
    """Run the worker as ``nproc`` local processes and return rank 0's result summary.

    Raises:
        DistributedTrainingError: a process failed (with the end of the job's output).
    """
    model_dir = Path(args[args.index("--model-dir") + 1])
    proc = subprocess.run([*torchrun_command(nproc), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    if proc.returncode != 0:
        output = proc.stderr + proc.stdout
        causes = [line.split(ERROR_MARK, 1)[1].strip() for line in output.splitlines() if ERROR_MARK in line]
        cause = causes[0] if causes else output[-2000:]
        raise DistributedTrainingError(f"distributed training with {nproc} processes failed "
                                       f"(exit {proc.returncode}): {cause}")
    return json.loads((model_dir / RESULT_FILE).read_text())


def worker_main(argv: list[str] | None = None) -> int:
    """Entry point of each torchrun process: join the group, train its shard, rank 0 saves."""
    parser = argparse.ArgumentParser(prog="python -m pillars.components.training.distributed")
    for name in ("train", "val", "metadata", "params", "model-dir", "checkpoint-dir"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--mlflow-run-id", default="")
    parser.add_argument("--tracking-uri", default="")
    parser.add_argument("--init-model", default="")
    args = parser.parse_args(argv)

    params = TrainParams(**json.loads(args.params))
    # The backend follows the device the run asked for, not what the machine has: device=cpu on a GPU
    # machine trains on CPU tensors, which NCCL cannot reduce.
    on_cuda = pick_device(params.device).type == "cuda"
    if on_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    backend = "nccl" if on_cuda else "gloo"
    torch.distributed.init_process_group(backend)
    try:
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        logger = None
        if rank == 0 and args.mlflow_run_id:
            mlflow.set_tracking_uri(args.tracking_uri or None)
            logger = EpochLogger(args.mlflow_run_id)
        initial_state = None
        if args.init_model:
            initial_state = load_predictor(args.init_model).model.state_dict()
        metadata = load_metadata(args.metadata)
        if metadata.get("table"):  # Parquet shards: each rank streams its own
            result = fit_stream(args.train, args.val, metadata, params, args.checkpoint_dir, logger, progress=False,
                                initial_state=initial_state)
        else:
            result = fit(load_split(args.train), load_split(args.val), metadata, params,
                         args.checkpoint_dir, logger, progress=False, initial_state=initial_state)
        if logger is not None:
            logger.flush()
        if rank == 0:
            write_model(result, args.model_dir)
            summary = {"start_epoch": result.start_epoch, "best_epoch": result.best_epoch,
                       "best_val_loss": result.best_val_loss, "stopped_early": result.stopped_early,
                       "device": result.device, "seconds": result.seconds, "world_size": world,
                       "backend": backend}
            Path(args.model_dir, RESULT_FILE).write_text(json.dumps(summary))
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()
    return 0


def _main() -> int:
    try:
        return worker_main()
    except Exception as e:
        # One line the launcher finds in torchrun's output; the traceback follows for the logs.
        print(f"{ERROR_MARK} {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        raise


if __name__ == "__main__":
    sys.exit(_main())
