"""The Kubeflow Trainer launcher: the TrainJob it builds validates against the CRD, and its wait logic
reads real-shaped TrainJob status objects."""

from __future__ import annotations

import pytest

from pillars.components.training.distributed import worker_args
from pillars.components.training.fit import TrainParams
from pillars.components.training.trainjob import TrainJobError, TrainJobSpec, build_trainjob, job_state, wait_for
from tests.conftest import validate

def _spec(**overrides) -> TrainJobSpec:
    args = worker_args("/checkpoints/j/train", "/checkpoints/j/val", "/checkpoints/j/meta.json",
                       TrainParams(nproc=4), "/checkpoints/j/model", "/checkpoints/j")
    base = dict(name="digits-train-abc", namespace="ml", image="ghcr.io/pillars-mlops/pillars:0.1.0-cuda",
                worker_args=args, nodes=2, procs_per_node=4, gpus_per_node=4, volume_claim="train-ckpt")
    return TrainJobSpec(**{**base, **overrides})


def test_gpu_trainjob_validates_and_asks_for_nodes_times_gpus(crd_schemas):
    job = build_trainjob(_spec())
    validate(job, crd_schemas)
    trainer = job["spec"]["trainer"]
    assert job["spec"]["runtimeRef"]["name"] == "torch-distributed"
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 4)
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "4"
    assert trainer["command"] == ["torchrun", "-m", "pillars.components.training.distributed"]
    patch = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    pod = patch["template"]["spec"]["template"]["spec"]
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "train-ckpt"
    assert pod["containers"][0]["volumeMounts"][0]["mountPath"] == "/checkpoints"


def test_cpu_trainjob_without_shared_volume_validates(crd_schemas):
    job = build_trainjob(_spec(gpus_per_node=0, volume_claim="", procs_per_node=2))
    validate(job, crd_schemas)
    assert "nvidia.com/gpu" not in job["spec"]["trainer"]["resourcesPerNode"]["limits"]
    assert "runtimePatches" not in job["spec"]


def test_impossible_shapes_are_rejected():
    with pytest.raises(ValueError, match="need as many GPUs"):
        _spec(gpus_per_node=2, procs_per_node=4)
    with pytest.raises(ValueError, match="nodes >= 1"):
        _spec(nodes=0)


def _job(*conditions) -> dict:
    return {"metadata": {"name": "digits-train-abc"},
            "status": {"conditions": [dict(zip(("type", "status", "reason", "message"), c)) for c in conditions]}}


CREATED = ("Created", "True", "JobsCreationSucceeded", "succeeded to create Jobs")
COMPLETE = ("Complete", "True", "JobsCompleted", "jobs completed successfully")
FAILED = ("Failed", "True", "JobsFailed", "jobset node-0 failed: BackoffLimitExceeded")


def test_states_from_status_conditions():
    assert job_state({"metadata": {}}) == ("running", "")
    assert job_state(_job(CREATED)) == ("running", "")
    assert job_state(_job(CREATED, COMPLETE))[0] == "complete"
    assert job_state(_job(CREATED, FAILED)) == ("failed", "jobset node-0 failed: BackoffLimitExceeded")


def test_wait_returns_on_completion_and_raises_the_jobs_own_message():
    states = iter([_job(), _job(CREATED), _job(CREATED, COMPLETE)])
    assert job_state(wait_for(lambda: next(states), timeout=60, sleep=lambda s: None))[0] == "complete"
    states = iter([_job(CREATED), _job(CREATED, FAILED)])
    with pytest.raises(TrainJobError, match="failed: jobset node-0 failed: BackoffLimitExceeded"):
        wait_for(lambda: next(states), timeout=60, sleep=lambda s: None)


def test_wait_gives_up_after_the_timeout():
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    with pytest.raises(TrainJobError, match="not complete after 30s"):
        wait_for(lambda: _job(CREATED), timeout=30, poll=10, clock=lambda: now[0], sleep=sleep)
