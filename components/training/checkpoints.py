"""Training checkpoints: written atomically and durably, the last two kept, a corrupt one survived.

A checkpoint is written to a temporary file, flushed and ``fsync``-ed, the current one becomes
``previous.pt``, the new one is renamed to ``last.pt`` and the folder is ``fsync``-ed, so after a
crash or power loss at any point one complete checkpoint is on disk. :func:`load_checkpoint` reads
the newest readable one of the same training job; an unreadable file is logged and skipped (the
previous one, else a clean start), never a failure of every retry.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

CHECKPOINT = "last.pt"
PREVIOUS = "previous.pt"
REQUIRED_KEYS = ("fingerprint", "model", "optimizer", "scaler", "epoch")


def snapshot(value: Any) -> Any:
    """A copy of nested dicts/lists of tensors that later training steps cannot change."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: snapshot(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(snapshot(v) for v in value)
    return value


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_checkpoint(directory: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` as ``directory/last.pt`` durably, keeping the one before as ``previous.pt``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path, tmp = directory / CHECKPOINT, directory / f"{CHECKPOINT}.tmp"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    if path.exists():
        os.replace(path, directory / PREVIOUS)
    os.replace(tmp, path)
    _fsync_dir(directory)
    return path


def load_checkpoint(directory: str | Path, fingerprint: str, map_location: Any = "cpu") -> dict[str, Any] | None:
    """The newest readable checkpoint of the job ``fingerprint`` in ``directory``, or None (start clean).

    ``last.pt`` first, then ``previous.pt``; a file that cannot be read (truncated, corrupt, missing
    keys) is skipped with a warning that names it, as is one of another job.
    """
    directory = Path(directory)
    damaged = []
    for path in (directory / CHECKPOINT, directory / PREVIOUS):
        if not path.is_file():
            continue
        try:
            saved = torch.load(path, map_location=map_location, weights_only=True)
            missing = [k for k in REQUIRED_KEYS if k not in saved]
            if missing:
                raise ValueError(f"missing {', '.join(missing)}")
        except Exception as e:  # noqa: BLE001 - any unreadable file is skipped, and said so
            logger.warning("checkpoint %s is unreadable (%s: %s); skipping it", path, type(e).__name__, e)
            damaged.append(path.name)
            continue
        if saved["fingerprint"] != fingerprint:
            logger.warning("ignoring checkpoint %s: it belongs to other data or hyperparameters", path)
            continue
        if damaged:
            logger.warning("resuming from the older checkpoint %s after epoch %d (%s unreadable)",
                           path, saved["epoch"], ", ".join(damaged))
        return saved
    if damaged:
        logger.warning("no readable checkpoint in %s (%s unreadable): starting clean", directory, ", ".join(damaged))
    return None


class CheckpointWriter:
    """Writes checkpoints on a background thread so training goes on while the file is written.

    The state is snapshotted synchronously (so it is exactly that epoch's), the write is atomic and
    durable (:func:`write_checkpoint`), and at most one write is pending: the next epoch's
    checkpoint first waits for the previous one.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._pending: threading.Thread | None = None
        self._error: BaseException | None = None

    def save(self, state: dict[str, Any]) -> None:
        """Queue ``state`` (snapshotted now) to be written."""
        copy = snapshot(state)
        self.wait()
        self._pending = threading.Thread(target=self._write, args=(copy,), daemon=True)
        self._pending.start()

    def _write(self, state: dict[str, Any]) -> None:
        try:
            write_checkpoint(self.directory, state)
        except BaseException as e:  # re-raised on the training thread by wait()
            self._error = e

    def wait(self) -> None:
        """Block until the pending write is on disk; raise its error, if any."""
        if self._pending is not None:
            self._pending.join()
            self._pending = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error
