"""What the loop's steps store and read back, as typed values parsed in one place.

- Test metrics: the evaluation step logs a model's test metrics to MLflow as ``test_<name>``
  (:func:`as_test_metric`); :func:`read_test_metrics` reads them back by name.
- :class:`GateDecision`: the gate's verdict. The pipeline hands it from the gate to registration and
  promotion as a JSON artifact (:meth:`GateDecision.to_dict`/:meth:`GateDecision.from_dict`); the
  registered version keeps it as the tags ``gate_approved`` (``true``/``false``) and ``gate_reasons`` (the
  reasons joined by ``"; "``, as every version registered since 0.1 has them:
  :meth:`GateDecision.to_tags`/:meth:`GateDecision.from_tags`).
- :class:`VersionRecord`: one registered version as listings show it (aliases, tags, test metrics).

Light on purpose (no torch, no MLflow import): the CLI and the console read these.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, Final, TypeVar

from pillars.components.errors import ConfigError

TEST_METRIC_PREFIX: Final = "test_"
"""The prefix of a test metric's name in MLflow (``test_accuracy``)."""

GATE_APPROVED_TAG: Final = "gate_approved"
GATE_REASONS_TAG: Final = "gate_reasons"
REASONS_SEPARATOR: Final = "; "
MAX_REASONS_CHARS: Final = 4000
"""The longest ``gate_reasons`` tag written (MLflow's tag values are bounded)."""


_Record = TypeVar("_Record")


def from_fields(cls: type[_Record], data: Mapping[str, Any], what: str) -> _Record:
    """``cls(**data)`` for a dataclass ``cls``, refusing keys it has no field for.

    Raises:
        ConfigError: ``unknown keys in <what>: ...``, naming them.
    """
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown keys in {what}: {', '.join(unknown)}")
    return cls(**data)


def as_test_metric(name: str) -> str:
    """The MLflow name of test metric ``name`` (``accuracy`` -> ``test_accuracy``)."""
    return f"{TEST_METRIC_PREFIX}{name}"


def read_test_metrics(logged: Mapping[str, float]) -> dict[str, float]:
    """The test metrics among a run's logged metrics, by name (``test_accuracy`` -> ``accuracy``), sorted."""
    return {key.removeprefix(TEST_METRIC_PREFIX): value for key, value in sorted(logged.items())
            if key.startswith(TEST_METRIC_PREFIX)}


@dataclasses.dataclass
class GateDecision:
    """Whether the candidate may become champion, and why (one reason per threshold and comparison)."""

    approved: bool
    reasons: list[str]
    champion_version: str | None = None
    champion_score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The decision as the pipeline's ``decision`` artifact (JSON)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GateDecision:
        """A decision read back from :meth:`to_dict`.

        Raises:
            ValueError: not a decision (naming what is missing or wrong).
        """
        if not isinstance(data.get("approved"), bool) or not isinstance(data.get("reasons"), list):
            raise ValueError(f"not a gate decision (needs 'approved' true/false and a 'reasons' list): {dict(data)!r}")
        version, score = data.get("champion_version"), data.get("champion_score")
        return cls(data["approved"], [str(r) for r in data["reasons"]], None if version is None else str(version),
                   None if score is None else float(score))

    def reasons_text(self) -> str:
        """The reasons as one line (``"; "`` between them), as logs and the alias history show them."""
        return REASONS_SEPARATOR.join(self.reasons)

    def to_tags(self) -> dict[str, str]:
        """The version tags that record the decision (the reasons cut to :data:`MAX_REASONS_CHARS`)."""
        return {GATE_APPROVED_TAG: str(self.approved).lower(), GATE_REASONS_TAG: self.reasons_text()[:MAX_REASONS_CHARS]}

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> GateDecision | None:
        """The decision a registered version's tags record; None when they record none (a version
        registered outside the pipeline). The champion the gate compared with is not in the tags."""
        approved = tags.get(GATE_APPROVED_TAG)
        if approved is None:
            return None
        reasons = [r for r in tags.get(GATE_REASONS_TAG, "").strip().split(REASONS_SEPARATOR) if r]
        return cls(approved == "true", reasons)


VARIANT_TAG: Final = "pillars.variant"
"""Set on every optimised variant's version (its kind: ``onnx``, ``onnx-int8``, ...)."""


@dataclasses.dataclass(frozen=True)
class VersionRecord:
    """One registered version: number, aliases, creation time (UTC, ISO), run, tags and test metrics (by name)."""

    version: str
    aliases: list[str]
    created: str
    run_id: str | None
    tags: dict[str, str]
    metrics: dict[str, float]

    @property
    def gate(self) -> GateDecision | None:
        """The gate decision its tags record (None: none)."""
        return GateDecision.from_tags(self.tags)

    @property
    def variant(self) -> str | None:
        """The kind of optimised variant it is; None for a trained version."""
        return self.tags.get(VARIANT_TAG) or None

    @classmethod
    def from_model_version(cls, version: Any, aliases: list[str], run_metrics: Mapping[str, float]) -> VersionRecord:
        """From MLflow's ``ModelVersion``, the aliases that point at it and its run's logged metrics."""
        created = datetime.fromtimestamp(version.creation_timestamp / 1000, timezone.utc).isoformat(timespec="seconds")
        return cls(str(version.version), sorted(aliases), created, version.run_id or None, dict(version.tags),
                   read_test_metrics(run_metrics))

    def to_dict(self) -> dict[str, Any]:
        """As JSON (an API answer)."""
        return dataclasses.asdict(self)
