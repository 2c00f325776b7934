"""Serving fixtures: a toy model registered in a real MLflow server, and ``python -m pillars.serving`` processes.

One server per configuration, shared by the whole session: the registry-backed classifier
(``served``) and a folder-backed regressor with auth on (``served_with_auth``).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pillars.components.model.mlflow_model import log_pillars_model
from tests.processes import ServerProcess, free_port
from tests.serving.toy import make_classifier, make_regressor

MODEL_NAME = "toy"
TOKEN = "s3cr3t-token-for-tests"
MAX_BODY_BYTES = 1_000_000


@dataclass
class Served:
    """A running model server: where to reach it and what it serves."""

    http: str
    grpc: str
    model: str
    process: ServerProcess
    token: str | None = None
    temp_dir: Path | None = None
    """The server's temp folder (``TMPDIR``), when the fixture gave it one."""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


def start_server(args: list[str], log_path: Path, env: dict[str, str] | None = None,
                 model: str = MODEL_NAME, token: str | None = None) -> Served:
    """``python -m pillars.serving ARGS`` on free loopback ports, returned once ``/v2/health/ready`` answers."""
    http_port, grpc_port = free_port(), free_port()
    process = ServerProcess(
        [sys.executable, "-m", "pillars.serving", *args, "--http_port", str(http_port), "--grpc_port", str(grpc_port)],
        log_path=log_path, env=env, cwd=Path(__file__).resolve().parents[2])
    process.wait_http(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=120)
    return Served(f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", model, process, token)


@pytest.fixture(scope="session")
def registered_model(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The toy classifier logged and registered in the real MLflow server as ``toy``, alias ``champion``."""
    model_dir = make_classifier(tmp_path_factory.mktemp("toy") / "model")
    mlflow.set_tracking_uri(mlflow_server)
    try:
        mlflow.set_experiment("serving-tests")
        with mlflow.start_run():
            info = log_pillars_model(model_dir)
        version = mlflow.register_model(info.model_uri, MODEL_NAME).version
        MlflowClient().set_registered_model_alias(MODEL_NAME, "champion", version)
    finally:
        mlflow.set_tracking_uri(None)
    return f"models:/{MODEL_NAME}@champion"


@pytest.fixture(scope="session")
def served(registered_model: str, mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The registered classifier served from the registry (no auth, 1 MB body limit)."""
    root = tmp_path_factory.mktemp("served")
    temp = root / "tmp"  # its own temp folder, holding a download left by a server killed before (a dead PID)
    finished = subprocess.Popen(["true"])
    finished.wait()
    stale = temp / f"pillars-model-{finished.pid}-x1y2"
    (stale / "model").mkdir(parents=True)
    not_ours = temp / "pillars-model-notes"
    not_ours.mkdir()
    server = start_server(["--model_uri", registered_model, "--max_body_bytes", str(MAX_BODY_BYTES),
                           "--max_batch_size", "64", "--max_latency_ms", "5"],
                          root / "server.log", env={"MLFLOW_TRACKING_URI": mlflow_server, "TMPDIR": str(temp)})
    server.temp_dir = temp
    yield server
    server.process.stop()
    left = sorted(p.name for p in temp.iterdir() if p.name.startswith("pillars-model-"))
    assert left == [not_ours.name], f"the stopped server left {left} in its temp folder"


@pytest.fixture(scope="session")
def served_with_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A regressor served from a plain folder (KServe's ``--model_dir``) with a bearer token from a file,
    logging at debug level."""
    root = tmp_path_factory.mktemp("served-auth")
    model_dir = make_regressor(root / "model")
    token_file = root / "token"
    token_file.write_text(TOKEN + "\n")
    server = start_server(["--model_dir", str(model_dir), "--model_name", "reg", "--auth-token-file",
                           str(token_file), "--log-level", "DEBUG"], root / "server.log", model="reg", token=TOKEN)
    yield server
    server.process.stop()
