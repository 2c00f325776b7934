"""Shared fixtures: a real MLflow tracking server, and a per-test embedded store."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from tests.processes import ServerProcess, free_port


def require_tool(name: str) -> str:
    """Path of an executable the test needs (the venv's own first, as `make` installs helm and kubectl
    there): skipped locally when absent, failed when ``CI`` is set."""
    venv_bin = Path(sys.executable).parent / name
    path = str(venv_bin) if venv_bin.exists() else shutil.which(name)
    if path is None:
        message = f"{name} is not installed (make test installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``mlflow server`` on a free loopback port (SQLite backend, proxied artifacts); yields its URL."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = ServerProcess(
        [require_tool("mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--workers", "1"],
        log_path=root / "server.log",
    )
    try:
        server.wait_http(f"{url}/health", timeout=120)
        yield url
    finally:
        server.stop()


@pytest.fixture
def tracking_uri(mlflow_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Points MLflow (in this process and in subprocesses) at the real server for one test."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    yield mlflow_server
    mlflow.set_tracking_uri(None)


@pytest.fixture
def local_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The embedded default in a temporary ``PILLARS_HOME`` (SQLite store, local artifacts)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("PILLARS_HOME", str(tmp_path / ".pillars"))
    from components.tracking import configure_tracking

    uri = configure_tracking()
    yield uri
    mlflow.set_tracking_uri(None)
