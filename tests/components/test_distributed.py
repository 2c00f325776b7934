"""Distributed data-parallel training through torchrun (gloo on CPU): same code, N processes."""

from __future__ import annotations

import json

import pytest
import torch
from mlflow.tracking import MlflowClient

from pillars.components.training.distributed import DistributedTrainingError, launch_local, worker_args
from pillars.components.model.predictor import load_predictor
from pillars.components.data.prepare import PrepareParams, run_prepare
from pillars.components.data.splits import load_metadata, load_split
from pillars.components.training.fit import TrainParams, fit
from pillars.components.training.train import run_training


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    paths = {n: str(d / n) for n in ("train", "val", "test", "meta.json")}
    run_prepare(PrepareParams(task="breast_cancer"), *paths.values())
    return paths


def test_two_process_ddp_equals_one_process_with_the_global_batch(prepared, tmp_path):
    # Without dropout, DDP over 2 shards of batch 32 averages exactly the gradients of one process
    # with batch 64 (each global batch is the same 64 rows), so the weights must agree.
    ddp = TrainParams(epochs=3, batch_size=32, dropout=0.0, nproc=2)
    summary = launch_local(2, worker_args(prepared["train"], prepared["val"], prepared["meta.json"], ddp,
                                          str(tmp_path / "ddp"), str(tmp_path / "ckpt")))
    assert summary["world_size"] == 2 and summary["backend"] == "gloo"
    single = fit(load_split(prepared["train"]), load_split(prepared["val"]), load_metadata(prepared["meta.json"]),
                 TrainParams(epochs=3, batch_size=64, dropout=0.0), progress=False)
    ddp_state = load_predictor(tmp_path / "ddp").model.state_dict()
    for name, value in single.model.state_dict().items():
        torch.testing.assert_close(ddp_state[name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_run_training_with_nproc_2_logs_one_run(prepared, tmp_path, local_store):
    run_id = run_training(prepared["train"], prepared["val"], prepared["meta.json"], TrainParams(epochs=6, nproc=2),
                          str(tmp_path / "model"), "ddp", kfp_run_id="r", tracking_uri=local_store,
                          checkpoint_root=str(tmp_path / "ckpt"))
    run = MlflowClient().get_run(run_id)
    assert run.data.tags["pillars.world_size"] == "2"
    assert [m.step for m in MlflowClient().get_metric_history(run_id, "val_loss")] == list(range(1, 7))
    history = json.loads((tmp_path / "model" / "history.json").read_text())
    assert history[-1]["val_accuracy"] > 0.9


def test_a_failing_worker_fails_the_job_with_its_output(prepared, tmp_path):
    args = worker_args(prepared["train"], prepared["val"], str(tmp_path / "missing.json"), TrainParams(nproc=2),
                       str(tmp_path / "m"), str(tmp_path / "c"))
    with pytest.raises(DistributedTrainingError, match="2 processes failed.*missing.json"):
        launch_local(2, args)
