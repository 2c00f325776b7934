"""Rendering the chart and the manifests, and validating every object like a strict API server would."""

from __future__ import annotations

import copy
import functools
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, require_tool, validate  # noqa: F401 (validate: re-exported for the tests here)

CHART = ROOT / "helm" / "pillars"
VALUES = Path(__file__).parent / "values"
FIXTURES = Path(__file__).parent / "fixtures"

VALUE_SETS = sorted(p.name for p in VALUES.glob("*.yaml"))


@pytest.fixture(scope="session")
def helm() -> str:
    return require_tool("helm")


@pytest.fixture(scope="session")
def kubectl() -> str:
    return require_tool("kubectl")


def run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=check, timeout=120)


def load_docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


@pytest.fixture(scope="session")
def render(helm: str) -> Callable[..., list[dict[str, Any]]]:
    """``render("gpu.yaml", set=["a=b"])``: the chart's objects for those value files (rendered once, each
    call a deep copy: a test that edits an object never changes what another test reads)."""

    @functools.cache
    def _render(*values: str, set: tuple[str, ...] = ()) -> tuple[dict[str, Any], ...]:
        cmd = [helm, "template", "pillars", CHART, "--namespace", "pillars"]
        for name in values:
            cmd += ["--values", VALUES / name]
        for item in set:
            cmd += ["--set", item]
        return tuple(load_docs(run(cmd).stdout))

    return lambda *values, set=(): copy.deepcopy(list(_render(*values, set=tuple(set))))
