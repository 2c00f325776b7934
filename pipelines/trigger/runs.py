"""Starting retraining runs, and counting the ones still running.

A :data:`Starter` starts one run for a model: :func:`local_starter` as a ``pillars run retraining`` child
process, :func:`kfp_starter` as a run on a Kubeflow Pipelines cluster. :class:`ActiveRuns` caps how many run
at once; :func:`registry_champions` tells which models may be retrained (those with a champion).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from pillars.components.registry import CHAMPION, alias_version
from pillars.pipelines.compile import compile_pipeline, parse_params, pipeline_factory
from pillars.pipelines.trigger.decide import LOG_NAME_CHARS

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class StartedRun:
    """A run a starter started: a reference to log (process id, KFP run id) and whether it still runs."""

    ref: str
    running: Callable[[], bool]


Starter = Callable[[str, str], StartedRun]
"""Starts a retraining run for a model (its first argument) for a reason (the second: the decision's reason,
passed as the run parameter ``reason``)."""

Champions = Callable[[str], bool]
"""Whether a registered model has a champion; raises when the registry cannot be read."""


class ActiveRuns:
    """The runs this trigger started that still run, capped at ``limit`` across all webhook calls.

    :meth:`reserve` takes a slot before a start (a start under way counts, so concurrent calls cannot
    overshoot); :meth:`add` fills it with the started run, :meth:`release` gives it back when the start
    failed. A run whose state cannot be read counts as running (fail closed).
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"max_active_runs must be >= 1, got {limit}")
        self.limit = limit
        self._runs: list[StartedRun] = []
        self._pending = 0
        self._lock = threading.Lock()

    def reserve(self) -> bool:
        """Take a slot; False when ``limit`` runs are running or starting."""
        with self._lock:
            self._runs = [run for run in self._runs if _still_running(run)]
            if len(self._runs) + self._pending >= self.limit:
                return False
            self._pending += 1
            return True

    def add(self, run: StartedRun) -> None:
        with self._lock:
            self._pending -= 1
            self._runs.append(run)

    def release(self) -> None:
        with self._lock:
            self._pending -= 1

    def count(self) -> int:
        """Runs running or starting now."""
        with self._lock:
            self._runs = [run for run in self._runs if _still_running(run)]
            return len(self._runs) + self._pending


def _still_running(run: StartedRun) -> bool:
    try:
        return run.running()
    except Exception:  # noqa: BLE001 (an unreadable state keeps the slot: fail closed)
        logger.warning("cannot read the state of %s; counted as running", run.ref, exc_info=True)
        return True


def registry_champions(tracking_uri: str | None = None) -> Champions:
    """Looks the ``champion`` alias up in the MLflow registry at ``tracking_uri`` (None: MLflow's
    configured one); :class:`pillars.components.registry.RegistryUnavailable` when it cannot be read."""

    def has_champion(model: str) -> bool:
        return alias_version(model, CHAMPION, MlflowClient(tracking_uri=tracking_uri)) is not None

    return has_champion


def log_file_name(model: str, at: float) -> str:
    """``retrain-<model>-<hash>-<time>.log`` from safe characters only, whatever the model name holds."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", model)[:LOG_NAME_CHARS].lstrip(".")
    digest = hashlib.sha256(model.encode()).hexdigest()[:8]
    return f"retrain-{safe}-{digest}-{int(at)}.log"


def local_starter(params: Sequence[str], log_dir: Path, command: Sequence[str] | None = None) -> Starter:
    """Starts ``pillars run retraining --param model_name=M`` (plus ``params``, then ``--param reason=R``) as a
    child process."""
    base = list(command) if command else [sys.executable, "-m", "pillars.pipelines.cli", "run", "retraining"]

    def start(model: str, reason: str) -> StartedRun:
        log_dir.mkdir(parents=True, exist_ok=True)
        log = open(log_dir / log_file_name(model, time.time()), "wb")
        args = [*base, "--param", f"model_name={model}", *[a for p in params for a in ("--param", p)],
                "--param", f"reason={reason}"]
        # Same process group as the trigger: stopping the trigger's group (`pillars down`) stops its runs.
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return StartedRun(f"pid {proc.pid}", lambda: proc.poll() is None)

    return start


def compile_retraining(output: str, params: Sequence[str], model: str,
                       cluster_options: Mapping[str, Any], reason: str = "") -> tuple[str, dict[str, Any]]:
    """Compile the retraining pipeline with ``cluster_options`` to ``output``; returns the package and the
    run's arguments (``params`` plus ``model_name`` and ``reason``)."""
    arguments = {**parse_params(params, pipeline_factory("retraining")(**cluster_options)), "model_name": model,
                 "reason": reason}
    return compile_pipeline("retraining", output, **cluster_options), arguments


def kfp_starter(host: str, experiment: str, params: Sequence[str], namespace: str | None = None,
                service_account: str | None = None, cluster_options: Mapping[str, Any] | None = None) -> Starter:
    """Starts a run of the retraining pipeline, compiled with ``cluster_options`` (the fields of
    :class:`pillars.pipelines.parameters.ClusterOptions`), on a Kubeflow Pipelines cluster."""
    options = dict(cluster_options or {})

    def start(model: str, reason: str) -> StartedRun:
        import tempfile

        from pillars.pipelines.submit import FINAL_STATES, connect, run_state, submit_run

        with tempfile.TemporaryDirectory() as tmp:
            package, arguments = compile_retraining(f"{tmp}/retraining.yaml", params, model, options, reason)
            client = connect(host, namespace)
            run_id = submit_run(client, package, arguments, run_name=f"retrain-{model}", experiment=experiment,
                                namespace=namespace, enable_caching=False, service_account=service_account)

        def running() -> bool:
            return run_state(client, run_id) not in FINAL_STATES

        return StartedRun(f"kfp run {run_id}", running)

    return start
