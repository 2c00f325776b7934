"""The one reader of kfp.local's output: real log lines (kfp 2.17, colour codes included) read as typed lines.

The CLI's step report and the console's run page both read through it (their own tests: test_progress.py,
tests/console/test_units.py); these are the lines both of them meet.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pillars.pipelines.local.steplog import LogLine, ProgressBar, output_value, progress_bar, read_line

C, G, R, P, X = "\x1b[96m", "\x1b[92m", "\x1b[91m", "\x1b[95m", "\x1b[0m"
RECORDED = Path(__file__).parents[1] / "console" / "fixtures" / "kfp_local_training.log"
"""A real kfp.local log of the training pipeline (breast_cancer, 2 epochs; executor inputs elided)."""


@pytest.mark.parametrize("line,read", [
    (f"09:54:49.858 - INFO - Executing task {C}'prepare-data'{X}\n",
     LogLine("task_started", "Executing task 'prepare-data'", "prepare-data", clock="09:54:49.858")),
    (f"09:58:10.666 - INFO - Task {C}'train'{X} finished with status {G}SUCCESS{X}",
     LogLine("task_finished", "Task 'train' finished with status SUCCESS", "train", "SUCCESS", "09:58:10.666")),
    (f"09:54:54.705 - ERROR - Task {C}'prepare-data'{X} finished with status {R}FAILURE{X}",
     LogLine("task_finished", "Task 'prepare-data' finished with status FAILURE", "prepare-data", "FAILURE",
             "09:54:54.705")),
    (f"09:58:10.667 - INFO - Task {C}'train'{X} outputs:",
     LogLine("task_outputs", "Task 'train' outputs:", "train", clock="09:58:10.667")),
    (f"09:54:24.000 - INFO - Pipeline {P}'pillars-training'{X} finished with status {G}SUCCESS{X}",
     LogLine("pipeline_finished", "Pipeline 'pillars-training' finished with status SUCCESS", "pillars-training",
             "SUCCESS", "09:54:24.000")),
    ("09:57:20.101 - INFO - Streamed logs:", LogLine("kfp", "Streamed logs:", clock="09:57:20.101")),
    ("    Executing task 'x'", LogLine("output", "Executing task 'x'")),  # a step printing it is not kfp
    ("    [KFP Executor 2026-11-29 09:51:35,298 INFO]: Wrote executor output file to "
     "/home/me/.pillars/pipeline_root/pillars-training-2026-11-29-09-51-19-417422/prepare-data/executor_output.json.",
     LogLine("output", "[KFP Executor 2026-11-29 09:51:35,298 INFO]: Wrote executor output file to "
             "/home/me/.pillars/pipeline_root/pillars-training-2026-11-29-09-51-19-417422/prepare-data/"
             "executor_output.json.", job="pillars-training-2026-11-29-09-51-19-417422")),
    ("-" * 80, LogLine("other", "-" * 80)),
    ("", LogLine("other", "")),
])
def test_each_kind_of_kfp_local_line_is_read_as_what_it_says(line, read):
    assert read_line(line) == read


@pytest.mark.parametrize("text,value", [
    ("Output: 'b0c1'", ("Output", "b0c1")),
    ("version: '1'", ("version", "1")),
    ("Output: False", ("Output", "False")),
    ("Output: -0.25", ("Output", "-0.25")),
    ("model: Model( name='model',", None),
    ("                    uri='/home/me/.pillars/pipeline_root/x/train/model',", None),
])
def test_only_plain_output_values_are_read_as_values(text, value):
    assert output_value(text) == value


def test_a_tqdm_line_gives_its_description_count_unit_and_postfix():
    assert progress_bar("train:  33%|███▎      | 1/3 [00:00<00:01,  1.54epoch/s, loss=0.6210, val_loss=0.4903]") == \
        ProgressBar("train", 1, 3, "epoch", "loss=0.6210, val_loss=0.4903")
    assert progress_bar("train: 100%|██████████| 3/3 [00:09<00:00,  3.12s/epoch]") == ProgressBar("train", 3, 3, "epoch")
    assert progress_bar("train:   0%|          | 0/3 [00:00<?, ?epoch/s]") == ProgressBar("train", 0, 3, "epoch")
    assert progress_bar("Downloading artifacts: 100%|██████████| 1/1 [00:00<00:00, 8176.03it/s]").desc == \
        "Downloading artifacts"
    assert progress_bar("2026/11/29 09:57:45 INFO mlflow.store.db.utils: Creating initial MLflow database") is None


def test_a_whole_recorded_run_reads_as_each_task_started_and_finished_once():
    lines = [read_line(raw) for raw in RECORDED.read_text().splitlines()]
    started = [line.name for line in lines if line.kind == "task_started"]
    finished = [(line.name, line.status) for line in lines if line.kind == "task_finished"]
    assert started == ["prepare-data", "train", "evaluate", "validate", "register"]
    assert finished == [(name, "SUCCESS") for name in started]
    assert [line.status for line in lines if line.kind == "pipeline_finished"] == ["SUCCESS"]
    assert {line.job for line in lines if line.job} == {"pillars-training-2026-11-29-09-51-19-417422"}
    assert not any("\x1b" in line.text for line in lines)
