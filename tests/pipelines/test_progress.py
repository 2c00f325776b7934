"""Reporting a kfp.local run: kfp's task lines become step lines, a failed step's own error ends the story.

The lines below are copied from real ``pillars run training`` logs (kfp 2.17's kfp.local), colour codes included.
"""

from __future__ import annotations

import io
import itertools

import pytest

from pillars.pipelines.local.progress import StepEvent, StepReporter, error_message, parse_line

C, G, R, X = "\x1b[96m", "\x1b[92m", "\x1b[91m", "\x1b[0m"
PREPARE_FAILS = f"""\
09:54:49.844 - INFO - Running pipeline: \x1b[95m'pillars-training'{X}
--------------------------------------------------------------------------------
09:54:49.858 - INFO - Executing task {C}'prepare-data'{X}
09:54:49.859 - INFO - Streamed logs:

    [KFP Executor 2026-11-29 09:54:50,106 INFO]: Looking for component `prepare_data` in --component_module_path `/tmp/t/ephemeral_component.py`
    Traceback (most recent call last):
      File "/work/components/datasets.py", line 71, in load_table
        raise DataError(
    KeyError: 'zzz'

    The above exception was the direct cause of the following exception:

    Traceback (most recent call last):
      File "<frozen runpy>", line 198, in _run_module_as_main
      File "/work/components/datasets.py", line 71, in load_table
        raise DataError(
    pillars.components.errors.DataError: label column 'zzz' not in bad.csv; columns are: a, b, c
    \n
09:54:54.705 - ERROR - Task {C}'prepare-data'{X} finished with status {R}FAILURE{X}
--------------------------------------------------------------------------------
"""
TRAIN_SUCCEEDS = f"""\
09:57:20.100 - INFO - Executing task {C}'train'{X}
09:57:20.101 - INFO - Streamed logs:

    2026/11/29 09:57:45 INFO mlflow.store.db.utils: Creating initial MLflow database tables...
    train:   0%|          | 0/3 [00:00<?, ?epoch/s]
    train:  33%|███▎      | 1/3 [00:00<00:01,  1.54epoch/s, loss=0.6210, val_loss=0.4903]
    Downloading artifacts: 100%|██████████| 1/1 [00:00<00:00, 8176.03it/s]
    train: 100%|██████████| 3/3 [00:09<00:00,  3.12s/epoch, loss=0.2644, val_loss=0.1822]
    [KFP Executor 2026-11-29 09:58:01,173 INFO]: Wrote executor output file to /tmp/x/train/executor_output.json.
    \n
09:58:10.666 - INFO - Task {C}'train'{X} finished with status {G}SUCCESS{X}
09:58:10.667 - INFO - Task {C}'train'{X} outputs:
    Output: 'b0c1'
    model: Model( name='model',
"""


def _clock(*times: float):
    values = itertools.chain(times, itertools.repeat(times[-1]))
    return lambda: next(values)


def _report(text: str, clock=None, chunk: int = 7) -> tuple[StepReporter, str, str]:
    log, out = io.StringIO(), io.StringIO()
    reporter = StepReporter(log, out, clock=clock or _clock(0.0))
    for i in range(0, len(text), chunk):  # kfp writes in pieces: lines must be joined across writes
        reporter.write(text[i:i + chunk])
    return reporter, log.getvalue(), out.getvalue()


def test_kfp_task_lines_become_start_and_end_events():
    assert parse_line(f"09:54:49.858 - INFO - Executing task {C}'prepare-data'{X}\n", None) == \
        StepEvent("start", "prepare-data")
    assert parse_line(f"09:58:10.666 - INFO - Task {C}'train'{X} finished with status {G}SUCCESS{X}", "train") == \
        StepEvent("end", "train", status="SUCCESS")
    assert parse_line("    Executing task 'x'", "train").kind == "output"  # a step printing it is not kfp
    assert parse_line("09:58:10.667 - INFO - Task 'train' outputs:", None) is None


def test_only_the_steps_own_bar_is_its_progress():
    bar = parse_line("    train:  33%|███▎      | 1/3 [00:00<00:01,  1.54epoch/s, loss=0.62]", "train")
    assert bar == StepEvent("progress", "train", done=1, total=3, unit="epoch", text="loss=0.62")
    slow = parse_line("    train: 100%|██████████| 3/3 [00:09<00:00,  3.12s/epoch]", "train")
    assert (slow.done, slow.total, slow.unit) == (3, 3, "epoch")
    other = parse_line("    Downloading artifacts: 100%|██████████| 1/1 [00:00<00:00, 81.03it/s]", "register")
    assert other.kind == "output"


def test_a_successful_step_is_two_lines_with_duration_and_progress_and_the_log_keeps_everything():
    reporter, log, out = _report(TRAIN_SUCCEEDS, clock=_clock(100.0, 150.5))
    assert log == TRAIN_SUCCEEDS
    assert out.splitlines() == ["  train          ...",
                                "  train          ok       50.5s  3/3 epoch  (loss=0.2644, val_loss=0.1822)"]
    assert reporter.failure() is None


def test_a_failed_step_yields_its_own_error_message():
    reporter, _, out = _report(PREPARE_FAILS)
    assert out.splitlines()[-1].split() == ["prepare-data", "FAILED", "0.0s"]
    failed = reporter.failure()
    assert failed.step == "prepare-data"
    assert str(failed) == "step prepare-data failed: label column 'zzz' not in bad.csv; columns are: a, b, c"


def test_verbose_copies_every_line_and_adds_none():
    log, out = io.StringIO(), io.StringIO()
    StepReporter(log, out, verbose=True).write(TRAIN_SUCCEEDS)
    assert out.getvalue() == log.getvalue() == TRAIN_SUCCEEDS


@pytest.mark.parametrize("output,message", [
    (["Traceback (most recent call last):", '  File "x.py", line 1', "RuntimeError: CUDA out of memory"],
     "RuntimeError: CUDA out of memory"),
    (["Traceback (most recent call last):", '  File "x.py", line 1', "KeyboardInterrupt"], "KeyboardInterrupt"),
    (["loading", "Killed"], "exited without a Python traceback; its last line: Killed"),
    ([], "exited without output"),
])
def test_error_messages_keep_the_class_of_foreign_errors(output, message):
    assert error_message(output) == message


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_bar_is_redrawn_in_place_and_cleared_before_the_end_line():
    out = _Terminal()
    StepReporter(io.StringIO(), out, clock=_clock(0.0, 2.0)).write(TRAIN_SUCCEEDS)
    text = out.getvalue()
    assert text.startswith("  train          ...\n")
    assert "\r\x1b[K  train          [########................] 1/3 epoch" in text
    assert "\r\x1b[K  train          [########################] 3/3 epoch" in text
    assert text.endswith("\r\x1b[K  train          ok        2.0s  3/3 epoch  (loss=0.2644, val_loss=0.1822)\n")
