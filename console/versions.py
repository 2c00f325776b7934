"""What the console shows of registered versions: metrics, lineage, the gate's decision, alias history.

Reads through :mod:`pillars.components.registry` (the CLI's registry code) and MLflow's client; moves
aliases only through :func:`pillars.components.registry.register.promote` and
:func:`pillars.components.registry.rollback`, so the console follows the CLI's compare-and-set and
history rules.
"""

from __future__ import annotations

import dataclasses
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException

from pillars.components import registry
from pillars.components.errors import RegistryError
from pillars.components.records import VARIANT_TAG, GateDecision, VersionRecord
from pillars.components.registry.register import promote

ARTIFACTS = {
    "report.html": "evaluation report",
    "plots/learning_curve.png": "learning curve",
    "plots/confusion_matrix.png": "confusion matrix",
}
"""Run artifacts the console links to (and serves); nothing else is read from the artifact store."""

PARENT_TAGS = ("pillars.warm_started_from", "pillars.parent_version", "parent_version", "optimized_from")
"""Tags (version or run) that name the version a model was derived from: retraining, optimisation."""


@dataclasses.dataclass
class Variant:
    """What an optimised variant's version tags say: what it is, what it came from, what it costs and gains."""

    variant: str
    parent_version: str | None
    size_bytes: int | None
    metric: str | None
    metric_delta: float | None
    latency_ms_b1: float | None
    throughput_b64: float | None

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> Variant | None:
        """The variant ``tags`` describe; None for a trained version (no ``pillars.variant``)."""
        if not tags.get(VARIANT_TAG):
            return None

        def number(name: str) -> float | None:
            try:
                return float(tags[f"pillars.{name}"])
            except (KeyError, ValueError):
                return None
        size = number("size_bytes")
        return cls(variant=tags[VARIANT_TAG], parent_version=tags.get("pillars.parent_version") or None,
                   size_bytes=None if size is None else int(size), metric=tags.get("pillars.metric") or None,
                   metric_delta=number("metric_delta"), latency_ms_b1=number("latency_ms_b1"),
                   throughput_b64=number("throughput_b64"))


def format_bytes(size: int | None) -> str:
    """``1.2 MB``-style size; ``–`` when unknown."""
    if size is None:
        return "–"
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.3g} {unit}"
        value /= 1000
    return f"{value:.3g} GB"


def split_variants(versions: list[VersionRecord]) -> tuple[list[VersionRecord], list[tuple[VersionRecord, Variant]]]:
    """Rows of :func:`pillars.components.registry.list_versions` as (trained versions, (variant row, variant))."""
    trained, variants = [], []
    for row in versions:
        variant = Variant.from_tags(row.tags)
        if variant is None:
            trained.append(row)
        else:
            variants.append((row, variant))
    return trained, variants


@dataclasses.dataclass
class VersionDetail:
    """One registered version as the version page shows it."""

    name: str
    version: str
    aliases: list[str]
    created: str
    run_id: str | None
    experiment_id: str | None
    tags: dict[str, str]
    metrics: dict[str, float]
    params: dict[str, str]
    gate_approved: bool | None
    gate_reasons: list[str]
    parent: str | None
    variant: Variant | None
    artifacts: list[tuple[str, str]]
    champion: str | None
    history: list[registry.AliasEvent]


def version_detail(name: str, version: str) -> VersionDetail:
    """Everything the version page shows about ``name`` version ``version``.

    Raises:
        RegistryError: no such model or version.
    """
    c = registry.client()
    model = registry.get_model(name, c)
    try:
        v = c.get_model_version(name, str(version))
    except MlflowException as e:
        raise RegistryError(f"{name} has no version {version!r}") from e
    aliases = sorted(a for a, target in (model.aliases or {}).items() if str(target) == str(v.version))
    run = c.get_run(v.run_id) if v.run_id else None
    tags = dict(v.tags)
    run_tags = dict(run.data.tags) if run else {}
    gate = GateDecision.from_tags(tags)
    parent = next((tags.get(t) or run_tags.get(t) for t in PARENT_TAGS if tags.get(t) or run_tags.get(t)), None)
    artifacts = []
    if run is not None:
        present = _artifact_paths(c, v.run_id)
        artifacts = [(path, label) for path, label in ARTIFACTS.items() if path in present]
    return VersionDetail(
        name=name, version=str(v.version), aliases=aliases,
        created=datetime.fromtimestamp(v.creation_timestamp / 1000, timezone.utc).isoformat(timespec="seconds"),
        run_id=v.run_id, experiment_id=run.info.experiment_id if run else None, tags=tags,
        metrics=dict(sorted((run.data.metrics if run else {}).items())),
        params=dict(sorted((run.data.params if run else {}).items())),
        gate_approved=None if gate is None else gate.approved, gate_reasons=gate.reasons if gate else [], parent=parent,
        variant=Variant.from_tags(tags),
        artifacts=artifacts, champion=registry.alias_version(name, registry.CHAMPION, c),
        history=registry.history(name, mlflow_client=c))


def _artifact_paths(c: Any, run_id: str) -> set[str]:
    found: set[str] = set()
    try:
        for item in c.list_artifacts(run_id):
            found.add(item.path)
            if item.is_dir and item.path == "plots":
                found.update(child.path for child in c.list_artifacts(run_id, "plots"))
    except MlflowException:
        return set()
    return found


def compare(name: str, a: str, b: str) -> tuple[list[str], dict[str, float], dict[str, float]]:
    """Metric names of both versions and each version's values (for a side-by-side table).

    Raises:
        RegistryError: no such model or version.
    """
    c = registry.client()
    metrics = []
    for version in (a, b):
        try:
            run_id = c.get_model_version(name, str(version)).run_id
        except MlflowException as e:
            raise RegistryError(f"{name} has no version {version!r}") from e
        metrics.append(dict(c.get_run(run_id).data.metrics) if run_id else {})
    return sorted(set(metrics[0]) | set(metrics[1])), metrics[0], metrics[1]


def promote_version(name: str, version: str, expected_champion: str | None, why: str) -> bool:
    """Make ``version`` champion if the champion is still ``expected_champion`` (what the person saw).

    Raises:
        RegistryError: the champion moved since the confirmation page was shown.
    """
    _check_unchanged(name, expected_champion)
    registry.get_model(name)
    return promote(name, version, why)


def rollback(name: str, expected_champion: str | None, why: str) -> registry.AliasEvent:
    """Restore the previous champion if the champion is still ``expected_champion``."""
    _check_unchanged(name, expected_champion)
    return registry.rollback(name, why)


def _check_unchanged(name: str, expected: str | None) -> None:
    current = registry.alias_version(name, registry.CHAMPION)
    if (current or "") != (expected or ""):
        raise RegistryError(f"{name}: the champion moved to v{current} since you confirmed (you saw "
                            f"v{expected or '-'}); look again before moving it")


class ArtifactCache:
    """Run artifacts of :data:`ARTIFACTS`, downloaded once (they never change) into a folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()

    def get(self, run_id: str, path: str) -> Path:
        """The local copy of artifact ``path`` of run ``run_id``.

        Raises:
            KeyError: ``path`` is not one the console serves, or the run has no such artifact.
        """
        if path not in ARTIFACTS or not run_id.isalnum():
            raise KeyError(path)
        target = self.folder / run_id / path
        with self._lock:
            if not target.is_file():
                try:
                    mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path,
                                                        dst_path=str(self.folder / run_id))
                except (MlflowException, OSError) as e:
                    raise KeyError(path) from e
        return target
