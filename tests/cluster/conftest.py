"""Rendering the chart and the manifests, and validating every object like a strict API server would."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.conftest import require_tool

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "pillars"
VALUES = Path(__file__).parent / "values"
FIXTURES = Path(__file__).parent / "fixtures"
KUBERNETES_VERSION = "1.33.0"
"""Schemas of the Kubernetes version the bundled kubectl (v1.33) speaks; kubernetes-validate ships them."""

VALUE_SETS = sorted(p.name for p in VALUES.glob("*.yaml"))


def schemas_dir() -> Path:
    """``PILLARS_K8S_SCHEMAS``, default ``../shared/k8s-schemas`` next to the repository."""
    return Path(os.environ.get("PILLARS_K8S_SCHEMAS", ROOT.parent / "shared" / "k8s-schemas")).resolve()


@pytest.fixture(scope="session")
def crd_schemas() -> Path:
    path = schemas_dir()
    if not (path / "serving.kserve.io").is_dir():
        message = f"CRD schemas not found at {path} (set PILLARS_K8S_SCHEMAS)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def pinned_tool(name: str) -> str:
    """The ``helm``/``kubectl`` scripts/install-k8s-tools.sh pins into the virtualenv, before any other
    on PATH (a cloud SDK's kubectl of another minor version would otherwise win)."""
    venv_bin = Path(sys.executable).parent / name
    return str(venv_bin) if venv_bin.exists() else require_tool(name)


@pytest.fixture(scope="session")
def helm() -> str:
    return pinned_tool("helm")


@pytest.fixture(scope="session")
def kubectl() -> str:
    return pinned_tool("kubectl")


def run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=check, timeout=120)


def load_docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


@pytest.fixture(scope="session")
def render(helm: str) -> Callable[..., list[dict[str, Any]]]:
    """``render("gpu.yaml", set=["a=b"])``: the chart's objects for those value files (cached)."""

    @functools.cache
    def _render(*values: str, set: tuple[str, ...] = ()) -> tuple[dict[str, Any], ...]:
        cmd = [helm, "template", "pillars", CHART, "--namespace", "pillars"]
        for name in values:
            cmd += ["--values", VALUES / name]
        for item in set:
            cmd += ["--set", item]
        return tuple(load_docs(run(cmd).stdout))

    return lambda *values, set=(): list(_render(*values, set=tuple(set)))


@functools.cache
def _crd_validator(path: Path) -> jsonschema.Draft7Validator:
    schema = json.loads(path.read_text())
    return jsonschema.Draft7Validator(schema)


def validate(doc: dict[str, Any], crd_schemas: Path) -> None:
    """Raise when ``doc`` is not a valid object: custom resources (a group with a folder of schemas)
    through their CRD schema, every other kind through kubernetes-validate (strict); unknown fields
    are rejected either way."""
    group, _, version = doc["apiVersion"].rpartition("/")
    if group and (crd_schemas / group).is_dir():
        path = crd_schemas / group / f"{doc['kind'].lower()}_{version}.json"
        assert path.exists(), f"no schema for {doc['apiVersion']} {doc['kind']} at {path}"
        errors = sorted(_crd_validator(path).iter_errors(doc), key=lambda e: list(e.path))
        assert not errors, f"{doc['kind']} {doc['metadata']['name']}: " + "; ".join(
            f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors[:5])
    else:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
