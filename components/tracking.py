"""Where MLflow lives: a server named by ``MLFLOW_TRACKING_URI``, else the embedded local store."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow

from components.settings import Settings


def default_tracking_uri(settings: Settings | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else SQLite under ``<PILLARS_HOME>/mlflow.db``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if uri:
        return uri
    home = (settings or Settings()).resolved_home()
    return f"sqlite:///{home / 'mlflow.db'}"


def is_local_store(uri: str) -> bool:
    """Whether ``uri`` is an embedded store (SQLite or files) rather than a tracking server."""
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def configure_tracking(uri: str | None = None, settings: Settings | None = None) -> str:
    """Point MLflow at ``uri`` (or the default) and return it; creates the home folder for a local store."""
    uri = (uri or "").strip() or default_tracking_uri(settings)
    if is_local_store(uri):
        (settings or Settings()).resolved_home().mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    return uri


def ensure_experiment(name: str, settings: Settings | None = None) -> str:
    """The id of experiment ``name``, created if missing (artifacts under ``<home>/artifacts`` for a local store)."""
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if is_local_store(mlflow.get_tracking_uri()):
        location = ((settings or Settings()).resolved_home() / "artifacts").as_uri()
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except mlflow.exceptions.MlflowException:
        # Created concurrently by another step: read it back.
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def artifact_home(settings: Settings | None = None) -> Path:
    """Local artifact folder of the embedded store."""
    return (settings or Settings()).resolved_home() / "artifacts"
