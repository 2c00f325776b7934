"""What a version answers: its task and input signature, and the check that keeps one model name for one
task (a version of another task never takes a champion's place)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from http import HTTPStatus
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pillars.components.errors import RegistryError
from pillars.components.records import VARIANT_TAG
from pillars.components.registry.references import known_tasks
from pillars.components.registry.versions import CHAMPION, PARENT_TAG, RegistryUnavailable, SIGNATURE_FIELDS, SIGNATURE_TAG, TASK_TAG, alias_version, client, is_missing


class TaskMismatch(RegistryError, status=HTTPStatus.CONFLICT, grpc_code="FAILED_PRECONDITION"):
    """A version (or a run) is for another task or input signature than the model's champion."""


@dataclasses.dataclass(frozen=True)
class Identity:
    """What a version of a model answers: its task and input signature (None: not recorded)."""

    task: str | None
    signature: str | None

    def describe(self) -> str:
        """``task NAME`` (an installed task by its short name, as users type it), or ``no recorded task``."""
        if not self.task:
            return "no recorded task"
        names = {reference: name for name, reference in known_tasks().items()}
        return f"task {names.get(self.task, self.task)}"


def signature_key(inputs: list[dict[str, Any]]) -> str:
    """A signature's inputs (``Signature.to_dict()["inputs"]``) as the value of :data:`SIGNATURE_TAG`: the
    SHA-256 of the canonical JSON of what a request must match (:data:`SIGNATURE_FIELDS`; not the
    description or size limits). A digest: a tag value holds at most 5000 characters, a wide table's
    inputs more."""
    kept = [{k: spec[k] for k in SIGNATURE_FIELDS if k in spec} for spec in inputs]
    text = json.dumps(kept, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def identity(name: str, version: str, mlflow_client: MlflowClient | None = None) -> Identity:
    """The task and input signature of ``name`` v``version``, from its tags; an optimized variant has its
    parent's.

    Raises:
        RegistryError: no such version. RegistryUnavailable: the registry failed.
    """
    c = mlflow_client or client()
    try:
        tags = dict(c.get_model_version(name, str(version)).tags or {})
    except MlflowException as e:
        if is_missing(e) or e.error_code == "INVALID_PARAMETER_VALUE":
            raise RegistryError(f"{name} has no version {version!r}") from e
        raise RegistryUnavailable(f"cannot read {name} v{version}: {e.message}") from e
    if not tags.get(TASK_TAG) and tags.get(VARIANT_TAG) and tags.get(PARENT_TAG, "") != str(version):
        return identity(name, tags[PARENT_TAG], c)
    return Identity(canonical_task(tags.get(TASK_TAG) or None), tags.get(SIGNATURE_TAG) or None)


def canonical_task(task: str | None) -> str | None:
    """``task`` as ``module:attribute``: a version tagged with an installed task's name (``breast_cancer``,
    as registrations outside the pipeline and Pillars 0.1 wrote it) is the same task as one tagged with the
    name's entry point (``pillars.tasks.tabular:breast_cancer``)."""
    if not task or ":" in task:
        return task
    return known_tasks().get(task, task)


def mismatch(champion: Identity, other: Identity, other_label: str, champion_label: str) -> str | None:
    """Why ``other`` (a version or a run, ``other_label``) may not take the place of ``champion``
    (``champion_label``); None when it may. A signature is compared only when both are recorded (versions
    registered before Pillars recorded it have none). A task recorded on one side only is a mismatch;
    on neither (models registered outside Pillars, which always records it) nothing tells them apart."""
    if other.task != champion.task:
        return f"{other_label} is for {other.describe()}, {champion_label} for {champion.describe()}"
    if champion.signature and other.signature and champion.signature != other.signature:
        return f"{other_label} takes other inputs than {champion_label} (both {champion.describe()})"
    return None


def check_same_task(name: str, version: str, action: str, mlflow_client: MlflowClient | None = None) -> str | None:
    """Refuse to ``action`` ``version`` when it is for another task or input signature than the current
    champion (every server of ``name`` would then get inputs it does not take).

    Returns:
        The champion version checked against (None: no champion).

    Raises:
        TaskMismatch: one line naming both tasks.
    """
    c = mlflow_client or client()
    current = alias_version(name, CHAMPION, c)
    if current is None or current == str(version):
        return current
    why = mismatch(identity(name, current, c), identity(name, version, c), f"v{version}", f"champion v{current}")
    if why is not None:
        raise TaskMismatch(f"{name}: cannot {action} v{version}: {why}")
    return current
