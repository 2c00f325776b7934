"""``--workers N``: N server processes answering on the same HTTP and gRPC ports, one per core.

The process started (the supervisor) loads nothing: it starts N copies of ``python -m pillars.serving`` with
the same flags (``--workers 1 --reuse_port``), each of which loads the model, runs its own batcher and drift
window, follows the registry alias itself (hot reload reaches every worker) and binds both ports with
``SO_REUSEPORT``, so the kernel spreads new connections over the workers. Metrics are merged across workers
by prometheus-client's multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR`` names a private temp folder created
here, given to the workers only, and removed when the server ends (:mod:`pillars.serving.monitoring.workers`).

Every worker dies with the server: the workers are in the supervisor's process group (stopping the group
stops them), a SIGTERM or SIGINT to the supervisor is passed on to them, and a worker gets SIGTERM from the
kernel when the supervisor dies (``PR_SET_PDEATHSIG``, Linux), even by ``kill -9``. A worker that exits
ends the server: the others are stopped and the supervisor exits with the worker's status (2: it could not
serve), so a pod restarts as it would with one process.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence

logger = logging.getLogger(__name__)

MULTIPROC_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus-client's own variable: the folder where every process writes its metric values."""
PR_SET_PDEATHSIG = 1
"""``prctl`` option: the signal this process gets when its parent dies (linux/prctl.h)."""
WATCH_INTERVAL_S = 0.5
"""Seconds between two looks at whether a worker exited."""
STOP_GRACE_S = 30.0
"""Seconds the workers have to finish after SIGTERM before they are killed."""


def worker_command(argv: Sequence[str]) -> list[str]:
    """The command line of one worker: the server's own flags, one worker, ports shared (later flags win)."""
    return [sys.executable, "-m", "pillars.serving", *argv, "--workers", "1", "--reuse_port"]


def serve_workers(argv: Sequence[str], workers: int) -> int:
    """Run ``workers`` worker processes with ``argv`` (the server's flags) until one of them exits or this
    process is asked to stop. Returns the exit status (the first worker's to exit unless asked to stop)."""
    metrics_dir = tempfile.mkdtemp(prefix="pillars-metrics-")
    env = {**os.environ, MULTIPROC_DIR_VARIABLE: metrics_dir}
    parent = os.getpid()
    children: list[subprocess.Popen[bytes]] = []
    stopping = threading.Event()

    def stop(_sig: int, _frame: object = None) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for _ in range(workers):
            children.append(subprocess.Popen(worker_command(argv), env=env, preexec_fn=lambda: _die_with(parent)))
        logger.info("serving with %d worker processes (pids %s)", workers, ", ".join(str(c.pid) for c in children))
        while not stopping.is_set() and all(child.poll() is None for child in children):
            stopping.wait(WATCH_INTERVAL_S)
        exited = next((child for child in children if child.returncode is not None), None)
        if exited is not None and not stopping.is_set():
            logger.error("worker %d exited with status %d; stopping the other workers", exited.pid,
                         _status(exited.returncode))
        _signal_all(children, signal.SIGTERM)
        _wait_all(children, STOP_GRACE_S)
        return 0 if exited is None or stopping.is_set() else _status(exited.returncode)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _signal_all(children, signal.SIGKILL)
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _status(code: int) -> int:
    return code if code >= 0 else 128 - code


def _wait_all(children: list[subprocess.Popen[bytes]], timeout: float) -> None:
    for child in children:
        try:
            child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            logger.warning("worker %d did not stop within %.0f s; killing it", child.pid, timeout)
            child.kill()
            child.wait()


def _signal_all(children: list[subprocess.Popen[bytes]], sig: int) -> None:
    for child in children:
        if child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(sig)


def _die_with(parent: int) -> None:
    """In the forked worker, before exec: get SIGTERM when ``parent`` dies (at once if it already did)."""
    if sys.platform.startswith("linux"):
        if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            os._exit(70)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)
