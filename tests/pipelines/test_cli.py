"""The ``pillars`` CLI: bad arguments get one line and a non-zero exit, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pillars.components.errors import ConfigError
from pillars.pipelines.cli import cron_expression, main


def _pillars(*args: str, tmp_path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PILLARS_HOME": str(tmp_path / ".pillars")}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "pillars.pipelines.cli", *args], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)


@pytest.mark.parametrize("args,message", [
    (["run", "training", "--param", "nope=1"], "unknown parameter 'nope'"),
    (["run", "training", "--param", "epochs=ten"], "parameter epochs must be integer"),
    (["run", "training", "--param", "epochs"], "--param takes key=value"),
    (["run", "training", "--task", "nope"], "unknown task 'nope'"),
    (["run", "training", "--param", "balance=maybe"], "parameter balance must be boolean"),
    (["run", "training", "--param", "nodes=2"], "nodes > 1 needs launcher=trainjob"),
    (["run", "training", "--param", "launcher=slurm"], "launcher must be 'local' or 'trainjob'"),
    (["models", "show", "ghost"], "no registered model named 'ghost'"),
    (["models", "rollback", "ghost"], "no registered model named 'ghost'"),
    (["submit", "training", "--host", "http://127.0.0.1:9", "--schedule", "every day"], "cron expression"),
    (["submit", "training", "--host", "http://127.0.0.1:9", "--param", "dropout=2"], "invalid dropout"),
    (["submit", "training", "--host", "http://127.0.0.1:9"], "cannot reach Kubeflow Pipelines at http://127.0.0.1:9"),
])
def test_bad_arguments_get_one_line_and_nonzero_exit(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PILLARS_HOME", str(tmp_path / ".pillars"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(args) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.startswith("pillars: error:")]
    assert len(lines) == 1 and message in lines[0], err


def test_the_console_script_prints_no_traceback(tmp_path):
    result = _pillars("run", "training", "--param", "epochs=ten", tmp_path=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "pillars: error: parameter epochs must be integer, got 'ten'"


def test_models_list_on_an_empty_store(tmp_path):
    result = _pillars("models", "list", tmp_path=tmp_path)
    assert result.returncode == 0 and "no registered models" in result.stdout
    assert (tmp_path / ".pillars" / "mlflow.db").is_file()


def test_compile_writes_yaml(tmp_path):
    result = _pillars("compile", "training", "-o", str(tmp_path / "t.yaml"), "--gpus", "1", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "nvidia.com/gpu" in (tmp_path / "t.yaml").read_text()


def test_cron_expressions_take_five_or_six_fields():
    assert cron_expression("0 3 * * *") == "0 0 3 * * *"
    assert cron_expression("30 0 3 * * 1") == "30 0 3 * * 1"
    with pytest.raises(ConfigError):
        cron_expression("daily")
