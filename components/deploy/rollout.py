"""Rolling out an InferenceService and rolling it back when it fails.

* :func:`apply_inference_service` — server-side apply with field manager ``pillars`` (idempotent:
  applying the same object twice changes nothing).
* :func:`assess` — reads an InferenceService's status: ``ready``, ``failed`` (with KServe's own
  condition message) or ``pending``.
* :func:`rollback_plan` — what to do after a failure or a timeout: in Knative mode turn the canary
  off (``canaryTrafficPercent: 0`` sends all traffic to the last rolled-out revision); in Standard
  mode re-apply the previous spec; on a first deployment there is nothing to go back to.
* :func:`deploy` — the whole step: resolve, apply, wait, roll back and raise :class:`DeployError`.
* :func:`canary_traffic_patch` / :func:`set_canary_traffic` — the end of a canary that
  ``pillars models decide-canary`` judged (:mod:`pillars.components.deploy.canary`): ``canaryTrafficPercent``
  100 (promote: the canary revision takes all traffic) or 0 (roll back: all traffic to the last rolled-out
  revision), as a JSON merge patch (``kubectl patch --type merge``), which changes that one field only.

The object itself is built by :mod:`pillars.components.deploy.inference_service`. The KFP component is
``deploy_op`` in :mod:`pillars.components.ops`; the CLI is ``pillars deploy`` (:mod:`pillars.pipelines.cli.parser`);
the Kubernetes client is :mod:`pillars.components.deploy.kube`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import shlex
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pillars.components.deploy import kube
from pillars.components.deploy.inference_service import (GROUP, PLURAL, VERSION, DeployError, DeploySpec,
                                                         build_inference_service, check_overwrite)
from pillars.components.errors import ConfigError, RegistryError
from pillars.components.registry import alias_version, check_same_task

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

logger = logging.getLogger(__name__)


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
    ``patch``: for canary-off the merge patch of ``canaryTrafficPercent`` (:func:`canary_traffic_patch`), for
    reapply-previous the object to server-side apply, None for ``none``. ``revision``: where traffic goes."""

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
        return RollbackPlan("canary-off", canary_traffic_patch(name, namespace, 0), revision,
                            f"canaryTrafficPercent 0: all traffic back to revision {revision}")
    if previous is None:
        return RollbackPlan("none", None, None, "first deployment: no earlier spec to restore")
    restored = {"apiVersion": previous.get("apiVersion", f"{GROUP}/{VERSION}"), "kind": "InferenceService",
                "metadata": {"name": name, "namespace": namespace,
                             "labels": previous.get("metadata", {}).get("labels", {}),
                             "annotations": previous.get("metadata", {}).get("annotations", {})},
                "spec": copy.deepcopy(previous.get("spec", {}))}
    return RollbackPlan("reapply-previous", restored, None, "previous spec re-applied (Deployment rolls back)")


CANARY_PERCENT = {"promote": 100, "rollback": 0}
"""``canaryTrafficPercent`` that ends a canary, by the decision's action."""


def canary_traffic_patch(name: str, namespace: str, percent: int) -> dict[str, Any]:
    """The merge patch that sets ``canaryTrafficPercent`` of InferenceService ``namespace/name`` (with its
    ``apiVersion``, ``kind`` and ``metadata`` it is also a valid InferenceService on its own: the tests check it
    against KServe's schema, alone and merged into a served object).

    Raises:
        ConfigError: ``percent`` is not 0..100.
    """
    if not isinstance(percent, int) or not 0 <= percent <= 100:
        raise ConfigError(f"canaryTrafficPercent must be an integer 0..100, got {percent!r}")
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InferenceService",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"predictor": {"canaryTrafficPercent": percent}}}


def kubectl_patch_command(patch: dict[str, Any]) -> str:
    """The ``kubectl patch`` line that applies ``patch`` (what ``decide-canary`` prints without ``--apply``)."""
    meta = patch["metadata"]
    body = json.dumps({"spec": patch["spec"]}, separators=(",", ":"))
    return (f"kubectl patch inferenceservice {shlex.quote(meta['name'])} -n {shlex.quote(meta['namespace'])} "
            f"--type merge -p {shlex.quote(body)}")


def set_canary_traffic(api_client: ApiClient, patch: dict[str, Any]) -> dict[str, Any]:
    """Merge-patch ``canaryTrafficPercent`` (``patch`` from :func:`canary_traffic_patch`); returns the object.

    Raises:
        DeployError: the API server refused it (its message).
    """
    from kubernetes.client.exceptions import ApiException

    meta = patch["metadata"]
    try:
        return kube.merge_patch(api_client, _path(meta["namespace"], meta["name"]), {"spec": patch["spec"]})
    except ApiException as e:
        raise DeployError(f"patching canaryTrafficPercent of InferenceService {meta['namespace']}/{meta['name']} "
                          f"failed: {e.status} {kube.api_message(e)}") from e


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
    if plan.action == "canary-off":  # a merge patch: a partial apply by our field manager would drop the model
        set_canary_traffic(api_client, plan.patch)
    elif plan.patch is not None:
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
