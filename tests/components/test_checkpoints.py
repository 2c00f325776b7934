"""Checkpoints: written durably (fsync before the rename), the last two kept, a corrupt one survived."""

from __future__ import annotations

import logging
import os

import pytest

from pillars.components.training import checkpoints
from pillars.components.training.checkpoints import CHECKPOINT, PREVIOUS, load_checkpoint, write_checkpoint
from pillars.components.training.fit import TrainParams, fingerprint, fit
from pillars.components.data.prepare import PrepareParams, prepare


@pytest.fixture(scope="module")
def cancer():
    return prepare(PrepareParams(task="breast_cancer"))


def _fit(data, epochs: int, directory):
    return fit(data.splits["train"], data.splits["val"], data.metadata, TrainParams(epochs=epochs, patience=100),
               directory, progress=False)


def test_a_checkpoint_is_fsynced_file_and_folder_before_it_replaces_the_last_one(tmp_path, monkeypatch):
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync-dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync-file")
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append(f"replace->{os.path.basename(dst)}")
        real_replace(src, dst)

    monkeypatch.setattr(checkpoints.os, "fsync", fsync)
    monkeypatch.setattr(checkpoints.os, "replace", replace)
    state = {"fingerprint": "k", "model": {}, "optimizer": {}, "scaler": {}, "epoch": 1}
    write_checkpoint(tmp_path, state)
    assert events == ["fsync-file", f"replace->{CHECKPOINT}", "fsync-dir"]
    events.clear()
    write_checkpoint(tmp_path, {**state, "epoch": 2})
    assert events == ["fsync-file", f"replace->{PREVIOUS}", f"replace->{CHECKPOINT}", "fsync-dir"]
    assert load_checkpoint(tmp_path, "k")["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT, PREVIOUS]


def test_the_training_loop_writes_through_fsync(tmp_path, cancer, monkeypatch):
    calls = []
    real_fsync = os.fsync
    monkeypatch.setattr(checkpoints.os, "fsync", lambda fd: (calls.append(fd), real_fsync(fd)))
    _fit(cancer, 3, tmp_path)
    assert len(calls) == 2 * 3, "one file and one folder fsync per epoch"


def test_a_corrupt_last_checkpoint_resumes_from_the_previous_one(tmp_path, cancer, caplog):
    _fit(cancer, 4, tmp_path)  # last.pt: after epoch 4, previous.pt: after epoch 3
    (tmp_path / CHECKPOINT).write_bytes(b"torn write")
    with caplog.at_level(logging.WARNING, logger="pillars.components.training.checkpoints"):
        result = _fit(cancer, 4, tmp_path)  # the retry of the same job
    assert result.start_epoch == 4, "resumed after epoch 3, from previous.pt"
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    assert f"checkpoint {tmp_path / CHECKPOINT} is unreadable" in caplog.text
    assert "resuming from the older checkpoint" in caplog.text


def test_with_both_checkpoints_corrupt_the_retry_starts_clean_and_says_so(tmp_path, cancer, caplog):
    _fit(cancer, 2, tmp_path)
    (tmp_path / CHECKPOINT).write_bytes(b"")
    (tmp_path / PREVIOUS).write_bytes(b"\x80\x02garbage")
    with caplog.at_level(logging.WARNING, logger="pillars.components.training.checkpoints"):
        result = _fit(cancer, 2, tmp_path)
    assert result.start_epoch == 1 and len(result.history) == 2
    assert "starting clean" in caplog.text
    key = fingerprint(cancer.metadata, TrainParams(epochs=2, patience=100))
    assert load_checkpoint(tmp_path, key)["epoch"] == 2, "the clean run wrote good checkpoints again"
