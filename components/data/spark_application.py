"""The data step's Spark job on a cluster: a SparkApplication for the Kubeflow Spark Operator
(``sparkoperator.k8s.io/v1beta2``), and how its status is read.

:func:`build_spark_application` renders the object (image, service account and S3 credentials from the
chart's settings, driver and executor sizes from the run); it validates against the operator's CRD schema
(strict: ``tests/cluster/schemas``). :func:`application_state` reads a status: done, still running, or the
driver's own error. :func:`submit_and_wait` creates it, polls it, and deletes a failed one; a cluster
without the operator's CRD gets one line saying how to install it.

Not yet wired into the data step: on a cluster, ``engine=spark`` still runs Spark ``local[*]`` in the
step's pod (docs/data-at-scale.md).
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable
from typing import Any

from pillars.components.errors import ConfigError, PillarsError

GROUP = "sparkoperator.k8s.io"
VERSION = "v1beta2"
PLURAL = "sparkapplications"
SPARK_VERSION = "3.5.9"
TERMINAL_OK = ("COMPLETED",)
TERMINAL_FAILED = ("FAILED", "SUBMISSION_FAILED")
CRD_HINT = ("the Kubeflow Spark Operator is not installed on this cluster (no CRD sparkapplications."
            "sparkoperator.k8s.io/v1beta2): install it with `helm install spark-operator spark-operator "
            "--repo https://kubeflow.github.io/spark-operator -n spark-operator --create-namespace` and set "
            "sparkOperator.enabled=true in the Pillars chart, or use engine=pandas")
_SIZE = re.compile(r"^[0-9]+[kmgt]?$")


class SparkApplicationError(PillarsError):
    """The SparkApplication failed (the message carries the driver's error) or could not be created."""


@dataclasses.dataclass(frozen=True)
class SparkApplicationSpec:
    """What one data-step job needs.

    Attributes:
        name, namespace: the object's.
        image: the Pillars image (pyspark and Java inside).
        service_account: the driver's (the chart's ``sparkOperator.serviceAccount``: it may create executors).
        main_file: the driver's Python program, as a ``local://`` path in the image.
        arguments: its command-line arguments.
        driver_cores, driver_memory, executor_instances, executor_cores, executor_memory: sizes (``2g``).
        s3_secret: a Secret whose keys (``AWS_ACCESS_KEY_ID``...) become the driver's and executors' environment.
        s3_endpoint: an S3-compatible endpoint for ``s3a://`` ("" for AWS).
    """

    name: str
    namespace: str
    image: str
    service_account: str
    main_file: str
    arguments: tuple[str, ...] = ()
    driver_cores: int = 1
    driver_memory: str = "2g"
    executor_instances: int = 2
    executor_cores: int = 1
    executor_memory: str = "2g"
    s3_secret: str = ""
    s3_endpoint: str = ""

    def __post_init__(self) -> None:
        bad = [f"{n}={getattr(self, n)!r}" for n in ("driver_memory", "executor_memory")
               if not _SIZE.match(str(getattr(self, n)))]
        bad += [f"{n}={getattr(self, n)!r}" for n in ("driver_cores", "executor_instances", "executor_cores")
                if int(getattr(self, n)) < 1]
        if not self.main_file.startswith(("local://", "s3a://", "https://")):
            bad.append(f"main_file={self.main_file!r} (a local:// path in the image)")
        if bad:
            raise ConfigError("invalid SparkApplication settings: " + ", ".join(bad))


def build_spark_application(spec: SparkApplicationSpec) -> dict[str, Any]:
    """The SparkApplication object (a Python job, cluster mode, never restarted: the step retries)."""
    env_from = [{"secretRef": {"name": spec.s3_secret}}] if spec.s3_secret else []
    labels = {"app.kubernetes.io/part-of": "pillars", "app.kubernetes.io/component": "prepare-data"}
    driver: dict[str, Any] = {"cores": spec.driver_cores, "memory": spec.driver_memory,
                              "serviceAccount": spec.service_account, "labels": labels}
    executor: dict[str, Any] = {"instances": spec.executor_instances, "cores": spec.executor_cores,
                                "memory": spec.executor_memory, "labels": labels}
    if env_from:
        driver["envFrom"] = env_from
        executor["envFrom"] = env_from
    body: dict[str, Any] = {
        "type": "Python",
        "pythonVersion": "3",
        "mode": "cluster",
        "image": spec.image,
        "imagePullPolicy": "IfNotPresent",
        "mainApplicationFile": spec.main_file,
        "arguments": list(spec.arguments),
        "sparkVersion": SPARK_VERSION,
        "restartPolicy": {"type": "Never"},
        "timeToLiveSeconds": 3600,
        "sparkConf": {"spark.sql.shuffle.partitions": str(max(8, 2 * spec.executor_instances * spec.executor_cores)),
                      "spark.ui.enabled": "false"},
        "driver": driver,
        "executor": executor,
    }
    if spec.s3_endpoint:
        body["hadoopConf"] = {"fs.s3a.endpoint": spec.s3_endpoint, "fs.s3a.path.style.access": "true"}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "SparkApplication",
            "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": labels}, "spec": body}


def application_state(obj: dict[str, Any]) -> tuple[bool, str]:
    """``(done, application id)`` of a SparkApplication as the API returns it.

    Raises:
        SparkApplicationError: it failed, naming the driver's own error (``status.applicationState.errorMessage``).
    """
    status = obj.get("status") or {}
    state = (status.get("applicationState") or {}).get("state", "")
    if state in TERMINAL_FAILED:
        error = (status.get("applicationState") or {}).get("errorMessage") or "no error message"
        name = obj.get("metadata", {}).get("name", "?")
        raise SparkApplicationError(f"SparkApplication {name} {state.lower().replace('_', ' ')}: "
                                    f"{error.strip().splitlines()[-1] if error.strip() else error}")
    return state in TERMINAL_OK, str(status.get("sparkApplicationId") or "")


def submit_and_wait(spec: SparkApplicationSpec, api: Any, timeout: float = 6 * 3600, poll: float = 5.0,
                    clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> str:
    """Create the SparkApplication with ``api`` (a ``kubernetes.client.CustomObjectsApi``), wait for it to end
    and return its Spark application id; a failed or timed-out one is deleted.

    Raises:
        SparkApplicationError: the operator's CRD is missing (one line: how to install it), the job failed
            (the driver's error) or did not finish within ``timeout`` seconds.
    """
    from kubernetes.client.exceptions import ApiException

    body = build_spark_application(spec)
    try:
        api.create_namespaced_custom_object(GROUP, VERSION, spec.namespace, PLURAL, body)
    except ApiException as e:
        if e.status == 404:
            raise SparkApplicationError(CRD_HINT) from e
        raise SparkApplicationError(f"cannot create SparkApplication {spec.name}: {e.reason}") from e
    deadline = clock() + timeout
    try:
        while True:
            done, app_id = application_state(
                api.get_namespaced_custom_object(GROUP, VERSION, spec.namespace, PLURAL, spec.name))
            if done:
                return app_id
            if clock() > deadline:
                raise SparkApplicationError(f"SparkApplication {spec.name} did not finish in {timeout:.0f} s")
            sleep(poll)
    except BaseException:
        try:
            api.delete_namespaced_custom_object(GROUP, VERSION, spec.namespace, PLURAL, spec.name)
        except ApiException:
            pass  # already gone; the failure that got us here is what the step reports
        raise
