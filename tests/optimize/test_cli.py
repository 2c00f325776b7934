"""``pillars optimize models:/NAME@champion`` as the README shows it, through kfp.local against a real
``mlflow server``: for a built-in model (breast_cancer) and a user's task (``churn_example``, installed
from examples/custom-task). Each variant is registered, refused or skipped in one table; ``edge`` moves;
the champion stays; ``pillars serve models:/NAME@edge`` answers a V2 infer over HTTP."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import mlflow
import pytest

from pillars.components import registry
from pillars.components.task.examples import take
from pillars.components.model.predictor import save_model
from pillars.components.registry.register import register_model
from pillars.components.optimize.register import EDGE
from pillars.components.task import load_task, task_reference
from tests.processes import ServerProcess, free_port
from tests.tasks.conftest import train_in_process

pytestmark = pytest.mark.slow

MODELS = {"opt-cancer": ("breast_cancer", {}), "opt-churn": ("churn_example.tasks:churn", {"customers": 1500})}


def _env(tracking_uri: str, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PILLARS_", "MLFLOW_"))}
    return {**env, "MLFLOW_TRACKING_URI": tracking_uri, "PILLARS_HOME": str(home)}


@pytest.fixture(scope="module")
def champions(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Each task trained two epochs in-process and registered as the register step does (pyfunc, seed
    logged), alias champion: name -> its version."""
    versions = {}
    mlflow.set_tracking_uri(mlflow_server)
    try:
        mlflow.set_experiment("optimize-cli")
        for name, (reference, args) in MODELS.items():
            task = load_task(reference, args)
            trained = train_in_process(task, epochs=2, learning_rate=3e-3)
            folder = save_model(task, task_reference(reference),
                                trained.prep, trained.model, tmp_path_factory.mktemp(name) / "model")
            with mlflow.start_run() as run:
                mlflow.log_params({"seed": 0})
            version = register_model(folder, None, name, run.info.run_id, {"gate_approved": "true"},
                                     example_inputs=take(trained.inputs("test"), slice(0, 3)))
            registry.move_alias(name, registry.CHAMPION, version, "test champion")
            versions[name] = version
        yield versions
    finally:
        mlflow.set_tracking_uri(None)


def _optimize(name: str, variants: str, tracking_uri: str, folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pillars.pipelines.cli", "optimize", f"models:/{name}@champion",
                           "--variants", variants], capture_output=True, text=True, cwd=folder,
                          env=_env(tracking_uri, folder / ".pillars"), timeout=600)


def _table(stdout: str) -> dict[str, str]:
    """variant -> its outcome column in the printed table."""
    rows = [line.split() for line in stdout.splitlines()]
    return {row[0]: " ".join(row[1:3]) if row[1] == "registered" else row[1]
            for row in rows if len(row) > 1 and row[0] in ("onnx", "onnx-int8", "onnx-int8-static", "pruned")}


def test_pillars_optimize_registers_a_builtin_models_variants_and_moves_edge_only(champions, mlflow_server,
                                                                                  tmp_path, monkeypatch, capsys):
    """Through the CLI's main() in this process (the other test runs the console command)."""
    from pillars.pipelines.cli import main

    name = "opt-cancer"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("PILLARS_HOME", str(tmp_path / ".pillars"))
    monkeypatch.chdir(tmp_path)
    code = main(["optimize", f"models:/{name}@champion", "--variants", "onnx,onnx-int8,onnx-int8-static"])
    result = capsys.readouterr()
    assert code == 0, result.err[-3000:]
    assert "checkpoint_root" not in result.err
    table = _table(result.out)
    assert set(table) == {"onnx", "onnx-int8", "onnx-int8-static"}, result.out
    assert table["onnx"].startswith("registered v") and table["onnx-int8-static"] == "skipped", result.out
    assert re.search(r"^onnx-int8-static +skipped .*no convolution", result.out, re.M)
    registered = {v for v in table.values() if v.startswith("registered")}
    versions = registry.list_versions(name)
    assert len(versions) == 1 + len(registered)
    assert registry.alias_version(name, registry.CHAMPION) == champions[name]  # the champion never moves
    edge = registry.alias_version(name, EDGE)
    assert f"edge: v{edge} " in result.out and f"registered v{edge}" in table.values()


def test_pillars_optimize_makes_a_user_tasks_variants_and_serve_answers_at_edge(champions, mlflow_server, tmp_path):
    name = "opt-churn"
    result = _optimize(name, "onnx,onnx-int8,pruned", mlflow_server, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    table = _table(result.stdout)
    assert set(table) == {"onnx", "onnx-int8", "pruned"}, result.stdout
    assert all(v.startswith("registered v") or v in ("refused", "skipped") for v in table.values()), table
    assert table["onnx"].startswith("registered v"), result.stdout  # fp32: the same decisions, to the row
    assert registry.alias_version(name, registry.CHAMPION) == champions[name]
    edge = registry.alias_version(name, EDGE)
    assert edge is not None and edge != champions[name]

    http_port, grpc_port = free_port(), free_port()
    server = ServerProcess([sys.executable, "-m", "pillars.pipelines.cli", "serve", f"models:/{name}@edge",
                            "--http-port", str(http_port), "--grpc-port", str(grpc_port)],
                           log_path=tmp_path / "serve.log", env=_env(mlflow_server, tmp_path / ".pillars"),
                           cwd=tmp_path, inherit_env=False)
    try:
        server.wait_http(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=180)
        request = {"inputs": [{"name": "plan", "datatype": "BYTES", "shape": [2], "data": ["basic", "pro"]},
                              {"name": "usage", "datatype": "FP32", "shape": [2, 4],
                               "data": [320, 9.5, 4, 3, 120, 2, 0, 60]}]}
        answer = httpx.post(f"http://127.0.0.1:{http_port}/v2/models/{name}/infer", json=request, timeout=30)
        assert answer.status_code == 200, answer.text
        outputs = {o["name"]: o for o in answer.json()["outputs"]}
        assert outputs["class_index"]["shape"] == [2] and set(outputs["label"]["data"]) <= {"stays", "churns"}
    finally:
        server.stop()
