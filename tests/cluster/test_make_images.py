"""``make images`` without a container engine: a recorder stands in for docker/podman and shows the exact
builds (Dockerfile, tag, context) a cluster user gets; the Dockerfiles themselves are checked in test_images."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from pillars.components.settings import package_version
from tests.cluster.conftest import ROOT

MAKE = shutil.which("make") or "/usr/bin/make"


def _make(*args: str, path: str) -> subprocess.CompletedProcess:
    """``make images`` with this venv (its install stamp taken as up to date: nothing is installed)."""
    venv = sys.prefix
    return subprocess.run([MAKE, "--no-print-directory", "-C", str(ROOT), "-o", f"{venv}/.pillars-installed",
                           "images", f"VENV={venv}", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PATH": path})


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
