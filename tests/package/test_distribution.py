"""The distribution installs one import namespace, ``pillars``, and nothing imports the bare folder names."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pillars.components.settings import DISTRIBUTION, package_version

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("components", "console", "pipelines", "serving")
SOURCES = [p for d in (*FOLDERS, "tests", "benchmarks", "manifests") for p in (ROOT / d).rglob("*.py")]


def _bare_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        found += [f"{path.relative_to(ROOT)}:{node.lineno}: {n}" for n in names if n.split(".")[0] in FOLDERS]
    return found


def test_no_module_imports_the_bare_folder_names() -> None:
    assert len(SOURCES) > 50
    offenders = [hit for path in SOURCES for hit in _bare_imports(path)]
    assert offenders == []


def test_no_command_runs_a_bare_module() -> None:
    texts = {p: p.read_text() for p in [*SOURCES, *ROOT.glob("*/Dockerfile*"), *(ROOT / "helm").rglob("*.yaml")]}
    offenders = [str(p.relative_to(ROOT)) for p, text in texts.items()
                 if any(f'"-m", "{m}' in text or f"-m {m}" in text for m in FOLDERS)]
    assert offenders == []


@pytest.mark.slow
def test_the_wheel_holds_only_the_pillars_namespace(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("*.whl")
    assert wheel.name.startswith(f"{DISTRIBUTION.replace('-', '_')}-{package_version()}-")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"pillars"}
    assert "pillars/__init__.py" not in names  # a PEP 420 namespace: other distributions may add to it
    for folder in FOLDERS:
        assert f"pillars/{folder}/__init__.py" in names
    assert "pillars/components/model/pyfunc_model.py" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "pillars = pillars.pipelines.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_a_logged_model_requires_this_distribution_at_this_version(local_store, tmp_path: Path) -> None:
    import mlflow

    from pillars.components.model.mlflow_model import log_pillars_model
    from pillars.components.registry.tracking import ensure_experiment
    from tests.models import save_classifier

    model_dir = save_classifier(tmp_path / "model", ["a", "b"], hidden_sizes=[4])
    with mlflow.start_run(experiment_id=ensure_experiment("toy")):
        info = log_pillars_model(model_dir)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=info.model_uri, dst_path=str(tmp_path / "dl")))
    requirements = (local / "requirements.txt").read_text()
    assert f"{DISTRIBUTION}=={package_version()}" in requirements.split()
    assert "pillars==" not in requirements  # the unrelated asyncio project on PyPI
