"""Security and operability rules that hold for every pod the chart and the manifests create."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import kubernetes_validate

from tests.cluster.conftest import CHART, VALUE_SETS, validate

WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}
TALKS_TO_API_SERVER: set[str] = set()  # no pod of ours needs its token (pipeline runs bring their own)


def pods(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any], list[dict[str, Any]]]]:
    """(name, pod-level spec, containers) of every pod the objects create, InferenceServices and
    ServingRuntimes included."""
    for doc in docs:
        kind, name = doc["kind"], f"{doc['kind']}/{doc['metadata']['name']}"
        if kind in WORKLOADS:
            spec = doc["spec"]["template"]["spec"]
            yield name, spec, spec["containers"] + spec.get("initContainers", [])
        elif kind == "Pod":
            yield name, doc["spec"], doc["spec"]["containers"]
        elif kind == "InferenceService":
            predictor = doc["spec"]["predictor"]
            yield name, predictor, [predictor["model"]]
        elif kind == "ServingRuntime":
            yield name, {"securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                         "automountServiceAccountToken": False, "volumes": doc["spec"].get("volumes", [])}, \
                doc["spec"]["containers"]


@pytest.fixture(scope="module", params=[None, *VALUE_SETS])
def docs(request, render) -> list[dict[str, Any]]:
    return render(*([request.param] if request.param else []))


def test_every_pod_runs_as_non_root_with_runtime_default_seccomp(docs) -> None:
    for name, spec, containers in pods(docs):
        pod_context = spec.get("securityContext", {})
        for container in containers:
            context = container.get("securityContext", {})
            assert context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is True, name
            seccomp = context.get("seccompProfile", pod_context.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", name


def test_every_container_has_a_read_only_root_no_capabilities_and_no_escalation(docs) -> None:
    for name, spec, containers in pods(docs):
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in containers:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            assert context.get("allowPrivilegeEscalation") is False, name
            assert "add" not in context["capabilities"], name
            for mount in container.get("volumeMounts", []):
                if mount["mountPath"] == "/tmp":  # scratch space is an emptyDir
                    assert "emptyDir" in volumes[mount["name"]], name


def test_no_pod_mounts_a_service_account_token_unless_it_talks_to_the_api_server(docs) -> None:
    for name, spec, _ in pods(docs):
        if name not in TALKS_TO_API_SERVER:
            assert spec.get("automountServiceAccountToken") is False, name
    for account in (d for d in docs if d["kind"] == "ServiceAccount"):
        expected = account["metadata"]["name"].endswith("-pipeline-runner")
        assert account.get("automountServiceAccountToken") is expected, account["metadata"]["name"]


def test_every_container_requests_resources(docs) -> None:
    for name, _, containers in pods(docs):
        for container in containers:
            requests = container.get("resources", {}).get("requests", {})
            assert {"cpu", "memory"} <= requests.keys(), name
            assert "memory" in container["resources"].get("limits", {}), name


def test_a_disruption_budget_covers_every_workload_with_more_than_one_replica(docs) -> None:
    budgets = [d["spec"]["selector"]["matchLabels"] for d in docs if d["kind"] == "PodDisruptionBudget"]
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet") and doc["spec"].get("replicas", 1) > 1:
            labels = doc["spec"]["template"]["metadata"]["labels"]
            assert any(labels.items() >= b.items() for b in budgets), doc["metadata"]["name"]
        if doc["kind"] == "InferenceService" and doc["spec"]["predictor"].get("minReplicas", 1) > 1:
            name = doc["metadata"]["name"]
            assert {"serving.kserve.io/inferenceservice": name} in budgets, name


def test_network_policies_deny_by_default_and_select_every_pod(docs) -> None:
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    deny = next(p for p in policies if p["metadata"]["name"].endswith("-default-deny"))
    assert deny["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in deny["spec"]
    assert all(rule["ports"][0]["port"] == 53 for rule in deny["spec"]["egress"])
    for name, spec, _ in pods(docs):
        if name.startswith("ServingRuntime/"):
            continue
        labels = spec["labels"] if name.startswith("InferenceService/") else None
        if labels is None:
            doc = next(d for d in docs if f"{d['kind']}/{d['metadata']['name']}" == name)
            labels = (doc["spec"]["template"]["metadata"] if "template" in doc["spec"] else doc["metadata"])["labels"]
        assert labels.items() >= deny["spec"]["podSelector"]["matchLabels"].items(), name
        own = [p for p in policies
               if p is not deny and labels.items() >= p["spec"]["podSelector"]["matchLabels"].items()]
        assert own, f"{name} has no NetworkPolicy of its own"


def test_only_mlflow_reaches_postgresql(render) -> None:
    policy = next(d for d in render() if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "pillars-postgresql")
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": {
        "app.kubernetes.io/name": "pillars", "app.kubernetes.io/instance": "pillars",
        "app.kubernetes.io/component": "mlflow"}}}]


GENERATED_SECRETS = {"pillars-postgresql", "pillars-mlflow-auth", "pillars-serving-token"}
SECRETISH = re.compile(r"(password|secret|token|access[_-]?key|dsn)", re.I)


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, f"{path}[{index}]")
    else:
        yield path, node


def test_values_hold_no_secret_only_names_of_secrets() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for path, value in _walk(values):
        leaf = path.rsplit(".", 1)[-1]
        if SECRETISH.search(leaf) and isinstance(value, str) and value:
            # Allowed: the name of a Secret, or the key inside one.
            assert leaf.endswith(("Secret", "Key")) or leaf in ("tlsSecret",), f"{path} looks like a secret value"


def test_no_secret_values_in_config_maps_or_environment(docs) -> None:
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            for key, value in doc.get("data", {}).items():
                assert not re.search(r"(password|secret_access_key)\s*[=:]\s*\S", value, re.I), key
        if doc["kind"] == "Secret":
            # The chart writes only generated credentials: the PostgreSQL password, the MLflow
            # admin and the model servers' token (random, alphanumeric), never a value from values.
            assert doc["metadata"]["name"] in GENERATED_SECRETS, doc["metadata"]["name"]
            assert doc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
            for key, value in doc["data"].items():
                if key != "username":
                    assert len(base64.b64decode(value)) >= 32 and base64.b64decode(value).isalnum(), key
    for name, _, containers in pods(docs):
        for container in containers:
            for env in container.get("env", []):
                if SECRETISH.search(env["name"]) and "value" in env and not env["name"].endswith("_SECRET_NAME"):
                    assert "$(" in env["value"] or not env["value"], f"{name}: {env['name']} has a literal secret"


def test_the_validators_are_strict(crd_schemas: Path, render) -> None:
    isvc = next(d for d in render("gpu.yaml") if d["kind"] == "InferenceService")
    isvc["spec"]["predictor"]["model"]["gpus"] = 1
    with pytest.raises(AssertionError, match="gpus"):
        validate(isvc, crd_schemas)
    deployment = next(d for d in render() if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRoot"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment, crd_schemas)
