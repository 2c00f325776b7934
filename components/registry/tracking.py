"""Where the MLflow registry lives, found the same way by every command.

``MLFLOW_TRACKING_URI`` when set, else the embedded store of this folder, ``<PILLARS_HOME>/mlflow.db``
(``./.pillars/mlflow.db``): the store ``pillars run`` writes is the one ``pillars models``,
``pillars serve``, ``pillars up``, the trigger and ``pillars deploy`` read. :class:`EpochLogger`
sends a training run's per-epoch metrics there.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import httpx
import mlflow

from pillars.components.errors import ConfigError
from pillars.components.settings import Settings

REACH_TIMEOUT_S = 5.0


def default_tracking_uri(settings: Settings | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else SQLite under ``<PILLARS_HOME>/mlflow.db``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if uri:
        return uri
    home = _home(settings)
    return f"sqlite:///{home / 'mlflow.db'}"


def _home(settings: Settings | None) -> Path:
    """The embedded default's home folder: ``settings``', or the ``PILLARS_HOME`` setting read now."""
    return (settings or Settings()).resolved_home()


def is_local_store(uri: str) -> bool:
    """Whether ``uri`` is an embedded store (SQLite or files) rather than a tracking server."""
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def configure_tracking(uri: str | None = None, settings: Settings | None = None, create: bool = True) -> str:
    """Point MLflow at ``uri`` (or the default) and return it.

    Args:
        uri: a tracking URI; empty or None: :func:`default_tracking_uri`.
        settings: where the embedded store lives.
        create: a writer (a pipeline step) creates the embedded store's folder; a reader (``pillars
            models``, ``serve``, ``up``, the trigger, ``deploy``) asks for an existing store instead,
            and checks that a tracking server answers.

    Raises:
        ConfigError: (readers only) the embedded store does not exist, or the server cannot be reached.
    """
    uri = (uri or "").strip() or default_tracking_uri(settings)
    if is_local_store(uri):
        if create:
            _home(settings).mkdir(parents=True, exist_ok=True)
        else:
            _check_local_store(uri)
    elif not create:
        check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    return uri


def check_reachable(uri: str) -> None:
    """Fail fast, in one line naming ``uri``, when no MLflow server answers there.

    Any HTTP answer counts (a server with auth answers 401 to a bare request); only a connection
    failure or time-out does not. MLflow's own client would retry for minutes instead.
    """
    if not uri.startswith(("http://", "https://")):
        return
    try:
        httpx.get(f"{uri.rstrip('/')}/health", timeout=REACH_TIMEOUT_S)
    except httpx.HTTPError as e:
        raise ConfigError(f"cannot reach the MLflow registry at {uri}: {type(e).__name__}: {e}") from e


def _check_local_store(uri: str) -> None:
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))  # sqlite:////abs/path or sqlite:///relative/path
    else:
        path = Path(uri.removeprefix("file:").removeprefix("//"))
    if not path.exists():
        raise ConfigError(f"no MLflow registry at {uri}: train a model here first (pillars run training), "
                          "or set MLFLOW_TRACKING_URI to your MLflow server")


def ensure_experiment(name: str, settings: Settings | None = None) -> str:
    """The id of experiment ``name``, created if missing (artifacts under ``<home>/artifacts`` for a local store)."""
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if is_local_store(mlflow.get_tracking_uri()):
        location = (_home(settings) / "artifacts").as_uri()
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except mlflow.exceptions.MlflowException:
        # Created concurrently by another step: read it back.
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


class EpochLogger:
    """Logs per-epoch metrics to an MLflow run in batches: at most one request every ``interval``
    seconds, so short epochs do not pay a round trip each, while a long run still shows its curve."""

    def __init__(self, run_id: str, interval: float = 2.0) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient()
        self.run_id = run_id
        self.interval = interval
        self.pending: list[Any] = []
        self.last = time.monotonic()

    def __call__(self, epoch: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now_ms = int(time.time() * 1000)
        self.pending += [Metric(k, float(v), now_ms, epoch) for k, v in metrics.items()]
        if time.monotonic() - self.last >= self.interval:
            self.flush()

    def flush(self) -> None:
        """Send what is buffered."""
        if self.pending:
            self.client.log_batch(self.run_id, metrics=self.pending)
            self.pending = []
        self.last = time.monotonic()

    def backfill(self, history: list[dict[str, float]]) -> None:
        """After a resume, log the checkpointed epochs a killed attempt had not sent yet."""
        logged = {m.step for m in self.client.get_metric_history(self.run_id, "val_loss")}
        for entry in history:
            if entry["epoch"] not in logged:
                self(int(entry["epoch"]), {k: v for k, v in entry.items() if k != "epoch"})
        self.flush()
