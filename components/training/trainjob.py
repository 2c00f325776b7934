"""Launching distributed training on a cluster as a Kubeflow Trainer ``TrainJob``.

The train step (a KFP pod) stages its inputs on a shared volume (the checkpoint PVC), creates a
``TrainJob`` (``trainer.kubeflow.org/v1alpha1``, runtime ``torch-distributed``: N nodes x M processes)
whose pods run the same worker as ``pillars run training --param nproc=M`` (``pillars.components.training.distributed``)
through ``torchrun`` (the runtime sets the ``PET_*`` rendezvous variables), waits for it, and reads the
model rank 0 wrote back from the volume. The API version is pinned: v1alpha1 still changes.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pillars.components.deploy import kube
from pillars.components.training.distributed import RESULT_FILE
from pillars.components.errors import PillarsError

GROUP = "trainer.kubeflow.org"
VERSION = "v1alpha1"
PLURAL = "trainjobs"
RUNTIME = "torch-distributed"
NODE = "node"
"""Name of the replicated job and of its container in the ``torch-distributed`` runtime."""
FIELD_MANAGER = kube.FIELD_MANAGER
current_namespace = kube.current_namespace
"""The pod's namespace (:func:`pillars.components.deploy.kube.current_namespace`)."""


class TrainJobError(PillarsError, RuntimeError):
    """The TrainJob failed or did not finish in time; the message is the job's own condition message."""


@dataclasses.dataclass
class TrainJobSpec:
    """What to run, where, and on how much hardware."""

    name: str
    namespace: str
    image: str
    worker_args: list[str]
    nodes: int = 1
    procs_per_node: int = 1
    gpus_per_node: int = 0
    cpu: str = "2"
    memory: str = "8Gi"
    volume_claim: str = ""
    mount_path: str = "/checkpoints"
    runtime: str = RUNTIME
    env: dict[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.procs_per_node < 1 or self.gpus_per_node < 0:
            raise ValueError(f"a TrainJob needs nodes >= 1 and procs_per_node >= 1, got {self.nodes}x{self.procs_per_node}")
        if self.gpus_per_node and self.gpus_per_node < self.procs_per_node:
            raise ValueError(f"{self.procs_per_node} processes per node need as many GPUs, got {self.gpus_per_node}")


def build_trainjob(spec: TrainJobSpec) -> dict[str, Any]:
    """The ``TrainJob`` object for ``spec``."""
    limits = {"cpu": spec.cpu, "memory": spec.memory}
    if spec.gpus_per_node:
        limits["nvidia.com/gpu"] = str(spec.gpus_per_node)
    trainer: dict[str, Any] = {
        "image": spec.image,
        "command": ["torchrun", "-m", "pillars.components.training.distributed"],
        "args": list(spec.worker_args),
        "numNodes": spec.nodes,
        "numProcPerNode": spec.procs_per_node,
        "resourcesPerNode": {"requests": {"cpu": spec.cpu, "memory": spec.memory}, "limits": limits},
        "env": [{"name": k, "value": v} for k, v in sorted(spec.env.items())],
    }
    job: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainJob",
        "metadata": {"name": spec.name, "namespace": spec.namespace,
                     "labels": {"app.kubernetes.io/part-of": "pillars", "app.kubernetes.io/component": "training"}},
        "spec": {"runtimeRef": {"name": spec.runtime, "apiGroup": GROUP, "kind": "ClusterTrainingRuntime"},
                 "trainer": trainer},
    }
    if spec.volume_claim:
        pod_spec = {"volumes": [{"name": "shared", "persistentVolumeClaim": {"claimName": spec.volume_claim}}],
                    "containers": [{"name": NODE, "volumeMounts": [{"name": "shared", "mountPath": spec.mount_path}]}]}
        job["spec"]["runtimePatches"] = [{
            "manager": FIELD_MANAGER,
            "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [
                {"name": NODE, "template": {"spec": {"template": {"spec": pod_spec}}}}]}}},
        }]
    return job


def job_state(job: dict[str, Any]) -> tuple[str, str]:
    """``("complete" | "failed" | "suspended" | "running", message)`` from a TrainJob's status conditions."""
    conditions = {c.get("type"): c for c in (job.get("status") or {}).get("conditions", [])}
    for kind, state in (("Failed", "failed"), ("Complete", "complete"), ("Suspended", "suspended")):
        condition = conditions.get(kind)
        if condition is not None and condition.get("status") == "True":
            return state, condition.get("message") or condition.get("reason") or kind
    return "running", ""


def wait_for(get: Callable[[], dict[str, Any]], timeout: float, poll: float = 5.0,
             clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Poll ``get()`` until the TrainJob completes.

    Raises:
        TrainJobError: it failed (with its condition message), was suspended, or ran past ``timeout``.
    """
    deadline = clock() + timeout
    while True:
        job = get()
        state, message = job_state(job)
        name = job.get("metadata", {}).get("name", "?")
        if state == "complete":
            return job
        if state in ("failed", "suspended"):
            raise TrainJobError(f"TrainJob {name} {state}: {message}")
        if clock() >= deadline:
            raise TrainJobError(f"TrainJob {name} not complete after {timeout:.0f}s")
        sleep(poll)


def launch_trainjob(spec: TrainJobSpec, model_dir: str, timeout: float = 6 * 3600) -> dict[str, Any]:
    """Create (server-side apply, idempotent on retry) the TrainJob, wait for it, and return rank 0's summary.

    ``model_dir`` must be on the shared volume so the job's rank 0 can write the model there.
    """
    from kubernetes import client

    api = kube.api_client()
    path = kube.custom_object_path(GROUP, VERSION, spec.namespace, PLURAL, spec.name)
    kube.server_side_apply(api, path, build_trainjob(spec))
    objects = client.CustomObjectsApi(api)
    wait_for(lambda: objects.get_namespaced_custom_object(GROUP, VERSION, spec.namespace, PLURAL, spec.name), timeout)
    return json.loads(Path(model_dir, RESULT_FILE).read_text())

