"""``pillars run`` killed with ``kill -9``: no step survives it, and a rerun with the same parameters
continues the killed training from its checkpoint."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from pillars.components.training.checkpoints import CHECKPOINT
from tests.processes import group_alive

EPOCHS = 150  # breast_cancer: a few ms each; the kill lands within ~50 ms of the first checkpoint


def _stat(pid: int) -> tuple[int, int] | None:
    """``(ppid, pgid)`` of a live process, None when it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] == "Z" else (int(fields[1]), int(fields[2]))


def _children(pid: int) -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir()
            if p.name.isdigit() and (_stat(int(p.name)) or (0, 0))[0] == pid]


def _group(pgid: int) -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir()
            if p.name.isdigit() and (_stat(int(p.name)) or (0, 0))[1] == pgid]


@pytest.mark.slow
def test_a_killed_run_leaves_no_step_behind_and_a_rerun_resumes_its_training(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PILLARS_", "MLFLOW_"))}
    env["PILLARS_HOME"] = str(tmp_path / ".pillars")
    command = [sys.executable, "-m", "pillars.pipelines.cli", "run", "training", "--task", "breast_cancer",
               "--param", f"epochs={EPOCHS}", "--param", f"patience={EPOCHS}"]
    checkpoints = tmp_path / ".pillars" / "checkpoints" / "breast_cancer"
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    runner = None
    try:
        deadline = time.monotonic() + 600
        while not list(checkpoints.glob(f"*/{CHECKPOINT}")):
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 600 s"
            time.sleep(0.02)
        (runner,) = _children(first.pid)
        assert _stat(runner)[1] == runner, "the runner leads a process group of its own"
        steps = [pid for pid in _group(runner) if pid != runner]
        assert steps, "the train step runs in the runner's group"

        first.send_signal(signal.SIGKILL)
        first.wait()
        killed = time.monotonic()
        while group_alive(runner) and time.monotonic() - killed < 5:
            time.sleep(0.05)
        assert not group_alive(runner), f"step processes survived kill -9 of pillars run: {_group(runner)}"
        (checkpoint,) = checkpoints.glob(f"*/{CHECKPOINT}")
        done = torch.load(checkpoint, weights_only=True)["epoch"]
        assert 1 <= done < EPOCHS, "killed mid-training"
    finally:
        for group in (first.pid, runner):
            with contextlib.suppress(ProcessLookupError, TypeError):
                os.killpg(group, signal.SIGKILL)

    rerun = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / '.pillars' / 'mlflow.db'}")
    version = client.get_model_version("breast_cancer", "1")
    run = client.get_run(version.run_id)
    assert 1 <= int(run.data.tags["pillars.resumed_from_epoch"]) <= done, "the rerun continued the killed training"
    assert not list(checkpoints.glob(f"*/{CHECKPOINT}")), "the finished job's checkpoint is removed"
