"""``make images`` without a container engine: a recorder stands in for docker/podman and shows the exact
builds (Dockerfile, tag, context) a cluster user gets; the Dockerfiles themselves are checked in test_images."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pillars.components.settings import package_version
from tests.cluster.conftest import ROOT

MAKE = shutil.which("make") or "/usr/bin/make"
DOCKERFILES = [ROOT / folder / name for folder in ("components", "serving")
               for name in ("Dockerfile", "Dockerfile.cuda")]


def _make(*args: str, path: str) -> subprocess.CompletedProcess:
    """``make images`` with this venv (its install stamp taken as up to date: nothing is installed)."""
    venv = sys.prefix
    return subprocess.run([MAKE, "--no-print-directory", "-C", str(ROOT), "-o", f"{venv}/.pillars-installed",
                           "images", f"VENV={venv}", *args], capture_output=True, text=True, timeout=120,
                          env={**_without_image_settings(), "PATH": path})


def _without_image_settings() -> dict[str, str]:
    """This environment without the variables ``make images`` reads (a developer may export them)."""
    return {k: v for k, v in os.environ.items() if k not in ("DOCKER", "IMAGE_REPOSITORY", "IMAGE_TAG")}


def test_make_images_builds_cpu_and_cuda_components_and_serving_images_tagged_with_the_version(tmp_path):
    record = tmp_path / "calls.jsonl"
    recorder = tmp_path / "docker"
    recorder.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                        f"with open({str(record)!r}, 'a') as f:\n"
                        "    f.write(json.dumps({'cwd': os.getcwd(), 'argv': sys.argv[1:]}) + '\\n')\n")
    recorder.chmod(0o755)
    repo = "registry.example.com/ml/pillars"
    result = _make(f"DOCKER={recorder}", f"IMAGE_REPOSITORY={repo}", path=os.environ["PATH"])
    assert result.returncode == 0, result.stderr
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    version = package_version()
    assert version != "0.0.0"
    assert [c["argv"] for c in calls] == [
        ["build", "-f", "components/Dockerfile", "-t", f"{repo}:{version}", "."],
        ["build", "-f", "components/Dockerfile.cuda", "-t", f"{repo}:{version}-cuda", "."],
        ["build", "-f", "serving/Dockerfile", "-t", f"{repo}-serving:{version}", "."],
        ["build", "-f", "serving/Dockerfile.cuda", "-t", f"{repo}-serving:{version}-cuda", "."],
    ]
    assert all(Path(c["cwd"]) == ROOT for c in calls)  # the context is the repository root
    for call in calls:
        assert (ROOT / call["argv"][2]).is_file()


def test_make_images_without_docker_or_podman_stops_with_one_line(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    result = _make(path=str(empty))  # neither docker nor podman on PATH
    assert result.returncode != 0
    assert result.stderr.splitlines()[0] == ("make images: neither docker nor podman is installed; "
                                             "install one, or point DOCKER=/path/to/it")


@pytest.mark.slow
def test_what_the_dockerfiles_copy_builds_the_whole_package(tmp_path):
    """The images run ``pip install .`` on what their COPY lines bring in (and their .dockerignore lets
    through): that must be the complete package-dir layout, every module of the four folders."""
    sources: set[str] = set()
    for dockerfile in DOCKERFILES:
        copies = [line.split()[1:-1] for line in dockerfile.read_text().splitlines()
                  if line.startswith("COPY ") and "--from" not in line]
        allowed = (dockerfile.parent / f"{dockerfile.name}.dockerignore").read_text().split()
        for item in (i for items in copies for i in items):
            assert f"!{item}" in allowed or f"!{item}/" in allowed, f"{dockerfile}: {item} is ignored"
            sources.add(item)
    context = tmp_path / "context"
    for item in sources:
        src = ROOT / item
        if src.is_dir():
            shutil.copytree(src, context / item, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            context.mkdir(exist_ok=True)
            shutil.copy(src, context / item)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(context)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    built = {n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".py")}
    expected = {f"pillars/{p.relative_to(ROOT)}" for folder in ("components", "pipelines", "serving", "console", "tasks")
                for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts}
    assert built == expected
