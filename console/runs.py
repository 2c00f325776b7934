"""Runs submitted from the console: recorded on disk, run one at a time by a worker process.

Each run is a folder ``<PILLARS_HOME>/console/runs/<id>/`` holding ``run.json`` (what was asked,
status, times), ``log.txt`` (kfp.local's output, read by :mod:`pillars.console.steplog`) and, when
it failed, ``error.txt`` (one line). Local runs wait in a FIFO queue; a dispatcher thread starts
``python -m pillars.console.worker <folder>`` for the next one when the previous one ended, so two
training runs never compete for this machine. With a KFP host configured, runs go to the cluster
through ``kfp.Client`` instead (the same compile-and-submit path as ``pillars submit``).

Runs outlive the console: the worker (its own session) records its pid and start time, and its
outcome, in ``run.json`` itself. A console that starts again re-attaches to a worker still running
(found by pid *and* start time, so a reused pid is never mistaken for it), shows the outcome a worker
recorded while no console watched, and runs the queued runs in their order. Only a worker that ended
without recording an outcome (killed) makes its run failed. ``run.json`` is changed under a lock file
(``flock``), read-modify-write, since two processes write it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import queue
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pillars.pipelines.compile import compile_pipeline
from pillars.pipelines.local.stack import stop_group
from pillars.pipelines.submit import connect, run_state, submit_run

logger = logging.getLogger(__name__)

QUEUED, RUNNING, SUCCEEDED, FAILED, SUBMITTED = "queued", "running", "succeeded", "failed", "submitted"
LOG_FILE, RECORD_FILE, ERROR_FILE, LOCK_FILE = "log.txt", "run.json", "error.txt", "run.lock"
ATTACH_POLL_S = 1.0


def now() -> str:
    """The time now (UTC, ISO 8601, seconds), as run records hold it."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclasses.dataclass
class RunRecord:
    """What the console knows of one run."""

    id: str
    pipeline: str
    arguments: dict[str, Any]
    status: str = QUEUED
    created: str = dataclasses.field(default_factory=now)
    started: str | None = None
    finished: str | None = None
    backend: str = "local"  # local (kfp.local) or kfp (a cluster)
    kfp_run_id: str | None = None
    error: str | None = None
    worker_pid: int | None = None
    worker_started: str | None = None  # the worker process's start time (/proc), to tell a reused pid apart

    @property
    def seconds(self) -> float | None:
        """Duration so far (running) or in all (finished); None while queued."""
        if not self.started:
            return None
        end = datetime.fromisoformat(self.finished) if self.finished else datetime.now(timezone.utc)
        return max(0.0, (end - datetime.fromisoformat(self.started)).total_seconds())

    @property
    def done(self) -> bool:
        return self.status in (SUCCEEDED, FAILED, SUBMITTED)


class RunStore:
    """Run folders under ``root`` (``<PILLARS_HOME>/console/runs``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()

    def folder(self, run_id: str) -> Path:
        if not run_id.isalnum():
            raise KeyError(run_id)
        return self.root / run_id

    def create(self, pipeline: str, arguments: dict[str, Any], backend: str = "local") -> RunRecord:
        run_id = datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S%f") + secrets.token_hex(2)  # sorts as submitted
        record = RunRecord(run_id, pipeline, dict(arguments), backend=backend)
        self.folder(run_id).mkdir(parents=True)
        self.save(record)
        return record

    @contextlib.contextmanager
    def _locked(self, run_id: str) -> Iterator[None]:
        """This run's record to change alone: across threads and processes (console and worker)."""
        with self._lock, open(self.folder(run_id) / LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _write(self, record: RunRecord) -> None:
        folder = self.folder(record.id)
        with tempfile.NamedTemporaryFile("w", dir=folder, prefix=".run-", suffix=".tmp", delete=False) as tmp:
            tmp.write(json.dumps(dataclasses.asdict(record), indent=2))
        os.replace(tmp.name, folder / RECORD_FILE)  # readers never see half a record

    def save(self, record: RunRecord) -> None:
        with self._locked(record.id):
            self._write(record)

    def update(self, run_id: str, change: Callable[[RunRecord], None]) -> RunRecord:
        """Apply ``change`` to the record as it is on disk now, and save it (read-modify-write, locked)."""
        with self._locked(run_id):
            record = self.get(run_id)
            change(record)
            self._write(record)
            return record

    def get(self, run_id: str) -> RunRecord:
        """The run ``run_id``; KeyError when there is none."""
        try:
            data = json.loads((self.folder(run_id) / RECORD_FILE).read_text())
        except (OSError, ValueError) as e:
            raise KeyError(run_id) from e
        return RunRecord(**data)

    def list(self) -> list[RunRecord]:
        """Every run, newest first."""
        if not self.root.is_dir():
            return []
        records = []
        for folder in sorted(self.root.iterdir(), reverse=True):
            try:
                records.append(self.get(folder.name))
            except KeyError:
                continue
        return records

    def log(self, run_id: str) -> str:
        path = self.folder(run_id) / LOG_FILE
        return path.read_text(errors="replace") if path.is_file() else ""


class RunQueue:
    """Local runs one at a time, in submission order, each in a worker process of its own."""

    def __init__(self, store: RunStore, env: dict[str, str] | None = None) -> None:
        self.store = store
        self.env = env or {}
        self._queue: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._current: subprocess.Popen[bytes] | None = None
        self._attached: tuple[int, str | None] | None = None
        self._stopping = threading.Event()

    def start(self) -> None:
        """Pick up what a previous console left (re-attach a live worker first, then the queued runs in
        order), then start the dispatcher thread."""
        for record in reversed(self.store.list()):  # oldest first
            if record.backend != "local":
                continue
            if record.status == RUNNING:
                if worker_alive(record.worker_pid, record.worker_started):
                    logger.info("run %s: re-attached to its worker (pid %s)", record.id, record.worker_pid)
                    self._queue.put(("attach", record.id))
                else:
                    self._settle(record.id, "its worker ended without recording an outcome (the console "
                                            "was not running to see how)")
            elif record.status == QUEUED:
                self._queue.put(("run", record.id))
        self._thread = threading.Thread(target=self._dispatch, name="pillars-console-runs", daemon=True)
        self._thread.start()

    def submit(self, record: RunRecord) -> None:
        self._queue.put(("run", record.id))

    def waiting(self) -> int:
        return self._queue.qsize()

    def stop(self) -> None:
        """Stop dispatching and end the running worker's process group (queued runs stay queued)."""
        self._stopping.set()
        self._queue.put(None)
        proc = self._current
        if proc is not None and proc.poll() is None:
            stop_group(proc.pid)
        attached = self._attached
        if attached is not None and worker_alive(*attached):
            stop_group(attached[0])  # the worker leads its own session, so its group
        if self._thread is not None:
            self._thread.join(timeout=20)

    def _dispatch(self) -> None:
        while (item := self._queue.get()) is not None:
            action, run_id = item
            try:
                self._attach(run_id) if action == "attach" else self._run(run_id)
            except Exception:  # noqa: BLE001 - one bad run must not stop the queue; it is recorded failed
                logger.exception("run %s could not be started", run_id)
                self._settle(run_id, "the worker could not be started")

    def _settle(self, run_id: str, error: str) -> RunRecord:
        """The run ``failed`` with ``error``, unless its worker recorded an outcome first."""
        def fail(record: RunRecord) -> None:
            if not record.done:
                record.status, record.finished, record.error = FAILED, now(), error
        return self.store.update(run_id, fail)

    def _attach(self, run_id: str) -> None:
        """Wait for the worker a previous console started (not this process's child: polled)."""
        record = self.store.get(run_id)
        self._attached = (record.worker_pid, record.worker_started)
        while worker_alive(*self._attached) and not self._stopping.is_set():
            time.sleep(ATTACH_POLL_S)
        self._attached = None
        self._settle(run_id, "the console was stopped while this run was running" if self._stopping.is_set()
                     else f"its worker (pid {record.worker_pid}) ended without recording an outcome")

    def _run(self, run_id: str) -> None:
        claimed = False

        def running(record: RunRecord) -> None:
            nonlocal claimed
            if record.status == QUEUED:  # never a run twice
                record.status, record.started, claimed = RUNNING, now(), True
        self.store.update(run_id, running)
        if not claimed:
            return
        folder = self.store.folder(run_id)
        with open(folder / "worker.txt", "wb") as out:
            self._current = subprocess.Popen(
                [sys.executable, "-m", "pillars.console.worker", str(folder)], stdout=out,
                stderr=subprocess.STDOUT, env={**os.environ, **self.env}, start_new_session=True)
            pid = self._current.pid

            def attached(record: RunRecord) -> None:  # the worker records itself too, once it runs
                if record.worker_pid is None:
                    record.worker_pid, record.worker_started = pid, process_started(pid)
            self.store.update(run_id, attached)
            code = self._current.wait()
        self._current = None
        error = folder / ERROR_FILE
        if self._stopping.is_set():
            message = "the console was stopped while this run was running"
        elif error.is_file():
            message = error.read_text().strip()
        else:
            message = f"the worker exited with {code}"
        self._settle(run_id, message)


def process_started(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from ``/proc``); None when it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def worker_alive(pid: int | None, started: str | None) -> bool:
    """Whether the worker ``pid`` that started at ``started`` still runs (not another process with its pid)."""
    return pid is not None and started is not None and process_started(pid) == started


def submit_to_kfp(host: str, namespace: str | None, pipeline: str, arguments: dict[str, Any],
                  run_name: str) -> str:
    """Compile ``pipeline`` and create a run on the KFP API at ``host`` (as ``pillars submit`` does); returns its id.

    Raises:
        ConfigError: the KFP API cannot be reached or refused the run.
    """
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(pipeline, os.path.join(tmp, "pipeline.yaml"))
        return submit_run(connect(host, namespace), package, arguments, run_name=run_name, experiment="pillars",
                          namespace=namespace)


def kfp_status(host: str, namespace: str | None, kfp_run_id: str) -> str | None:
    """The state of a KFP run (``SUCCEEDED``, ``RUNNING``...), None when the API does not answer."""
    try:
        return run_state(connect(host, namespace), kfp_run_id)
    except Exception:  # noqa: BLE001 - an unreachable cluster shows as unknown, it does not break the page
        logger.warning("cannot read KFP run %s at %s", kfp_run_id, host)
        return None
