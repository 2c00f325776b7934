"""Runs submitted from the console: recorded on disk, run one at a time by a worker process.

Each run is a folder ``<PILLARS_HOME>/console/runs/<id>/`` holding ``run.json`` (what was asked,
status, times), ``log.txt`` (kfp.local's output, read by :mod:`pillars.console.steplog`) and, when
it failed, ``error.txt`` (one line). Local runs wait in a FIFO queue; a dispatcher thread starts
``python -m pillars.console.worker <folder>`` for the next one when the previous one ended, so two
training runs never compete for this machine. With a KFP host configured, runs go to the cluster
through ``kfp.Client`` instead (the same compile-and-submit path as ``pillars submit``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import secrets
import subprocess
import sys
import tempfile
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pillars.components.errors import ConfigError
from pillars.pipelines.compile import compile_pipeline
from pillars.pipelines.stack import stop_group

logger = logging.getLogger("pillars.console.runs")

QUEUED, RUNNING, SUCCEEDED, FAILED, SUBMITTED = "queued", "running", "succeeded", "failed", "submitted"
LOG_FILE, RECORD_FILE, ERROR_FILE = "log.txt", "run.json", "error.txt"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclasses.dataclass
class RunRecord:
    """What the console knows of one run."""

    id: str
    pipeline: str
    arguments: dict[str, Any]
    status: str = QUEUED
    created: str = dataclasses.field(default_factory=_now)
    started: str | None = None
    finished: str | None = None
    backend: str = "local"  # local (kfp.local) or kfp (a cluster)
    kfp_run_id: str | None = None
    error: str | None = None

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
        run_id = datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S") + secrets.token_hex(3)
        record = RunRecord(run_id, pipeline, dict(arguments), backend=backend)
        self.folder(run_id).mkdir(parents=True)
        self.save(record)
        return record

    def save(self, record: RunRecord) -> None:
        with self._lock:
            path = self.folder(record.id) / RECORD_FILE
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(dataclasses.asdict(record), indent=2))
            tmp.replace(path)  # readers never see half a record

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
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._current: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Settle runs a previous console left unfinished, then start the dispatcher thread."""
        for record in self.store.list():
            if record.status in (QUEUED, RUNNING):
                record.status, record.finished = FAILED, record.finished or _now()
                record.error = "the console stopped before this run finished"
                self.store.save(record)
        self._thread = threading.Thread(target=self._dispatch, name="pillars-console-runs", daemon=True)
        self._thread.start()

    def submit(self, record: RunRecord) -> None:
        self._queue.put(record.id)

    def waiting(self) -> int:
        return self._queue.qsize()

    def stop(self) -> None:
        """Stop dispatching and end the running worker's process group."""
        self._queue.put(None)
        proc = self._current
        if proc is not None and proc.poll() is None:
            stop_group(proc.pid)
        if self._thread is not None:
            self._thread.join(timeout=20)

    def _dispatch(self) -> None:
        while (run_id := self._queue.get()) is not None:
            try:
                self._run(run_id)
            except Exception:  # noqa: BLE001 - one bad run must not stop the queue; it is recorded failed
                logger.exception("run %s could not be started", run_id)
                record = self.store.get(run_id)
                record.status, record.finished, record.error = FAILED, _now(), "the worker could not be started"
                self.store.save(record)

    def _run(self, run_id: str) -> None:
        record = self.store.get(run_id)
        folder = self.store.folder(run_id)
        record.status, record.started = RUNNING, _now()
        self.store.save(record)
        with open(folder / "worker.txt", "wb") as out:
            self._current = subprocess.Popen(
                [sys.executable, "-m", "pillars.console.worker", str(folder)], stdout=out,
                stderr=subprocess.STDOUT, env={**os.environ, **self.env}, start_new_session=True)
            code = self._current.wait()
        self._current = None
        record = self.store.get(run_id)
        record.finished = _now()
        record.status = SUCCEEDED if code == 0 else FAILED
        error = folder / ERROR_FILE
        if code != 0:
            record.error = error.read_text().strip() if error.is_file() else f"the worker exited with {code}"
        self.store.save(record)


def submit_to_kfp(host: str, namespace: str | None, pipeline: str, arguments: dict[str, Any],
                  run_name: str) -> str:
    """Compile ``pipeline`` and create a run on the KFP API at ``host`` (as ``pillars submit`` does); returns its id.

    Raises:
        ConfigError: the KFP API cannot be reached.
    """
    import kfp

    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(pipeline, os.path.join(tmp, "pipeline.yaml"))
        try:
            client = kfp.Client(host=host, namespace=namespace)
            run = client.create_run_from_pipeline_package(
                package, arguments=arguments, run_name=run_name, experiment_name="pillars", namespace=namespace)
        except Exception as e:  # kfp raises urllib3/requests/ApiException errors of many kinds here
            raise ConfigError(f"cannot submit to Kubeflow Pipelines at {host}: {type(e).__name__}: {e}") from e
    return str(run.run_id)


def kfp_status(host: str, namespace: str | None, kfp_run_id: str) -> str | None:
    """The state of a KFP run (``SUCCEEDED``, ``RUNNING``...), None when the API does not answer."""
    import kfp

    try:
        run = kfp.Client(host=host, namespace=namespace).get_run(kfp_run_id)
    except Exception:  # noqa: BLE001 - an unreachable cluster shows as unknown, it does not break the page
        logger.warning("cannot read KFP run %s at %s", kfp_run_id, host)
        return None
    return str(run.state)

