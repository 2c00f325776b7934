"""The data step's Spark job on a cluster: a SparkApplication for the Kubeflow Spark Operator
(``sparkoperator.k8s.io/v1beta2``), how its status is read, and how the step runs it.

:func:`build_spark_application` renders the object (image, service account and S3 credentials from the
chart's settings, driver and executor sizes from the run's ``spark_*`` parameters,
:class:`~pillars.components.data.spark_sizes.SparkSizes`); it
validates against the operator's CRD schema (strict: ``tests/cluster/schemas``). :func:`application_state`
reads a status: done, still running, or the driver's own error. :func:`submit_and_wait` creates it, polls
it, and deletes a failed one; a cluster without the operator's CRD gets one line saying how to install it.

:func:`run_on_operator` is the data step's ``spark_launcher=operator`` path (the switch is a run parameter,
as the train step's ``launcher=trainjob``): the driver, :mod:`pillars.components.data.spark_driver` from the
same image, prepares the table into a work location on S3 (``PILLARS_SPARK_WORK_URI``, the chart's
``sparkOperator.workUri``), the step copies the splits and the result back into its own outputs, removes the
work location and records the application id (``spark_app_id``: the run's and the version's lineage).
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pillars.components.data.spark_sizes import SIZE
from pillars.components.errors import ConfigError, PillarsError

if TYPE_CHECKING:
    from pillars.components.data.prepare import PrepareParams
    from pillars.components.data.tables import TableResult
    from pillars.components.settings import Settings

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
               if not SIZE.match(str(getattr(self, n)))]
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
    if spec.s3_endpoint:  # for the driver's own S3 reads and writes (pyarrow): the result file
        driver["env"] = [{"name": "AWS_ENDPOINT_URL", "value": spec.s3_endpoint}]
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


def work_location(root: str, name: str) -> str:
    """Where application ``name`` writes: ``root/name`` (``root`` an ``s3://`` prefix or a shared folder).

    Raises:
        ConfigError: no root (``PILLARS_SPARK_WORK_URI``, the chart's ``sparkOperator.workUri``).
    """
    if not root:
        raise ConfigError("spark_launcher=operator needs a work location the driver and the step share: set "
                          "PILLARS_SPARK_WORK_URI (the chart's sparkOperator.workUri), e.g. s3://bucket/pillars-spark")
    return f"{root.rstrip('/')}/{name}"


def step_spec(params: PrepareParams, settings: Settings, name: str, namespace: str) -> SparkApplicationSpec:
    """The SparkApplication the data step submits: the image, service account and S3 settings of the chart
    (``settings``), the sizes of the run, and the driver program with the run's data parameters."""
    from pillars.components.data import spark_driver

    sizes = params.spark_sizes()
    return SparkApplicationSpec(
        name=name, namespace=namespace, image=settings.spark_image or settings.image,
        service_account=settings.spark_service_account, main_file=f"local://{Path(spark_driver.__file__).resolve()}",
        arguments=tuple(spark_driver.driver_arguments(params, work_location(settings.spark_work_uri, name))),
        driver_cores=sizes.driver_cores, driver_memory=sizes.driver_memory, executor_instances=sizes.executors,
        executor_cores=sizes.executor_cores, executor_memory=sizes.executor_memory,
        s3_secret=settings.spark_s3_secret, s3_endpoint=settings.spark_s3_endpoint)


def run_on_operator(params: PrepareParams, out: str | Path, settings: Settings | None = None, api: Any = None,
                    namespace: str = "", timeout: float = 6 * 3600, poll: float = 5.0) -> TableResult:
    """Prepare the table as a SparkApplication and copy its splits into ``out/{train,val,test}``.

    Args:
        api: a ``kubernetes.client.CustomObjectsApi`` (default: one for the pod's own service account).
        namespace: where the application runs (default: the pod's own namespace).

    Returns:
        The driver's result, its ``info["spark_app_id"]`` the operator's application id.

    Raises:
        ConfigError: no work location, a bad size.
        SparkApplicationError: the CRD is missing (how to install it), or the driver's own error.
    """
    from pillars.components.data import spark_driver
    from pillars.components.deploy.kube import current_namespace
    from pillars.components.settings import Settings

    settings = settings or Settings()
    name = f"pillars-data-{uuid.uuid4().hex[:12]}"
    spec = step_spec(params, settings, name, namespace or current_namespace(settings.namespace))
    if api is None:
        from kubernetes import client

        from pillars.components.deploy.kube import api_client

        api = client.CustomObjectsApi(api_client())
    work = work_location(settings.spark_work_uri, name)
    try:
        app_id = submit_and_wait(spec, api, timeout=timeout, poll=poll)
        result = spark_driver.fetch_result(work, Path(out), settings.spark_s3_endpoint)
    finally:
        spark_driver.remove_location(work, settings.spark_s3_endpoint)
    if app_id:
        result.info["spark_app_id"] = app_id
    return result
