"""The Kubernetes API as Pillars uses it: one client setup and server-side apply.

Shared by the deployer (:mod:`pillars.components.deploy.inference_service`, InferenceServices), the TrainJob
launcher (:mod:`pillars.components.training.trainjob`) and the data step's SparkApplication
(:mod:`pillars.components.data.spark_application`). The ``kubernetes`` package loads on first use.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pillars.components.errors import ConfigError

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

FIELD_MANAGER = "pillars"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def current_namespace(default: str = "default") -> str:
    """The pod's namespace (from its service account), else ``default``."""
    path = SERVICE_ACCOUNT_NAMESPACE
    return path.read_text().strip() if path.is_file() else default


def api_client() -> ApiClient:
    """An API client from the pod's service account, else the local kubeconfig.

    Raises:
        ConfigError: neither is available.
    """
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as e:
            raise ConfigError(f"no Kubernetes credentials (in-cluster or kubeconfig): {e}") from e
    return client.ApiClient()


def custom_object_path(group: str, version: str, namespace: str, plural: str, name: str | None = None) -> str:
    """The API path of a namespaced custom object (or of its collection when ``name`` is None)."""
    base = f"/apis/{group}/{version}/namespaces/{namespace}/{plural}"
    return f"{base}/{name}" if name else base


def server_side_apply(client: ApiClient, path: str, obj: dict[str, Any], force: bool = True) -> dict[str, Any]:
    """Server-side apply ``obj`` at ``path`` as field manager ``pillars`` (idempotent: the same object
    twice changes nothing). Raises the client's ``ApiException``; :func:`api_message` reads it."""
    query = [("fieldManager", FIELD_MANAGER)] + ([("force", "true")] if force else [])
    data, _, _ = client.call_api(
        path, "PATCH", query_params=query,
        header_params={"Content-Type": "application/apply-patch+yaml", "Accept": "application/json"},
        body=obj, response_type="object", auth_settings=["BearerToken"], _return_http_data_only=False)
    return data


def merge_patch(client: ApiClient, path: str, patch: dict[str, Any]) -> dict[str, Any]:
    """JSON merge patch (RFC 7386, ``kubectl patch --type merge``) of the object at ``path``: only the fields in
    ``patch`` change, and no field changes owner the way a partial server-side apply would (an apply that leaves
    out fields its manager applied before removes them). Raises the client's ``ApiException``."""
    data, _, _ = client.call_api(
        path, "PATCH", query_params=[("fieldManager", FIELD_MANAGER)],
        header_params={"Content-Type": "application/merge-patch+json", "Accept": "application/json"},
        body=patch, response_type="object", auth_settings=["BearerToken"], _return_http_data_only=False)
    return data


def get_object(client: ApiClient, path: str) -> dict[str, Any] | None:
    """The object at ``path``, or None when it does not exist (other errors raise ``ApiException``)."""
    from kubernetes.client.exceptions import ApiException

    try:
        data, _, _ = client.call_api(path, "GET", response_type="object", auth_settings=["BearerToken"],
                                     _return_http_data_only=False)
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    return data


def api_message(error: Any) -> str:
    """The API server's own message in an ``ApiException`` (else its reason)."""
    try:
        return json.loads(error.body).get("message", error.reason)
    except (TypeError, ValueError, AttributeError):
        return str(error.reason)
