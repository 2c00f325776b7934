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

``deploy_op`` is the thin KFP component; :func:`main` is ``pillars deploy``.
"""

# No `from __future__ import annotations`: KFP reads deploy_op's annotations as real types.
import argparse
import copy
import dataclasses
import json
import logging
import re
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kfp import dsl

from pillars.components.errors import ConfigError, PillarsError, RegistryError
from pillars.components.settings import Settings

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

logger = logging.getLogger("pillars.components.deploy")

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
FIELD_MANAGER = "pillars"
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


def parse_model_ref(ref: str) -> tuple[str, str]:
    """``NAME@ALIAS`` -> (NAME, ALIAS); raises ConfigError naming the bad reference."""
    name, sep, alias = ref.partition("@")
    if not sep or not name or not alias or "/" in name:
        raise ConfigError(f"model reference must be NAME@ALIAS (e.g. iris@champion), got {ref!r}")
    return name, alias


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

def kube_api_client() -> "ApiClient":
    """An API client from the pod's service account, else the local kubeconfig."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as e:
            raise ConfigError(f"no Kubernetes credentials (in-cluster or kubeconfig): {e}") from e
    return client.ApiClient()


def _path(namespace: str, name: str | None = None) -> str:
    base = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
    return f"{base}/{name}" if name else base


def get_inference_service(api_client: "ApiClient", namespace: str, name: str) -> dict[str, Any] | None:
    """The InferenceService, or None when it does not exist."""
    from kubernetes.client.exceptions import ApiException

    try:
        data, _, _ = api_client.call_api(_path(namespace, name), "GET", response_type="object",
                                         auth_settings=["BearerToken"], _return_http_data_only=False)
    except ApiException as e:
        if e.status == 404:
            return None
        raise DeployError(f"cannot read InferenceService {namespace}/{name}: {e.status} {e.reason}") from e
    return data


def apply_inference_service(api_client: "ApiClient", obj: dict[str, Any]) -> dict[str, Any]:
    """Server-side apply ``obj`` with field manager ``pillars`` (force: Pillars owns these fields)."""
    from kubernetes.client.exceptions import ApiException

    meta = obj["metadata"]
    try:
        data, _, _ = api_client.call_api(
            _path(meta["namespace"], meta["name"]), "PATCH",
            query_params=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            header_params={"Content-Type": "application/apply-patch+yaml", "Accept": "application/json"},
            body=obj, response_type="object", auth_settings=["BearerToken"], _return_http_data_only=False)
    except ApiException as e:
        raise DeployError(f"server-side apply of InferenceService {meta['namespace']}/{meta['name']} "
                          f"failed: {e.status} {_api_message(e)}") from e
    return data


def _api_message(error) -> str:
    try:
        return json.loads(error.body).get("message", error.reason)
    except (TypeError, ValueError, AttributeError):
        return str(error.reason)


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


def deploy(spec: DeploySpec, api_client: "ApiClient | None" = None, timeout_s: float = 600.0,
           poll_s: float = 5.0) -> DeployResult:
    """Apply the InferenceService for ``spec``, wait for Ready, and roll back on failure or timeout.

    Raises:
        ConfigError: the InferenceService of that name serves another registered model (nothing applied).
        DeployError: the rollout failed; the message is the InferenceService's own condition message
            and says what was rolled back.
    """
    api_client = api_client or kube_api_client()
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
    """The registry version ``model@alias`` points to (current MLflow tracking URI)."""
    from pillars.components.registry import alias_version

    version = alias_version(model, alias)
    if version is None:
        raise RegistryError(f"model {model!r} has no alias {alias!r} in the registry")
    return version


def _registry_reachable(timeout_s: float = 2.0) -> bool:
    """Whether the MLflow tracking URI answers (non-HTTP stores are local and always reachable)."""
    import httpx
    import mlflow

    uri = mlflow.get_tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return True
    try:
        return httpx.get(f"{uri.rstrip('/')}/health", timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


# --- KFP component ---------------------------------------------------------------------------

@dsl.component(base_image=Settings().image, install_kfp_package=False)
def deploy_op(
    model_name: str,
    alias: str,
    namespace: str,
    version: str,
    tracking_uri: str,
    gpu: int = 0,
    canary_percent: int = -1,
    mode: str = "Knative",
    kserve_version: str = "0.15",
    timeout_s: float = 600.0,
) -> str:
    """Deploy ``model_name`` (version ``version``, or the alias when empty) as an InferenceService.

    Args:
        canary_percent: share of traffic for the new revision; -1 sends it all (no canary).
        tracking_uri: the in-cluster MLflow URL the model server downloads from.

    Returns:
        The InferenceService URL.

    Raises:
        DeployError: not ready in time or failed; traffic was rolled back.
    """
    from pillars.components.deploy import DeploySpec, deploy

    spec = DeploySpec(model=model_name, alias=alias, namespace=namespace, version=version or None,
                      gpu=gpu, canary_percent=None if canary_percent < 0 else canary_percent, mode=mode,
                      kserve_version=kserve_version, tracking_uri=tracking_uri)
    return deploy(spec, timeout_s=timeout_s).url


# --- CLI ---------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pillars deploy",
        description="Deploy a registered model version as a KServe InferenceService (server-side apply), "
                    "wait for Ready, roll back on failure.")
    parser.add_argument("model", metavar="NAME@ALIAS", help="registered model and alias, e.g. iris@champion")
    parser.add_argument("--namespace", "-n", required=True)
    parser.add_argument("--gpu", nargs="?", type=int, const=1, default=0, help="GPUs per replica (flag alone: 1)")
    parser.add_argument("--canary", type=int, metavar="PERCENT", help="traffic share for the new revision")
    parser.add_argument("--mode", choices=MODES, default="Knative", help="KServe deployment mode")
    parser.add_argument("--kserve-version", default="0.15", help="decides the mode annotation's spelling")
    parser.add_argument("--name", default="", help="InferenceService name (default: from the model name)")
    parser.add_argument("--mlflow-uri", default=None,
                        help="MLflow URL the model server uses in the cluster (default: PILLARS_CLUSTER_MLFLOW_URI)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for Ready")
    parser.add_argument("--dry-run", action="store_true", help="print the object; touch no cluster")
    parser.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``pillars deploy NAME@ALIAS --namespace NS [--gpu] [--canary P] [--dry-run -o yaml]``.

    With ``--dry-run`` the alias is resolved to a version when the registry answers (within 2 s);
    otherwise the object serves the alias itself (``models:/NAME@ALIAS``) and a note says so on
    stderr. Without ``--dry-run`` the alias must resolve. Exit codes: 0 ok, 1 rollout failed,
    2 bad input.
    """
    import yaml

    args = build_parser().parse_args(argv)
    try:
        model, alias = parse_model_ref(args.model)
        spec = DeploySpec(model=model, alias=alias, namespace=args.namespace, gpu=args.gpu,
                          canary_percent=args.canary, mode=args.mode, kserve_version=args.kserve_version,
                          name=args.name, **({"tracking_uri": args.mlflow_uri} if args.mlflow_uri else {}))
        mode_annotation(spec.mode, spec.kserve_version)
        from pillars.components.tracking import configure_tracking

        configure_tracking(create=not args.dry_run)
        if args.dry_run and not _registry_reachable():
            print(f"note: MLflow registry unreachable; serving the alias models:/{model}@{alias}", file=sys.stderr)
        else:
            spec = dataclasses.replace(spec, version=resolve_version(model, alias))
        if args.dry_run:
            obj = build_inference_service(spec)
            print(yaml.safe_dump(obj, sort_keys=False) if args.output == "yaml" else json.dumps(obj, indent=2),
                  end="")
            return 0
        result = deploy(spec, timeout_s=args.timeout)
    except DeployError as e:
        print(f"pillars: error: {e}", file=sys.stderr)
        return 1
    except PillarsError as e:
        print(f"pillars: error: {e}", file=sys.stderr)
        return 2
    print(f"{result.namespace}/{result.name} ready at {result.url} ({result.model_uri})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
