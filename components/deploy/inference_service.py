"""The KServe InferenceService of a registered model version: its name, its object, and whether it may
replace what is there (the rollout itself is :mod:`pillars.components.deploy.rollout`).

Plain functions over plain dicts (the InferenceService as the API server sees it):

* :func:`build_inference_service` — the object for ``models:/NAME/VERSION``, the same shape the
  Helm chart renders for ``values.models`` (runtime ``pillars-registry``, ports per mode, the
  security context every Pillars pod has, the release's labels, the registered model's name in
  the annotation ``pillars.io/registered-model`` that the runtime passes on as the model name).
* :func:`check_overwrite` — refuses to replace an InferenceService that serves another registered
  model (``fraud_v2`` and ``fraud-v2`` map to the same name).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from pillars.components.deploy import kube
from pillars.components.errors import ConfigError, PillarsError
from pillars.components.settings import Settings

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
                 *([f"--reload_interval_s={spec.reload_interval_s}"] if not spec.version else []),
                 f"--workers={workers_for_cpu(resources['requests']['cpu'], spec.gpu)}"],
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


def workers_for_cpu(cpu: str, gpu: int = 0) -> int:
    """Model-server worker processes for a CPU request (``"500m"``, ``"2"``): one per whole CPU, at least 1;
    1 with a GPU (one process batches for the device). The chart's ``pillars.workersForCpu`` rule."""
    millis = int(cpu[:-1]) if cpu.endswith("m") else int(float(cpu) * 1000)
    return 1 if gpu else max(1, millis // 1000)


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
