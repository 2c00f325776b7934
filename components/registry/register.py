"""Step 5, registration: log the model to MLflow with its lineage, register a version, move the aliases.

Every registered version gets alias ``challenger``; :func:`promote` moves ``champion`` (only when the
gate approved), compare-and-set against the champion the gate compared with. Registering the same
MLflow run twice returns the existing version, and still completes what the first try left undone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import mlflow

from pillars.components.errors import RegistryError
from pillars.components.model.mlflow_model import EXAMPLE_ROWS, log_pillars_model
from pillars.components.model.predictor import PROFILE_FILE
from pillars.components.records import GateDecision
from pillars.components.data.splits import lineage_tags, load_metadata, load_split
from pillars.components.task import Examples
from pillars.components.registry import (ANY, CHALLENGER, CHAMPION, REASON_TAG, SIGNATURE_TAG, AnyVersion,
                                         ChampionMoved,
                                         LockTiming, RegistryUnavailable, alias_version, check_same_task, client,
                                         identity, mismatch, move_alias, parse_version, search_versions,
                                         signature_key)
from pillars.components.settings import Settings, package_version
from pillars.components.registry.tracking import configure_tracking

logger = logging.getLogger(__name__)


def code_version() -> str:
    """Package version plus the git commit (``PILLARS_GIT_SHA``, else ``git rev-parse`` when in a checkout)."""
    sha = Settings().git_sha
    if not sha:
        try:
            sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                 timeout=5, cwd=Path(__file__).parent, check=False).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            sha = ""
    return f"{package_version()}+{sha}" if sha else package_version()


def register_model(
    model_dir: str | Path,
    profile: Mapping[str, object] | None,
    model_name: str,
    mlflow_run_id: str,
    lineage: Mapping[str, str],
    example_inputs: Examples | None = None,
) -> str:
    """Log the model in the given MLflow run and register it as a new version of ``model_name``.

    Args:
        model_dir: a saved model folder (:func:`pillars.components.model.predictor.save_model`).
        profile: the training data profile, stored as ``data_profile.json`` beside the weights.
        model_name: registered model name.
        mlflow_run_id: the run the model belongs to (training's run).
        lineage: tags for the version (KFP run id, data hash, gate decision, ...).
        example_inputs: a few rows of the model's inputs (named arrays) for the input example.

    Returns:
        The version number (as a string); the existing one when this run was registered before (a
        retried step), which then also gets ``challenger`` unless a newer version holds it.
    """
    c = client()
    existing = search_versions(model_name, c, run_id=mlflow_run_id)
    if existing:
        version = str(existing[0].version)
        logger.info("run %s is already registered as %s version %s", mlflow_run_id, model_name, version)
        challenger = alias_version(model_name, CHALLENGER, c)
        if challenger is None or int(challenger) < int(version):
            move_alias(model_name, CHALLENGER, version, f"registered from run {mlflow_run_id} (retried)", c)
        return version
    with tempfile.TemporaryDirectory() as tmp:
        profile_path = None
        if profile is not None:
            profile_path = Path(tmp) / PROFILE_FILE
            profile_path.write_text(json.dumps(profile))
        with mlflow.start_run(run_id=mlflow_run_id):
            info = log_pillars_model(model_dir, profile_path, example_inputs)
    tags = {"mlflow_run_id": mlflow_run_id, "code_version": code_version(), **lineage}
    version = mlflow.register_model(info.model_uri, model_name, tags={k: str(v) for k, v in tags.items()})
    move_alias(model_name, CHALLENGER, version.version, f"registered from run {mlflow_run_id}", c)
    return str(version.version)


def promote(model_name: str, version: str, why: str, expected: str | None | AnyVersion = ANY,
            timing: LockTiming = LockTiming(), replace_task: bool = False) -> bool:
    """Make ``version`` the champion (recording the move); False when it already was.

    Every promotion (the pipeline's, the CLI's, the console's) comes through here, so none makes a
    version of another task or input signature the champion unless ``replace_task`` says so.

    Args:
        expected: the champion the decision was made against (None: there was none); the move
            happens only if it still is. ``ANY`` (a manual promotion) moves it from wherever it is
            (and still only if it is where the task check read it).
        replace_task: let ``version`` replace a champion of another task or signature (the run
            parameter ``replace_task``); the alias history records it.

    Raises:
        ConfigError: ``version`` is not a version number.
        TaskMismatch: ``version`` is for another task or signature than the champion; nothing moved.
        ChampionMoved: the champion is no longer ``expected``; nothing moved.
    """
    version = parse_version(version)
    c = client()
    if replace_task:
        current = alias_version(model_name, CHAMPION, c)
        if current is not None and current != version:
            why_not = mismatch(identity(model_name, current, c), identity(model_name, version, c),
                               f"v{version}", f"champion v{current}")
            if why_not is not None:
                why = f"{why}; replaces the task ({why_not}; replace_task=true)"
    else:
        current = check_same_task(model_name, version, "promote", c)
    if isinstance(expected, AnyVersion):
        expected = current
    event = move_alias(model_name, CHAMPION, version, why, c, expected=expected, timing=timing)
    if event is not None:
        logger.info("%s: champion %s -> %s (%s)", model_name, event.from_version, event.to_version, why)
    return event is not None


Regate = Callable[[], GateDecision]
"""Re-runs the gate against the current champion."""


def promote_gated(model_name: str, version: str, decision: GateDecision, regate: Regate,
                  attempts: int = 3, timing: LockTiming = LockTiming(), replace_task: bool = False) -> bool:
    """Promote a gate-approved ``version`` only while the champion is still the one it was gated
    against (``decision.champion_version``); when another run moved the champion meanwhile, gate again
    against the new one. ``replace_task``: as :func:`promote`.

    Returns:
        True when ``version`` became champion; False when the re-gate rejected it (nothing moved).

    Raises:
        RegistryUnavailable: the champion kept moving for ``attempts`` gates, or the registry failed.
    """
    for _ in range(attempts):
        try:
            promote(model_name, version, f"gate approved: {decision.reasons_text()}",
                    expected=decision.champion_version, timing=timing, replace_task=replace_task)
            return True
        except ChampionMoved as moved:
            logger.warning("%s: champion moved from v%s to v%s since the gate; gating v%s again",
                           model_name, decision.champion_version, moved.actual, version)
            decision = regate()
            if not decision.approved:
                logger.warning("%s: v%s not promoted: %s", model_name, version, decision.reasons_text())
                return False
    raise RegistryUnavailable(f"{model_name}: champion kept moving during {attempts} gates of v{version}; retry")


def champion_version(model_name: str) -> str | None:
    """The current champion version of ``model_name``, or None."""
    return alias_version(model_name, CHAMPION)


def task_of_champion(model_name: str) -> tuple[str, str]:
    """The task the champion of ``model_name`` was trained on: its ``task`` tag (a task name or
    ``package.module:attribute``) and its ``task_args`` tag (JSON; ``{}`` when untagged).

    Raises:
        RegistryError: the model has no champion, or the champion has no task tag.
    """
    version = champion_version(model_name)
    if version is None:
        raise RegistryError(f"{model_name} has no champion to retrain; pass the task explicitly")
    tags = client().get_model_version(model_name, version).tags
    if not tags.get("task"):
        raise RegistryError(f"{model_name} v{version} has no task tag; pass the task explicitly")
    return tags["task"], tags.get("task_args") or "{}"


@contextlib.contextmanager
def downloaded_version(model_name: str, version: str) -> Iterator[Path]:
    """Download a registered version's MLflow model folder into a temporary folder, removed on exit."""
    with tempfile.TemporaryDirectory(prefix="pillars-model-") as target:
        yield Path(mlflow.artifacts.download_artifacts(f"models:/{model_name}/{version}", dst_path=target))


def run_register(model_dir: str, metadata_path: str, test_path: str, model_name: str, mlflow_run_id: str,
                 kfp_run_id: str, decision: GateDecision, tracking_uri: str = "", reason: str = "") -> str:
    """Register the trained model with its lineage and gate decision (:meth:`GateDecision.to_tags`); returns
    the version. ``reason`` (the run parameter: why the run started) becomes the version's ``pillars.reason``
    tag when given."""
    configure_tracking(tracking_uri or None)
    metadata = load_metadata(metadata_path)
    lineage = {"kfp_run_id": kfp_run_id, "data_hash": metadata.data_hash, "task": metadata.task,
               SIGNATURE_TAG: signature_key(metadata.task_instance().signature(metadata.prep).to_dict()["inputs"]),
               "task_args": json.dumps(metadata.task_args or {}, sort_keys=True),
               "source": metadata.source, **decision.to_tags(), **({REASON_TAG: reason} if reason else {}),
               **{k.removeprefix("pillars."): v for k, v in lineage_tags(metadata).items()}}
    test = load_split(test_path)
    examples = {k: v[:EXAMPLE_ROWS] for k, v in test.items()}
    return register_model(model_dir, metadata.profile, model_name, mlflow_run_id, lineage, examples)
