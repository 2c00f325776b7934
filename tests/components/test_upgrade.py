"""Versions registered by Pillars 0.1 (pyfunc code ``from components.models import Predictor``, a
``pillars.v1`` config): the model server still serves them, and ``pillars models upgrade`` re-registers them,
translated into the task API's saved-model format, so MLflow's pyfunc loads them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import httpx
import mlflow
import numpy as np
import pytest

from pillars.components import registry
from pillars.components.model.mlflow_model import log_pillars_model
from pillars.components.registry.register import downloaded_version
from pillars.components.model.predictor import load_predictor
from pillars.components.registry.tracking import ensure_experiment
from pillars.components.model.upgrade import UPGRADED_FROM, is_legacy
from pillars.pipelines.cli import main
from pillars.serving.demo import v2_request
from tests.processes import ServerProcess, free_port
from tests.models import rows as toy_rows
from tests.models import save_legacy_classifier

CURRENT_IMPORT = "from pillars.components.model.predictor import Predictor, load_predictor"
LEGACY_IMPORT = "from components.models import Predictor"


def _register(model_dir: Path, name: str) -> tuple[str, str]:
    """Log and register the model as a champion; returns the version and the logged model's id."""
    with mlflow.start_run(experiment_id=ensure_experiment(name)) as run:
        mlflow.log_metric("test_accuracy", 0.875)
        info = log_pillars_model(model_dir, example_inputs={"input-0": toy_rows(2)})
    version = mlflow.register_model(info.model_uri, name, tags={
        "task": "toy", "gate_approved": "true", "mlflow_run_id": run.info.run_id, "code_version": "0.1.0"}).version
    registry.client().set_registered_model_alias(name, registry.CHAMPION, version)
    return str(version), info.model_id


def _make_legacy(model_id: str, legacy_dir: Path) -> None:
    """Rewrite the stored model as Pillars 0.1 wrote it: its pyfunc code imports the bare ``components``
    package, its requirements name the old distribution, its artifacts are the 0.1 config and weights."""
    folder = Path(urlparse(registry.client().get_logged_model(model_id).artifact_location).path)
    for name in ("config.json", "model.safetensors"):
        (folder / "artifacts" / name).write_bytes((legacy_dir / name).read_bytes())
    (folder / "artifacts" / "preprocessing.json").unlink()
    code = folder / "pyfunc_model.py"
    assert CURRENT_IMPORT in code.read_text()
    code.write_text(code.read_text().replace(CURRENT_IMPORT, LEGACY_IMPORT))
    (folder / "requirements.txt").write_text("mlflow\npillars==0.1.0\n")
    assert is_legacy(folder)


def _pyfunc_predict(uri: str, rows: np.ndarray, cwd: Path) -> subprocess.CompletedProcess:
    """``mlflow.pyfunc.load_model(uri).predict(rows)`` as a user runs it, in a fresh process outside the
    repository (so no ``components/`` folder of this checkout is importable); prints the class indices."""
    script = ("import json, sys, mlflow, pandas as pd\n"
              f"model = mlflow.pyfunc.load_model({uri!r})\n"
              "frame = pd.DataFrame(json.loads(sys.argv[1]), columns=model.metadata.get_input_schema().input_names())\n"
              "print(json.dumps(model.predict(frame)['class_index'].tolist()))\n")
    return subprocess.run([sys.executable, "-c", script, json.dumps(rows.tolist())], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


@pytest.fixture
def legacy(local_store, tmp_path):
    """``legacy`` v1, registered as Pillars 0.1 left it, champion; yields the rows, the expected class
    indices and a working folder outside the repository."""
    model_dir = save_legacy_classifier(tmp_path / "model")
    rows = toy_rows(8, seed=3)
    expected = load_predictor(model_dir).predict({"input-0": rows})["class_index"].tolist()
    v1, model_id = _register(model_dir, "legacy")
    assert v1 == "1"
    _make_legacy(model_id, model_dir)
    work = tmp_path / "work"
    work.mkdir()
    return rows, expected, work


@pytest.mark.slow
def test_a_0_1_version_is_still_served(legacy, tmp_path):
    rows, expected, work = legacy
    http_port, grpc_port = free_port(), free_port()
    server = ServerProcess(
        [sys.executable, "-m", "pillars.pipelines.cli", "serve", "models:/legacy@champion",
         "--http-port", str(http_port), "--grpc-port", str(grpc_port)], log_path=tmp_path / "serve.log", cwd=work)
    try:
        server.wait_http(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=180)
        answer = httpx.post(f"http://127.0.0.1:{http_port}/v2/models/legacy/infer", json=v2_request(rows), timeout=30)
        assert answer.status_code == 200, answer.text
        served = {o["name"]: o["data"] for o in answer.json()["outputs"]}
        assert served["class_index"] == expected
    finally:
        server.stop()


@pytest.mark.slow
def test_a_0_1_version_is_upgraded_for_pyfunc_loading(legacy, capsys):
    rows, expected, work = legacy
    broken = _pyfunc_predict("models:/legacy/1", rows, work)
    assert broken.returncode != 0 and "No module named 'components'" in broken.stderr, broken.stderr[-2000:]

    assert main(["models", "upgrade", "legacy"]) == 0
    assert "legacy: v1 re-registered as v2" in capsys.readouterr().out
    old, new = (registry.client().get_model_version("legacy", v) for v in ("1", "2"))
    assert new.run_id == old.run_id  # same run: same params, metrics and plots
    assert new.tags[UPGRADED_FROM] == "1" and new.tags["task"] == "toy" and new.tags["gate_approved"] == "true"
    assert new.tags["code_version"] != "0.1.0"
    assert registry.alias_version("legacy", registry.CHAMPION) == "1"  # aliases untouched
    assert registry.alias_version("legacy", registry.CHALLENGER) is None

    loaded = _pyfunc_predict("models:/legacy/2", rows, work)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert json.loads(loaded.stdout.strip().splitlines()[-1]) == expected
    with downloaded_version("legacy", "2") as folder:
        config = json.loads((folder / "artifacts" / "config.json").read_text())
        assert (folder / "artifacts" / "preprocessing.json").is_file()
    assert config["format"] == "pillars.v2" and config["task"] == "pillars.tasks.tabular:TabularClassification"
    assert config["extra"] == {"upgraded_from": "pillars.v1"}

    assert main(["models", "upgrade", "legacy"]) == 0  # nothing left to do: no third version
    assert "already loads with this Pillars" in capsys.readouterr().out
    assert len(registry.client().search_model_versions("name='legacy'")) == 2
    assert main(["models", "upgrade", "legacy", "7"]) != 0
    assert "model 'legacy' has no version '7'" in capsys.readouterr().err
