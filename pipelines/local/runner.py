"""Running a pipeline on this machine with ``kfp.local`` (the embedded default: no cluster).

Steps die with ``pillars run``. kfp.local starts each step as ``sh -c '... python3 -m kfp...'`` and
waits on it; a runner killed with ``kill -9`` runs no clean-up, so its steps would run on, orphaned.
:func:`run_in_own_group` therefore runs the pipeline in a child process that leads a process group of
its own (every step and each DDP worker joins it) and gets ``SIGTERM`` from the kernel when the
``pillars run`` process dies (``PR_SET_PDEATHSIG``); :func:`end_group_on_sigterm` makes that signal
kill the whole group at once. Ctrl-C is passed on to the group. Linux only; elsewhere the pipeline
runs in the ``pillars run`` process itself, as before.

The child is a ``fork`` of ``pillars run`` when that process has a single thread: it keeps the modules
already imported to check the arguments (torch, MLflow, KFP: ~9 s of CPU a fresh interpreter would spend
again) and ends with ``os._exit`` once its stdio is flushed. A process with other threads (a test runner,
an embedding application) starts a fresh interpreter instead, since a fork copies only the forking thread
and any lock another thread held stays held in the child.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

from kfp import local

from pillars.components.settings import Settings
from pillars.components.registry.tracking import configure_tracking

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
"""``prctl`` option: the signal this process gets when its parent dies (linux/prctl.h)."""


def groups_supported() -> bool:
    """Whether :func:`run_in_own_group` can tie a runner's life to its parent's (Linux)."""
    return sys.platform.startswith("linux")


def die_with(parent: int, sig: int = signal.SIGTERM) -> None:
    """In the forked child, before exec: get ``sig`` when ``parent`` dies (and at once if it already did)."""
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        os._exit(70)
    if os.getppid() != parent:
        os.kill(os.getpid(), sig)


def run_in_own_group(command: list[str], in_fork: Callable[[], int] | None = None) -> int:
    """Run a runner as a child that leads its own process group and ends, with every process of the group,
    when this process dies.

    Args:
        command: the runner as a fresh interpreter (``python -m pillars.pipelines.cli run ... --runner``).
        in_fork: the same runner as a function, run in a fork of this process instead when it has a single
            thread (see the module docstring); its return value is the child's exit status.

    Returns:
        The child's exit status (128 + signal when a signal ended it).
    """
    parent = os.getpid()
    if in_fork is not None and threading.active_count() == 1:
        pid = _fork_runner(parent, in_fork)
    else:
        pid = subprocess.Popen(command, process_group=0, preexec_fn=lambda: die_with(parent)).pid
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
        except KeyboardInterrupt:  # Ctrl-C reached this process's group only: pass it on
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGINT)


def _fork_runner(parent: int, runner: Callable[[], int]) -> int:
    """Fork; the child leads a new process group, dies with ``parent``, runs ``runner`` and exits with its
    status without returning into the caller's stack (nor running its exit handlers). Returns the child's pid."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        with contextlib.suppress(OSError):  # also here, so that the group exists before the parent signals it
            os.setpgid(pid, pid)
        return pid
    code = 70
    try:
        os.setpgid(0, 0)
        die_with(parent)
        code = runner()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001 - the child must never return into the parent's stack
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        logging.shutdown()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def end_group_on_sigterm() -> None:
    """In a runner started by :func:`run_in_own_group`: SIGTERM (its parent died, or someone asked it to
    stop) kills the runner's whole process group, steps included, at once."""
    def kill_group(signum: int, frame: object) -> None:
        os.killpg(os.getpgrp(), signal.SIGKILL)

    signal.signal(signal.SIGTERM, kill_group)


def run_local(pipeline: Callable[..., Any], arguments: Mapping[str, Any], settings: Settings | None = None,
              caching: bool = True, log_file: Path | None = None, output: TextIO | None = None) -> str:
    """Run ``pipeline`` through ``kfp.local``'s SubprocessRunner in the current Python environment.

    MLflow is the server at ``MLFLOW_TRACKING_URI`` when set, else the local store under
    ``PILLARS_HOME``; task outputs go to ``<home>/pipeline_root``.

    Args:
        log_file: a file the steps' output goes to (kfp.local prints it); None: to this process's stdout.
        output: a stream the steps' output goes to instead (e.g. :class:`pillars.pipelines.local.progress.StepReporter`'s).

    Returns:
        The tracking URI the run used.
    """
    from pillars.pipelines.training import check_arguments, check_model_owner

    check_arguments(pipeline, dict(arguments))
    settings = settings or Settings()
    home = settings.resolved_home()
    uri = configure_tracking(arguments.get("tracking_uri") or None, settings)
    defaults = {"tracking_uri": uri, "checkpoint_root": str(settings.resolved_checkpoint_root())}
    accepted = pipeline.component_spec.inputs or {}  # the optimize pipeline takes no checkpoint_root
    args = {**{k: v for k, v in defaults.items() if k in accepted}, **arguments}
    root = home / "pipeline_root"
    root.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root),
               enable_caching=caching, cache_root=str(Path(root) / ".cache"), raise_on_error=True)
    check_model_owner(pipeline, dict(arguments))  # the registry is configured: before any step
    with contextlib.ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings())
        # kfp.local notes that resource requests do nothing locally and that the components name
        # an image it does not use: both expected for the embedded default.
        warnings.filterwarnings("ignore", module="kfp.local")
        stream = output
        if stream is None and log_file is not None:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            stream = stack.enter_context(open(log_file, "w"))
        if stream is not None:
            stack.enter_context(contextlib.redirect_stdout(stream))
            stack.enter_context(contextlib.redirect_stderr(stream))
        pipeline(**args)
    return uri
