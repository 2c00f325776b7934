"""The kustomize base and overlays: generated from the chart, valid, secure, one image tag."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pillars.components.settings import package_version
from tests.cluster.conftest import ROOT, load_docs, run, validate
from tests.cluster.test_policy import pods

OVERLAYS = ["cpu", "gpu"]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request, kubectl: str) -> tuple[str, list[dict]]:
    result = run([kubectl, "kustomize", ROOT / "manifests" / "overlays" / request.param])
    return request.param, load_docs(result.stdout)


def test_committed_base_equals_a_fresh_render_of_the_chart(helm: str) -> None:
    result = run([sys.executable, ROOT / "manifests" / "render.py", "--check", "--helm", helm], check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_overlay_object_validates(overlay, crd_schemas: Path) -> None:
    _, docs = overlay
    for doc in docs:
        validate(doc, crd_schemas)


def test_overlays_build_the_whole_platform_in_its_namespace(overlay) -> None:
    name, docs = overlay
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "Deployment", "StatefulSet", "Service", "InferenceService",
            "NetworkPolicy", "Role", "RoleBinding", "PrometheusRule", "ServiceMonitor", "PodMonitor",
            "ServingRuntime"} <= kinds
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "pillars", doc["metadata"]["name"]
        assert "helm.sh/chart" not in doc["metadata"].get("labels", {})
    assert not [d for d in docs if d["kind"] == "Secret"], "nothing secret is committed"
    isvc = next(d for d in docs if d["kind"] == "InferenceService")
    limits = isvc["spec"]["predictor"]["model"]["resources"]["limits"]
    assert ("nvidia.com/gpu" in limits) == (name == "gpu")


def test_every_image_is_tagged_with_the_package_version(overlay) -> None:
    _, docs = overlay
    images = [c["image"] for _, _, containers in pods(docs) for c in containers if "image" in c]
    ours = [i for i in images if i.startswith("ghcr.io/pillars-mlops/")]
    assert ours
    for image in ours:
        assert image.rsplit(":", 1)[1] in (package_version(), f"{package_version()}-cuda"), image
    kustomization = (ROOT / "manifests" / "overlays" / overlay[0] / "kustomization.yaml").read_text()
    assert kustomization.count(f'newTag: "{package_version()}"') == 2


def test_overlay_pods_follow_the_security_rules(overlay) -> None:
    _, docs = overlay
    for name, spec, containers in pods(docs):
        assert spec.get("automountServiceAccountToken") is False, name
        for container in containers:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
            assert "cpu" in container["resources"]["requests"], name
