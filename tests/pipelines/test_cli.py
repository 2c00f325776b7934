"""The ``pillars`` CLI: bad arguments get one line and a non-zero exit, never a traceback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import mlflow
import pytest

from pillars.components.errors import ConfigError
from pillars.pipelines.cli import main
from pillars.pipelines.cli.commands import cron_expression
from tests.processes import free_port


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without anything that points Pillars or MLflow somewhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PILLARS_", "MLFLOW_"))}
    return {**env, **extra}


def _pillars(*args: str, tmp_path, env: dict[str, str] | None = None, timeout: float = 120
             ) -> subprocess.CompletedProcess:
    """``pillars ARGS`` in ``tmp_path`` as a newcomer runs it: no PILLARS_*/MLFLOW_* variables."""
    return subprocess.run([sys.executable, "-m", "pillars.pipelines.cli", *args], capture_output=True, text=True,
                          env=env or _clean_env(), cwd=tmp_path, timeout=timeout)


@pytest.mark.parametrize("args,message", [
    (["run", "training", "--param", "nope=1"], "unknown parameter 'nope'"),
    (["run", "training", "--param", "epochs=ten"], "parameter epochs must be integer"),
    (["run", "training", "--param", "epochs"], "--param takes key=value"),
    (["run", "training", "--task", "nope"], "unknown task 'nope'; installed tasks: breast_cancer, "),
    (["run", "training", "--task", "no_such_package.tasks:churn"], "install 'no_such_package'"),
    (["run", "training", "--task", "pillars.tasks.tabular:nothing"], "has no attribute 'nothing'"),
    (["run", "training", "--task-arg", "hidden_sizes"], "--task-arg takes key=value"),
    (["run", "training", "--task-arg", "no_such_field=1"], "does not take these arguments"),
    (["run", "training", "--param", "task_args=[1]"], "task_args must be a JSON object"),
    (["run", "training", "--param", "balance=maybe"], "parameter balance must be boolean"),
    (["run", "training", "--param", "nodes=2"], "nodes > 1 needs launcher=trainjob"),
    (["run", "training", "--param", "launcher=slurm"], "launcher must be 'local' or 'trainjob'"),
    (["run", "training", "--param", "margin=1e9"], "margin must be at most 1 for accuracy (higher is better), got 1e+09"),
    (["run", "training", "--param", "margin=-0.1"], "margin must be a finite number >= 0, got -0.1"),
    (["run", "training", "--param", "margin=nan"], "margin must be a finite number >= 0, got nan"),
    (["run", "training", "--param", "thresholds={}"], "thresholds {} sets no minimum at all"),
    (["run", "training", "--param", 'thresholds={"accuracy": Infinity}'], "thresholds must map metric names to finite"),
    (["run", "retraining", "--param", "model_name=m", "--param", "margin=-1"], "margin must be a finite number"),
    (["run", "retraining", "--param", "model_name=m", "--param", "test_fraction=0.7"],
     "test_fraction must be in (0, 0.5), got 0.7"),
    (["run", "training", "--param", "replace_task=maybe"], "parameter replace_task must be boolean"),
    (["models", "show", "ghost"], "no registered model named 'ghost'"),
    (["models", "rollback", "ghost"], "no registered model named 'ghost'"),
    (["submit", "training", "--host", "http://127.0.0.1:9", "--schedule", "every day"], "cron expression"),
    (["submit", "training", "--host", "http://127.0.0.1:9", "--param", "dropout=2"], "invalid dropout"),
    (["submit", "training", "--host", "http://127.0.0.1:9"], "cannot reach Kubeflow Pipelines at http://127.0.0.1:9"),
])
def test_bad_arguments_get_one_line_and_nonzero_exit(args, message, local_store, capsys):
    if args[0] == "models":
        mlflow.search_registered_models()  # an existing, empty store: the model is what is missing
    assert main(args) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.startswith("pillars: error:")]
    assert len(lines) == 1 and message in lines[0], err


def test_the_console_script_prints_no_traceback(tmp_path):
    result = _pillars("run", "training", "--param", "epochs=ten", tmp_path=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "pillars: error: parameter epochs must be integer, got 'ten'"


def test_models_list_fails_fast_in_one_line_when_the_registry_is_unreachable(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    result = _pillars("models", "list", tmp_path=tmp_path, env=_clean_env(MLFLOW_TRACKING_URI=uri))
    assert time.monotonic() - started < 60, "MLflow's client retries for minutes; the CLI must not"
    assert result.returncode != 0 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"pillars: error: cannot reach the MLflow registry at {uri}")


def test_a_failed_data_step_ends_the_output_with_its_own_error(tmp_path):
    (tmp_path / "bad.csv").write_text("a,b,c\n1,2,0\n3,4,1\n")
    result = _pillars("run", "training", "--param", "source=bad.csv", "--param", "label_column=zzz",
                      tmp_path=tmp_path, timeout=600)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"pillars: error: step prepare-data failed: label column 'zzz' not in \S*bad\.csv; "
                        r"columns are: a, b, c", last), result.stderr
    assert "Traceback" not in result.stderr and "Inner task failed" not in result.stderr
    assert re.search(r"^  prepare-data +FAILED", result.stderr, re.M)
    log = next((tmp_path / ".pillars" / "logs").glob("run-training-*.log"))
    assert "Traceback (most recent call last):" in log.read_text()


def test_models_list_in_a_folder_without_a_store_says_where_it_looked_and_creates_none(tmp_path):
    result = _pillars("models", "list", tmp_path=tmp_path)
    assert result.returncode != 0 and result.stdout == ""
    store = f"sqlite:///{tmp_path / '.pillars' / 'mlflow.db'}"
    assert result.stderr.strip().splitlines() == [
        f"pillars: error: no MLflow registry at {store}: train a model here first (pillars run training), "
        "or set MLFLOW_TRACKING_URI to your MLflow server"]
    assert not (tmp_path / ".pillars" / "mlflow.db").exists() and not (tmp_path / "mlflow.db").exists()


def test_models_show_lists_variants_with_parent_size_and_delta_and_trained_versions_with_their_gate(
        local_store, tmp_path, capsys):
    from mlflow import MlflowClient

    client = MlflowClient()
    client.create_registered_model("shown")
    (tmp_path / "model.txt").write_text("weights")
    experiment = client.create_experiment("shown")  # not whichever experiment an earlier test left active
    with mlflow.start_run(experiment_id=experiment) as run:  # a trained version: its run logged test metrics, the gate tagged it
        mlflow.log_metrics({"test_accuracy": 0.9375, "val_loss": 0.2})
        mlflow.log_artifact(str(tmp_path / "model.txt"), "model")
    client.create_model_version("shown", f"{run.info.artifact_uri}/model", run.info.run_id,
                                tags={"gate_approved": "true"})
    with mlflow.start_run(experiment_id=experiment) as run:  # the tags register_variants writes (variant_tags)
        mlflow.log_artifact(str(tmp_path / "model.txt"), "variants/onnx_int8")
    client.create_model_version("shown", f"{run.info.artifact_uri}/variants/onnx_int8", run.info.run_id, tags={
        "pillars.variant": "onnx_int8", "pillars.parent_version": "1", "pillars.size_bytes": "41234",
        "pillars.metric": "accuracy", "pillars.metric_delta": "-0.003125", "pillars.latency_ms_b1": "0.21",
        "pillars.throughput_b64": "9100", "pillars.optimize_run": run.info.run_id})
    client.set_registered_model_alias("shown", "champion", "1")
    client.set_registered_model_alias("shown", "edge", "2")

    assert main(["models", "show", "shown"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"shown v2 \[edge\]  \S+  variant=onnx_int8  parent=v1  size=41\.2 kB  "
                        r"accuracy delta=-0\.003125  latency=0\.21 ms", lines[0]), lines
    assert re.fullmatch(r"shown v1 \[champion\]  \S+  gate=true  accuracy=0\.9375", lines[1]), lines
    assert "?" not in "\n".join(lines)


def test_compile_writes_yaml(tmp_path):
    result = _pillars("compile", "training", "-o", str(tmp_path / "t.yaml"), "--gpus", "1", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "nvidia.com/gpu" in (tmp_path / "t.yaml").read_text()


def test_cron_expressions_take_five_or_six_fields():
    assert cron_expression("0 3 * * *") == "0 0 3 * * *"
    assert cron_expression("30 0 3 * * 1") == "30 0 3 * * 1"
    with pytest.raises(ConfigError):
        cron_expression("daily")


def test_tasks_lists_the_installed_tasks_with_their_description(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^breast_cancer +Tabular binary classification", out, re.M), out
    assert re.search(r"^digits +Image classification of 1x8x8", out, re.M), out
    assert "package.module:attribute" in out.splitlines()[-1]


def test_task_flags_become_the_task_and_task_args_parameters():
    from pillars.pipelines.compile import task_params

    assert task_params("acme.tasks:churn", [], []) == ["task=acme.tasks:churn"]
    merged = task_params(None, ["hidden=32", "name=big", "layers=[1, 2]"], ['task_args={"hidden": 8, "rows": 5}'])
    assert merged == ['task_args={"hidden": 32, "rows": 5, "name": "big", "layers": [1, 2]}']
