"""Re-registering model versions that an older Pillars logged, so ``mlflow.pyfunc.load_model`` loads them.

Pillars 0.1 installed the bare ``components`` package, and the pyfunc code it logged with each model
says ``from components.models import Predictor``; that module no longer exists, and neither does the
single-tensor predictor that later versions' pyfunc code imported (``pillars.components.models``), so
MLflow cannot load those versions as pyfuncs (the model server still serves them: their ``pillars.v1``
config is translated into the tabular task's on load, :mod:`pillars.components.model.predictor`).
:func:`upgrade_version` logs the same weights, translated into the current saved-model format (task
reference, preprocessing) with the data profile and the current pyfunc code, into the version's own MLflow
run (same params and metrics) and registers the result as a new version with the old one's tags, plus
``upgraded_from``. Aliases do not move: promoting the new version is a separate, recorded decision
(``pillars models promote``).
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import yaml
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.tracking import MlflowClient

from pillars.components.errors import RegistryError
from pillars.components.model.frames import frame_to_inputs
from pillars.components.model.mlflow_model import log_pillars_model
from pillars.components.model.predictor import CONFIG_FILE, FORMAT, PROFILE_FILE, load_predictor, locate_model_dir
from pillars.components.registry.register import code_version
from pillars.components.registry import client, get_model, search_versions
from pillars.components.registry.tracking import ensure_experiment

logger = logging.getLogger(__name__)

LEGACY_IMPORT = re.compile(r"^\s*(?:from|import)\s+(?:components|serving|pipelines)\b", re.M)
"""An import of the bare package names Pillars 0.1 installed."""
UPGRADED_FROM = "upgraded_from"
"""Version tag naming the version an upgraded one was re-logged from."""


@dataclass(frozen=True)
class Upgrade:
    """One version re-registered with the current pyfunc code."""

    name: str
    from_version: str
    to_version: str


def pyfunc_code(model_folder: Path) -> str:
    """The pyfunc code an MLflow model folder was logged with ("models from code"); empty when none."""
    mlmodel = yaml.safe_load((model_folder / "MLmodel").read_text())
    code_path = (mlmodel.get("flavors", {}).get("python_function", {}) or {}).get("model_code_path")
    if not code_path:
        return ""
    code_file = model_folder / Path(code_path).name
    return code_file.read_text() if code_file.is_file() else ""


def is_legacy(model_folder: Path) -> bool:
    """Whether the model's pyfunc code imports the bare 0.1 package names (``components.models``), or its
    saved config is of an older format than the task API's (``pillars.v1``)."""
    if LEGACY_IMPORT.search(pyfunc_code(model_folder)):
        return True
    config = json.loads((locate_model_dir(model_folder) / CONFIG_FILE).read_text())
    return config.get("format") != FORMAT


def upgrade_version(name: str, version: str, mlflow_client: MlflowClient | None = None) -> Upgrade | None:
    """Re-log version ``version`` of ``name`` with the current pyfunc code as a new version.

    Returns:
        The upgrade, or None when the version already loads with this Pillars (nothing is written).

    Raises:
        RegistryError: the version does not exist.
    """
    c = mlflow_client or client()
    try:
        old = c.get_model_version(name, version)
    except MlflowException as e:
        raise RegistryError(f"model {name!r} has no version {version!r}: {e.message}") from e
    with tempfile.TemporaryDirectory(prefix="pillars-upgrade-") as tmp:
        folder = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=tmp))
        if not is_legacy(folder):
            return None
        model_dir = locate_model_dir(folder)
        profile = model_dir / PROFILE_FILE
        example = Model.load(folder).load_input_example(str(folder))
        rows = None
        if example is not None:
            rows = frame_to_inputs(load_predictor(model_dir).signature, example)
        run = (dict(run_id=old.run_id) if old.run_id
               else dict(experiment_id=ensure_experiment(name), run_name=f"upgrade-{name}-v{version}"))
        with mlflow.start_run(**run):
            info = log_pillars_model(model_dir, profile if profile.is_file() else None, rows)
    tags = {**old.tags, "code_version": code_version(), UPGRADED_FROM: str(version)}
    new = mlflow.register_model(info.model_uri, name, tags=tags)
    if old.description:
        c.update_model_version(name, new.version, old.description)
    logger.info("%s v%s re-registered as v%s with the current pyfunc code", name, version, new.version)
    return Upgrade(name, str(version), str(new.version))


def upgrade_model(name: str, version: str | None = None) -> list[Upgrade]:
    """Upgrade one version of ``name``, or (``version`` None) every version whose pyfunc code is legacy.

    Raises:
        RegistryError: no registered model ``name``, or no such version.
    """
    c = client()
    get_model(name, c)
    if version is not None:
        done = upgrade_version(name, version, c)
        return [done] if done else []
    existing = search_versions(name, c)
    upgraded = {v.tags.get(UPGRADED_FROM) for v in existing}
    results = []
    for v in sorted((str(v.version) for v in existing), key=int):
        if v in upgraded:  # re-logged before: its upgrade is already a version
            continue
        if (done := upgrade_version(name, v, c)) is not None:
            results.append(done)
    return results
