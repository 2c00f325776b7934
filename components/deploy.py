"""Deploy a registered model version as a KServe InferenceService, and roll it back when it fails.

The core is plain functions over plain dicts (the InferenceService as the API server sees it):

* :func:`build_inference_service` — the object for ``models:/NAME/VERSION``, the same shape the
  Helm chart renders for ``values.models`` (runtime ``pillars-registry``, ports per mode, the
  security context every Pillars pod has, the release's labels, the registered model's name in
  the annotation ``pillars.io/registered-model`` that the runtime passes on as the model name).
* :func:`check_overwrite` — refuses to replace an InferenceService that serves another registered
  model (``fraud_v2`` and ``fraud-v2`` map to the same name).
* :func:`apply_inference_service` — server-side apply with field manager ``pillars`` (idempotent:
  applying the same object twice changes nothing).
* :func:`assess` — reads an InferenceService's status: ``ready``, ``failed`` (with KServe's own
  condition message) or ``pending``.
* :func:`rollback_plan` — what to do after a failure or a timeout: in Knative mode turn the canary
  off (``canaryTrafficPercent: 0`` sends all traffic to the last rolled-out revision); in Standard
  mode re-apply the previous spec; on a first deployment there is nothing to go back to.
* :func:`deploy` — the whole step: resolve, apply, wait, roll back and raise :class:`DeployError`.

Its KFP component is ``deploy_op`` in :mod:`pillars.components.ops`; its CLI is ``pillars deploy``
(:mod:`pillars.pipelines.cli`); the Kubernetes client is :mod:`pillars.components.kube`.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pillars.components import kube
from pillars.components.errors import ConfigError, PillarsError, RegistryError
from pillars.components.registry import alias_version, check_same_task
from pillars.components.settings import Settings

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

logger = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
FIELD_MANAGER = kube.FIELD_MANAGER
SERVING_SUFFIX, CUDA_SUFFIX = "-serving", "-cuda"
"""The serving image is the components image's repository plus ``-serving`` (the chart's
``image.servingSuffix``); GPU models add ``-cuda`` to the tag (``image.cudaSuffix``)."""
REGISTERED_MODEL = "pillars.io/registered-model"
"""Annotation (exact name) and label (label-safe form) naming the registered model an
InferenceService serves; the serving runtime passes the annotation as ``--model_name``."""
MODES = ("Knative", "Standard")
_LEGACY_MODE_NAMES = {"Knative": "Serverless", "Standard": "RawDeployment"}
IMAGE_UID = 10001
"""The non-root user the Pillars images run as (components/Dockerfile, serving/Dockerfile)."""
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_UNSAFE_NAME = re.compile(r'["\\/\x00-\x1f\x7f]')
"""Characters a registered model name may not have here: KServe pastes the annotation into the
runtime container's JSON (quotes, backslashes, control characters), and MLflow names have no ``/``."""


def serving_image(components_image: str) -> str:
    """``repo:tag`` of the components image -> ``repo-serving:tag`` (the chart derives it the same way)."""
    repository, sep, tag = components_image.rpartition(":")
    if not sep or "/" in tag:
        raise ConfigError(f"image must be REPOSITORY:TAG, got {components_image!r}")
    return f"{repository}{SERVING_SUFFIX}:{tag}"


def label_value(text: str) -> str:
    """``text`` as a label value: at most 63 characters of ``[A-Za-z0-9_.-]``, alphanumeric at both
    ends; other characters become ``_`` (the chart's ``pillars.labelValue``)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:63].strip("_.-")


class DeployError(PillarsError, RuntimeError):
    """The InferenceService did not become ready; ``str(err)`` carries KServe's condition message."""


@dataclasses.dataclass(frozen=True)
class DeploySpec:
    """What to deploy and how. ``version`` is the resolved registry version (None: serve the alias)."""

    model: str
    alias: str
    namespace: str
    version: str | None = None
    gpu: int = 0
    canary_percent: int | None = None
    mode: str = "Knative"
    kserve_version: str = "0.15"
    name: str = ""
    tracking_uri: str = dataclasses.field(default_factory=lambda: Settings().cluster_mlflow_uri)
    service_account: str = dataclasses.field(default_factory=lambda: Settings().models_service_account)
    serving_image: str = dataclasses.field(default_factory=lambda: serving_image(Settings().image))
    release: str = dataclasses.field(default_factory=lambda: Settings().release)
    app_name: str = dataclasses.field(default_factory=lambda: Settings().app_name)
    cluster_local: bool = True
    reload_interval_s: int = 60
    min_replicas: int = 1
    max_replicas: int = 3
    scale_metric: str = ""
    scale_target: int = 0

    def __post_init__(self) -> None:
        _check_spec(self)

    @property
    def isvc_name(self) -> str:
        return self.name or inference_service_name(self.model)

    @property
    def model_uri(self) -> str:
        return f"models:/{self.model}/{self.version}" if self.version else f"models:/{self.model}@{self.alias}"


def _check_spec(spec: DeploySpec) -> None:
    if not spec.model or _UNSAFE_NAME.search(spec.model):
        raise ConfigError(f"registered model name {spec.model!r} is empty or has a quote, backslash, '/' "
                          "or control character")
    if spec.mode not in MODES:
        raise ConfigError(f"deployment mode must be one of {', '.join(MODES)}, got {spec.mode!r}")
    if not _DNS_LABEL.match(spec.namespace):
        raise ConfigError(f"namespace {spec.namespace!r} is not a DNS label")
    if spec.name and not _DNS_LABEL.match(spec.name):
        raise ConfigError(f"InferenceService name {spec.name!r} is not a DNS label")
    if spec.gpu < 0:
        raise ConfigError(f"--gpu must be 0 or more, got {spec.gpu}")
    if spec.canary_percent is not None:
        if not 0 <= spec.canary_percent <= 100:
            raise ConfigError(f"--canary must be a percentage 0..100, got {spec.canary_percent}")
        if spec.mode != "Knative":
            raise ConfigError("--canary needs Knative mode: Standard mode has no revisions to split traffic")
    if spec.min_replicas < 0 or spec.max_replicas < max(spec.min_replicas, 1):
        raise ConfigError("replicas must satisfy 0 <= min <= max and max >= 1, "
                          f"got {spec.min_replicas}..{spec.max_replicas}")
    allowed = ("concurrency", "rps") if spec.mode == "Knative" else ("cpu", "memory")
    if spec.scale_metric and spec.scale_metric not in allowed:
        raise ConfigError(f"scale metric in {spec.mode} mode is one of {', '.join(allowed)}, got {spec.scale_metric!r}")
    if spec.mode == "Standard" and spec.min_replicas == 0:
        raise ConfigError("min replicas 0 (scale to zero) needs Knative mode")
    if spec.reload_interval_s < 0:
        raise ConfigError(f"reload interval must be 0 (off) or more seconds, got {spec.reload_interval_s}")


def inference_service_name(model: str) -> str:
    """A DNS-label name for a registered model name (``Iris_Classifier`` -> ``iris-classifier``)."""
    name = re.sub(r"[^a-z0-9-]+", "-", model.lower()).strip("-")
    if name and not name[0].isalpha():
        name = f"m-{name}"
    name = name[:63].rstrip("-")
    if not name:
        raise ConfigError(f"cannot derive an InferenceService name from model name {model!r}; pass --name")
    return name


def mode_annotation(mode: str, kserve_version: str) -> str:
    """The ``serving.kserve.io/deploymentMode`` value that KServe version expects (0.15 renamed them)."""
    parts = re.findall(r"\d+", kserve_version)
    if len(parts) < 2:
        raise ConfigError(f"KServe version must look like 0.15 or v0.15.2, got {kserve_version!r}")
    modern = (int(parts[0]), int(parts[1])) >= (0, 15)
    return mode if modern else _LEGACY_MODE_NAMES[mode]


def build_inference_service(spec: DeploySpec) -> dict[str, Any]:
    """The InferenceService for ``spec`` (what the chart renders for one ``values.models`` entry)."""
    labels = {"app.kubernetes.io/name": spec.app_name, "app.kubernetes.io/instance": spec.release,
              "app.kubernetes.io/component": "model", "app.kubernetes.io/part-of": "pillars",
              "app.kubernetes.io/managed-by": FIELD_MANAGER, "pillars.io/model": spec.isvc_name,
              REGISTERED_MODEL: label_value(spec.model)}
    annotations = {"serving.kserve.io/deploymentMode": mode_annotation(spec.mode, spec.kserve_version),
                   REGISTERED_MODEL: spec.model,
                   "pillars.io/model-uri": spec.model_uri,
                   "pillars.io/model-alias": f"{spec.model}@{spec.alias}"}
    if spec.version:
        annotations["pillars.io/model-version"] = spec.version
    predictor: dict[str, Any] = {
        "serviceAccountName": spec.service_account,
        "automountServiceAccountToken": False,
        "minReplicas": spec.min_replicas,
        "maxReplicas": spec.max_replicas,
    }
    metadata_labels = dict(labels)
    if spec.mode == "Knative":
        if spec.cluster_local:
            metadata_labels["networking.knative.dev/visibility"] = "cluster-local"
        predictor["scaleMetric"] = spec.scale_metric or "concurrency"
        predictor["scaleTarget"] = spec.scale_target or 10
        if spec.canary_percent is not None:
            predictor["canaryTrafficPercent"] = spec.canary_percent
        ports = [{"name": "http1", "containerPort": 8080, "protocol": "TCP"}]
    else:
        annotations["serving.kserve.io/autoscalerClass"] = "hpa"
        annotations["serving.kserve.io/metrics"] = spec.scale_metric or "cpu"
        annotations["serving.kserve.io/targetUtilizationPercentage"] = str(spec.scale_target or 80)
        predictor.update(scaleMetric=spec.scale_metric or "cpu", scaleMetricType="Utilization",
                         scaleTarget=spec.scale_target or 80)
        ports = [{"name": "http1", "containerPort": 8080, "protocol": "TCP"},
                 {"name": "h2c", "containerPort": 8081, "protocol": "TCP"}]
    resources: dict[str, Any] = {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}}
    model: dict[str, Any] = {
        "modelFormat": {"name": "pillars", "version": "1"},
        "runtime": "pillars-registry",
        "args": [f"--model_uri={spec.model_uri}",
                 *([f"--reload_interval_s={spec.reload_interval_s}"] if not spec.version else [])],
        "env": [{"name": "HOME", "value": "/tmp"}, {"name": "MLFLOW_TRACKING_URI", "value": spec.tracking_uri}],
        "ports": ports,
        "resources": resources,
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]},
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    if spec.gpu:
        model["image"] = f"{spec.serving_image}{CUDA_SUFFIX}"
        resources["limits"]["nvidia.com/gpu"] = spec.gpu
        predictor["nodeSelector"] = {"nvidia.com/gpu.present": "true"}
        predictor["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    predictor.update(
        labels=dict(labels),
        securityContext={"runAsNonRoot": True, "runAsUser": IMAGE_UID, "runAsGroup": IMAGE_UID, "fsGroup": IMAGE_UID,
                         "seccompProfile": {"type": "RuntimeDefault"}},
        model=model,
        volumes=[{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}],
    )
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InferenceService",
            "metadata": {"name": spec.isvc_name, "namespace": spec.namespace, "labels": metadata_labels,
                         "annotations": annotations},
            "spec": {"predictor": predictor}}


def served_model(isvc: dict[str, Any]) -> str | None:
    """The registered model an existing InferenceService serves, from its annotations (older Pillars
    objects: ``pillars.io/model-alias`` NAME@ALIAS); None when it names none (not a Pillars deployment)."""
    annotations = isvc.get("metadata", {}).get("annotations") or {}
    if annotations.get(REGISTERED_MODEL):
        return annotations[REGISTERED_MODEL]
    alias = annotations.get("pillars.io/model-alias", "")
    return alias.rpartition("@")[0] or None


def check_overwrite(existing: dict[str, Any] | None, spec: DeploySpec) -> None:
    """Refuse to replace an InferenceService that serves another registered model, or one that
    Pillars did not create (``fraud_v2`` and ``fraud-v2``, or ``Churn`` and ``churn``, share a name).

    Raises:
        ConfigError: one line naming the InferenceService and both models.
    """
    if existing is None:
        return
    where = f"{spec.namespace}/{spec.isvc_name}"
    served = served_model(existing)
    if served is None:
        raise ConfigError(f"InferenceService {where} exists and is not a Pillars deployment (no {REGISTERED_MODEL} "
                          f"annotation); not replacing it with model {spec.model!r}: pass --name")
    if served != spec.model:
        raise ConfigError(f"InferenceService {where} serves registered model {served!r}, not {spec.model!r}; "
                          "not replacing it: pass --name to deploy under another name")


# --- reading the status ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Assessment:
    """Where a rollout stands: ``state`` is ready, failed or pending; ``message`` is KServe's."""

    state: str
    message: str


def _conditions(isvc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c.get("type"): c for c in isvc.get("status", {}).get("conditions", []) or []}


def _failure_message(isvc: dict[str, Any]) -> str:
    """KServe's own words: the model's last failure, else the first False condition with a message."""
    status = isvc.get("status", {})
    failure = (status.get("modelStatus") or {}).get("lastFailureInfo") or {}
    if failure.get("message"):
        return f"{failure.get('reason', 'Failed')}: {failure['message']}"
    conditions = _conditions(isvc)
    for kind in ("Ready", "PredictorReady", "IngressReady", "PredictorConfigurationReady", "PredictorRouteReady"):
        condition = conditions.get(kind)
        if condition and condition.get("status") == "False" and condition.get("message"):
            return f"{condition.get('reason') or kind}: {condition['message']}"
    for condition in conditions.values():
        if condition.get("status") == "False" and condition.get("message"):
            return f"{condition.get('reason') or condition.get('type')}: {condition['message']}"
    return "InferenceService is not ready (no condition message)"


def assess(isvc: dict[str, Any]) -> Assessment:
    """Ready when the status describes this generation, Ready is True and the newest revision is the
    ready one; failed when Ready (or a predictor condition) is False or the model failed to load;
    otherwise pending."""
    status = isvc.get("status") or {}
    generation = isvc.get("metadata", {}).get("generation")
    if generation is not None and status.get("observedGeneration", 0) < generation:
        return Assessment("pending", f"KServe has not yet observed generation {generation}")
    conditions = _conditions(isvc)
    ready = conditions.get("Ready", {})
    predictor = (status.get("components") or {}).get("predictor") or {}
    created, latest_ready = predictor.get("latestCreatedRevision"), predictor.get("latestReadyRevision")
    if ready.get("status") == "True" and (not created or created == latest_ready):
        return Assessment("ready", ready.get("message", "") or "Ready")
    model_state = ((status.get("modelStatus") or {}).get("states") or {}).get("targetModelState")
    predictor_failed = conditions.get("PredictorReady", {}).get("status") == "False" and (
        conditions.get("PredictorReady", {}).get("reason") not in (None, "", "Unknown"))
    if ready.get("status") == "False" or model_state == "FailedToLoad" or predictor_failed:
        return Assessment("failed", _failure_message(isvc))
    return Assessment("pending", ready.get("message") or "waiting for Ready")


@dataclasses.dataclass(frozen=True)
class RollbackPlan:
    """``action``: canary-off (Knative), reapply-previous (Standard) or none (nothing to restore).
    ``patch``: the object to server-side apply (None for ``none``). ``revision``: where traffic goes."""

    action: str
    patch: dict[str, Any] | None
    revision: str | None
    reason: str


def previous_ready_revision(isvc: dict[str, Any]) -> str | None:
    """The revision traffic should go back to: the last rolled-out one, else a ready revision that
    is not the newest, else None (a first deployment)."""
    predictor = ((isvc.get("status") or {}).get("components") or {}).get("predictor") or {}
    created = predictor.get("latestCreatedRevision")
    for key in ("latestRolledoutRevision", "previousRolledoutRevision", "latestReadyRevision"):
        revision = predictor.get(key)
        if revision and revision != created:
            return revision
    for target in predictor.get("traffic") or []:
        revision = target.get("revisionName")
        if revision and revision != created and target.get("percent"):
            return revision
    return None


def rollback_plan(isvc: dict[str, Any], mode: str, previous: dict[str, Any] | None) -> RollbackPlan:
    """What to do after ``isvc`` failed or timed out.

    Args:
        isvc: the InferenceService as last read (with status).
        mode: Knative or Standard.
        previous: the object as it was before this deployment (None on a first deployment).
    """
    name, namespace = isvc["metadata"]["name"], isvc["metadata"].get("namespace")
    if mode == "Knative":
        revision = previous_ready_revision(isvc)
        if revision is None:
            return RollbackPlan("none", None, None, "first deployment: no earlier ready revision to route to")
        patch = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InferenceService",
                 "metadata": {"name": name, "namespace": namespace},
                 "spec": {"predictor": {"canaryTrafficPercent": 0}}}
        return RollbackPlan("canary-off", patch, revision,
                            f"canaryTrafficPercent 0: all traffic back to revision {revision}")
    if previous is None:
        return RollbackPlan("none", None, None, "first deployment: no earlier spec to restore")
    restored = {"apiVersion": previous.get("apiVersion", f"{GROUP}/{VERSION}"), "kind": "InferenceService",
                "metadata": {"name": name, "namespace": namespace,
                             "labels": previous.get("metadata", {}).get("labels", {}),
                             "annotations": previous.get("metadata", {}).get("annotations", {})},
                "spec": copy.deepcopy(previous.get("spec", {}))}
    return RollbackPlan("reapply-previous", restored, None, "previous spec re-applied (Deployment rolls back)")


# --- talking to the cluster ------------------------------------------------------------------

def _path(namespace: str, name: str | None = None) -> str:
    return kube.custom_object_path(GROUP, VERSION, namespace, PLURAL, name)


def get_inference_service(api_client: ApiClient, namespace: str, name: str) -> dict[str, Any] | None:
    """The InferenceService, or None when it does not exist."""
    from kubernetes.client.exceptions import ApiException

    try:
        return kube.get_object(api_client, _path(namespace, name))
    except ApiException as e:
        raise DeployError(f"cannot read InferenceService {namespace}/{name}: {e.status} {e.reason}") from e


def apply_inference_service(api_client: ApiClient, obj: dict[str, Any]) -> dict[str, Any]:
    """Server-side apply ``obj`` with field manager ``pillars`` (force: Pillars owns these fields)."""
    from kubernetes.client.exceptions import ApiException

    meta = obj["metadata"]
    try:
        return kube.server_side_apply(api_client, _path(meta["namespace"], meta["name"]), obj)
    except ApiException as e:
        raise DeployError(f"server-side apply of InferenceService {meta['namespace']}/{meta['name']} "
                          f"failed: {e.status} {kube.api_message(e)}") from e


def wait_ready(read: Callable[[], dict[str, Any] | None], timeout_s: float, poll_s: float = 5.0,
               clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep
               ) -> tuple[Assessment, dict[str, Any] | None]:
    """Poll ``read`` until ready or failed, or until ``timeout_s``; returns the last assessment and
    object (a timeout is reported as ``failed`` with the last pending message)."""
    deadline = clock() + timeout_s
    isvc: dict[str, Any] | None = None
    verdict = Assessment("pending", "not created yet")
    while True:
        isvc = read()
        verdict = assess(isvc) if isvc else Assessment("pending", "not created yet")
        if verdict.state != "pending":
            return verdict, isvc
        if clock() >= deadline:
            return Assessment("failed", f"timed out after {timeout_s:g}s: {verdict.message}"), isvc
        sleep(poll_s)


@dataclasses.dataclass(frozen=True)
class DeployResult:
    name: str
    namespace: str
    model_uri: str
    url: str


def deploy(spec: DeploySpec, api_client: ApiClient | None = None, timeout_s: float = 600.0,
           poll_s: float = 5.0) -> DeployResult:
    """Apply the InferenceService for ``spec``, wait for Ready, and roll back on failure or timeout.

    Raises:
        ConfigError: the InferenceService of that name serves another registered model (nothing applied).
        DeployError: the rollout failed; the message is the InferenceService's own condition message
            and says what was rolled back.
    """
    api_client = api_client or kube.api_client()
    obj = build_inference_service(spec)
    previous = get_inference_service(api_client, spec.namespace, spec.isvc_name)
    check_overwrite(previous, spec)
    applied = apply_inference_service(api_client, obj)
    logger.info("applied InferenceService %s/%s (%s), generation %s", spec.namespace, spec.isvc_name,
                spec.model_uri, applied.get("metadata", {}).get("generation"))
    verdict, isvc = wait_ready(lambda: get_inference_service(api_client, spec.namespace, spec.isvc_name),
                               timeout_s, poll_s)
    if verdict.state == "ready":
        url = ((isvc or {}).get("status") or {}).get("url", "")
        logger.info("InferenceService %s/%s is ready at %s", spec.namespace, spec.isvc_name, url)
        return DeployResult(spec.isvc_name, spec.namespace, spec.model_uri, url)
    plan = rollback_plan(isvc or applied, spec.mode, previous)
    if plan.patch is not None:
        apply_inference_service(api_client, plan.patch)
    logger.error("InferenceService %s/%s failed; rollback: %s", spec.namespace, spec.isvc_name, plan.reason)
    raise DeployError(f"InferenceService {spec.namespace}/{spec.isvc_name} ({spec.model_uri}) failed: "
                      f"{verdict.message} [rollback: {plan.reason}]")


def resolve_version(model: str, alias: str) -> str:
    """The registry version ``model@alias`` points to (current MLflow tracking URI), refused when it is
    for another task or input signature than the model's champion (a server of ``model`` would get
    inputs it does not take).

    Raises:
        RegistryError: no such alias. TaskMismatch: the version is for another task or signature.
    """
    version = alias_version(model, alias)
    if version is None:
        raise RegistryError(f"model {model!r} has no alias {alias!r} in the registry")
    check_same_task(model, version, "deploy")
    return version
