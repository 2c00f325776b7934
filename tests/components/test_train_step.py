"""The train step as KFP runs it: a retried step reuses its MLflow run and resumes from its checkpoint."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

from mlflow.tracking import MlflowClient

from pillars.components.data.prepare import PrepareParams, run_prepare
from pillars.components.training.checkpoints import CHECKPOINT
from pillars.components.training.fit import TrainParams
from pillars.components.training.train import checkpoint_dir_for, run_training
from pillars.components.data.splits import load_metadata
from pillars.components.records import GateDecision
from pillars.components.registry import REASON_TAG
from pillars.components.registry.register import run_register
from pillars.pipelines.cli.parser import main

_STEP = textwrap.dedent("""
    import sys
    from pillars.components.training.fit import TrainParams
    from pillars.components.training.train import run_training
    d, uri = sys.argv[1], sys.argv[2]
    run_training(f"{d}/train", f"{d}/val", f"{d}/meta.json", TrainParams(epochs=100, patience=100),
                 f"{d}/model", "retry-test", kfp_run_id="run-1", tracking_uri=uri, checkpoint_root=f"{d}/ckpt")
""")


def test_retried_step_continues_the_same_mlflow_run_from_its_checkpoint(tmp_path, local_store):
    paths = [str(tmp_path / n) for n in ("train", "val", "test", "meta.json")]
    run_prepare(PrepareParams(task="breast_cancer"), *paths)
    params = TrainParams(epochs=100, patience=100)
    ckpt = checkpoint_dir_for(tmp_path / "ckpt", "retry-test", load_metadata(paths[3]), params)

    first = subprocess.Popen([sys.executable, "-c", _STEP, str(tmp_path), local_store],
                             env={**os.environ, "PYTHONWARNINGS": "ignore"})
    deadline = time.monotonic() + 120
    while not (ckpt / CHECKPOINT).exists():
        assert first.poll() is None and time.monotonic() < deadline, "no checkpoint before the step ended"
        time.sleep(0.02)
    first.kill()
    first.wait()
    run_id = (ckpt / "mlflow_run_id").read_text()

    # a retry of the step, or a new pipeline run with the same parameters (a rerun of a killed
    # ``pillars run``): the same job, so it continues the killed attempt's MLflow run and checkpoint
    again = run_training(paths[0], paths[1], paths[3], params, str(tmp_path / "model"), "retry-test",
                         kfp_run_id="run-2", tracking_uri=local_store, checkpoint_root=str(tmp_path / "ckpt"))
    assert again == run_id
    assert not ckpt.exists(), "a finished job's checkpoint is removed"
    run = MlflowClient().get_run(run_id)
    resumed_after = int(run.data.tags["pillars.resumed_from_epoch"])
    assert 1 <= resumed_after < 100
    steps = sorted(m.step for m in MlflowClient().get_metric_history(run_id, "val_loss"))
    assert steps == list(range(1, 101)), "every epoch logged once, including those the killed attempt buffered"
    assert (tmp_path / "model" / "model.safetensors").is_file()

    other = run_training(paths[0], paths[1], paths[3], TrainParams(epochs=2), str(tmp_path / "m2"), "retry-test",
                         kfp_run_id="run-3", tracking_uri=local_store, checkpoint_root=str(tmp_path / "ckpt"))
    assert other != run_id, "another job must not reuse the checkpoint or the MLflow run"
    anew = run_training(paths[0], paths[1], paths[3], TrainParams(epochs=2), str(tmp_path / "m3"), "retry-test",
                        kfp_run_id="run-4", tracking_uri=local_store, checkpoint_root=str(tmp_path / "ckpt"))
    assert anew != other, "the same job after it finished trains anew"


def test_the_reason_a_run_started_reaches_its_mlflow_run_and_pillars_models_show(tmp_path, local_store, capsys):
    paths = [str(tmp_path / n) for n in ("train", "val", "test", "meta.json")]
    run_prepare(PrepareParams(task="breast_cancer"), *paths)
    why = "PillarsModelDrift firing (signal weighted_drift): 41% of the reliance is on drifted features"
    run_id = run_training(paths[0], paths[1], paths[3], TrainParams(epochs=1), str(tmp_path / "model"), "why-test",
                          tracking_uri=local_store, checkpoint_root=str(tmp_path / "ckpt"), reason=why)
    run = MlflowClient().get_run(run_id)
    assert run.data.tags[REASON_TAG] == why and run.data.params["reason"] == why
    version = run_register(str(tmp_path / "model"), paths[3], paths[2], "why-test", run_id, "kfp-1",
                           GateDecision(True, ["thresholds passed"]), local_store, reason=why)
    assert main(["models", "show", "why-test"]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert line.startswith(f"why-test v{version}") and line.endswith(f"reason={why}")

    plain = run_training(paths[0], paths[1], paths[3], TrainParams(epochs=1, seed=1), str(tmp_path / "m2"),
                         "why-test", tracking_uri=local_store, checkpoint_root=str(tmp_path / "ckpt"))
    assert REASON_TAG not in MlflowClient().get_run(plain).data.tags  # a run started by hand: no reason made up
