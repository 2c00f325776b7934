"""The MLflow model registry as Pillars uses it: versions, the ``champion``/``challenger`` aliases,
and a recorded history of every alias move so a promotion can be explained and rolled back.

Each alias move is stored as a registered-model tag ``pillars.alias.<ns timestamp>`` whose value is a
JSON event ``{"alias", "from", "to", "at", "why"}``: visible in the MLflow UI, and no extra store.
A version rolled back from carries the tag ``pillars.rolled_back`` (JSON ``{"at", "why", "to"}``).

Compare-and-set. MLflow has no conditional alias update, so :func:`move_alias` serializes movers of
one alias with a lock: a registered model named ``pillars-lock.<model>.<alias>``, created to take
the lock and deleted to release it. Creating a registered model is atomic in every MLflow store
(a unique name: one creator wins, the others get ``RESOURCE_ALREADY_EXISTS`` and wait). Under the
lock the alias is re-read, moved only if it still points where the caller's decision assumed
(``expected``), and read back. Limits: a writer that ignores the lock (the MLflow UI, another tool)
can still move the alias in between, which the read-back reports but cannot undo atomically; a
lock left by a crashed mover is taken over after its lease (``LockTiming.lease``), judged on the
movers' clocks, and two movers taking over the same abandoned lock at the same instant could both
proceed; the lock model is visible in the registry while a move is under way (a second or so).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
import uuid
from datetime import datetime, timezone
from http import HTTPStatus
from typing import Any, Final

from mlflow.exceptions import MlflowException
from mlflow.store.model_registry import SEARCH_MODEL_VERSION_MAX_RESULTS_DEFAULT
from mlflow.tracking import MlflowClient

from pillars.components.errors import ConfigError, PillarsError, RegistryError
from pillars.components.records import VARIANT_TAG, VersionRecord
from pillars.components.registry.references import known_tasks

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
EVENT_PREFIX = "pillars.alias."
LOCK_PREFIX = "pillars-lock."
LOCK_TAG = "pillars.lock"
ROLLED_BACK = "pillars.rolled_back"
TASK_TAG = "task"
"""Version tag: the task a version was trained for (an installed task's name or ``package.module:attribute``)."""
SIGNATURE_TAG = "pillars.signature"
"""Version tag: the digest of the model's input signature (:func:`signature_key`)."""
SIGNATURE_FIELDS = ("name", "datatype", "shape", "optional", "labels")
"""The fields of an input's spec that make the signature (what a request must match)."""
PARENT_TAG = "pillars.parent_version"

_MISSING_CODES = ("RESOURCE_DOES_NOT_EXIST",)


class RegistryUnavailable(PillarsError, RuntimeError):
    """The registry could not be read or written (outage, auth failure, lock not obtained): retry later."""

    status = HTTPStatus.SERVICE_UNAVAILABLE
    grpc_code = "UNAVAILABLE"


class ChampionMoved(RegistryError):
    """The alias no longer points where the decision to move it assumed; nothing was moved."""

    status = HTTPStatus.CONFLICT
    grpc_code = "ABORTED"

    def __init__(self, name: str, alias: str, expected: str | None, actual: str | None) -> None:
        super().__init__(f"{name}: {alias} is v{actual or '-'}, not v{expected or '-'} as the decision assumed; "
                         "not moved")
        self.expected = expected
        self.actual = actual


class TaskMismatch(RegistryError):
    """A version (or a run) is for another task or input signature than the model's champion."""

    status = HTTPStatus.CONFLICT
    grpc_code = "FAILED_PRECONDITION"


class AnyVersion:
    """Type of :data:`ANY`."""

    def __repr__(self) -> str:
        return "ANY"


ANY: Final = AnyVersion()
"""``expected`` value of :func:`move_alias` meaning "wherever the alias points now" (a manual move)."""


@dataclasses.dataclass
class AliasEvent:
    """One move of an alias."""

    alias: str
    from_version: str | None
    to_version: str | None
    at: str
    why: str

    def to_json(self) -> str:
        return json.dumps({"alias": self.alias, "from": self.from_version, "to": self.to_version,
                           "at": self.at, "why": self.why})

    @classmethod
    def from_json(cls, text: str) -> AliasEvent:
        data = json.loads(text)
        return cls(data["alias"], data["from"], data["to"], data["at"], data["why"])


@dataclasses.dataclass(frozen=True)
class LockTiming:
    """Timing of the alias lock (seconds).

    Attributes:
        lease: a lock older than this is taken as abandoned (a crashed mover).
        wait: how long to keep trying to take the lock before :class:`RegistryUnavailable`.
    """

    lease: float = 300.0
    wait: float = 120.0


def client() -> MlflowClient:
    """A client for the current tracking URI."""
    return MlflowClient()


def parse_version(text: object) -> str:
    """A model version as MLflow numbers them (``1``, ``12``): nothing else (``05``, ``+6``, `` 3``) is read
    as one, so a move never starts on a version it cannot read back.

    Raises:
        ConfigError: naming the bad text.
    """
    value = str(text)
    if not (value.isascii() and value.isdigit() and value[0] != "0"):
        raise ConfigError(f"a model version is a whole number from 1 without leading zeros or sign, got {value!r}")
    return value


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def is_missing(error: MlflowException, alias: str | None = None) -> bool:
    """Whether ``error`` says the model (or ``alias``) does not exist, as MLflow's server and stores say it:
    ``RESOURCE_DOES_NOT_EXIST`` for a model, ``INVALID_PARAMETER_VALUE`` "...alias X not found" for an alias."""
    if error.error_code in _MISSING_CODES:
        return True
    return (error.error_code == "INVALID_PARAMETER_VALUE" and alias is not None
            and f"alias {alias} not found" in error.message)


def alias_version(name: str, alias: str, mlflow_client: MlflowClient | None = None) -> str | None:
    """The version an alias points to, or None when the alias (or the model) does not exist.

    Raises:
        RegistryUnavailable: any other failure (server down, auth refused): never read as "no alias".
    """
    c = mlflow_client or client()
    try:
        return str(c.get_model_version_by_alias(name, alias).version)
    except MlflowException as e:
        if is_missing(e, alias):
            return None
        raise RegistryUnavailable(f"cannot read alias {alias!r} of {name}: {e.message}") from e


def _model_tags(c: MlflowClient, name: str) -> dict[str, str]:
    try:
        return dict(c.get_registered_model(name).tags)
    except MlflowException as e:
        if is_missing(e):
            raise RegistryError(f"no registered model named {name!r}") from e
        raise RegistryUnavailable(f"cannot read registered model {name}: {e.message}") from e


def filter_literal(value: str) -> str | None:
    """``value`` as a string literal of an MLflow search filter (``'o"k'``, ``"o'reilly"``), or None when it
    holds both quote characters: MLflow's filter parser has no escape for a quote inside a literal."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    return None


def name_filter(name: str) -> tuple[str, bool]:
    """An MLflow filter on a model's ``name`` for any registered name, and whether the caller must still
    keep only exact matches: a name with both quote characters is searched with ``LIKE`` and each quote
    as the one-character wildcard ``_``."""
    literal = filter_literal(name)
    if literal is not None:
        return f"name={literal}", False
    return "name LIKE '" + name.replace("'", "_").replace('"', "_") + "'", True


def search_versions(name: str, mlflow_client: MlflowClient | None = None, run_id: str | None = None,
                    newest_only: bool = False) -> list[Any]:
    """The versions of model ``name`` (optionally of one MLflow run), newest first, whatever characters the
    name holds. Every search of versions by name goes through here (no filter built by hand).

    Raises:
        RegistryUnavailable: the registry failed.
    """
    c = mlflow_client or client()
    where, inexact = name_filter(name)
    if run_id is not None:
        where += f" and run_id={filter_literal(run_id)}"
    try:
        found = c.search_model_versions(where, order_by=["version_number DESC"],
                                        max_results=1 if newest_only and not inexact else SEARCH_MODEL_VERSION_MAX_RESULTS_DEFAULT)
    except MlflowException as e:
        raise RegistryUnavailable(f"cannot list versions of {name!r}: {e.message}") from e
    found = [v for v in found if v.name == name]
    return found[:1] if newest_only else found


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


def lock_name(name: str, alias: str) -> str:
    """The registered model that, while it exists, holds the lock on ``alias`` of ``name``."""
    return f"{LOCK_PREFIX}{name}.{alias}"


class _AliasLock:
    """A lock held by creating a registered model (see the module docstring): the registry's own
    unique-name constraint decides between concurrent movers."""

    def __init__(self, c: MlflowClient, name: str, alias: str, timing: LockTiming) -> None:
        self.c, self.name, self.alias, self.timing = c, name, alias, timing
        self.lock = lock_name(name, alias)
        self.token = uuid.uuid4().hex

    def _holder(self) -> dict[str, Any] | None:
        """The lock's ``{"token", "until"}``, None when nobody holds it."""
        try:
            raw = self.c.get_registered_model(self.lock).tags.get(LOCK_TAG, "")
        except MlflowException as e:
            if is_missing(e):
                return None
            raise
        try:
            return dict(json.loads(raw))
        except (ValueError, TypeError):
            return {"token": "", "until": 0.0}  # unreadable: nobody's, stale at once

    def __enter__(self) -> _AliasLock:
        deadline = time.monotonic() + self.timing.wait
        pause = 0.05
        value = json.dumps({"token": self.token, "until": time.time() + self.timing.lease})
        try:
            while True:
                try:
                    self.c.create_registered_model(self.lock, tags={LOCK_TAG: value},
                                                   description=f"Pillars: {self.alias} of {self.name} is moving")
                    return self
                except MlflowException as e:
                    if e.error_code != "RESOURCE_ALREADY_EXISTS":
                        raise
                held = self._holder()
                if held is not None and held.get("token") == self.token:
                    return self  # our own create, answered twice (a retried request)
                if held is not None and time.time() > float(held.get("until", 0.0)):
                    logger.warning("%s: taking over the abandoned lock %s", self.name, self.lock)
                    self._delete()
                    continue
                if time.monotonic() > deadline:
                    raise RegistryUnavailable(f"{self.name}: alias {self.alias!r} is being moved by another run "
                                              f"(lock {self.lock}) for over {self.timing.wait:.0f}s; try again")
                time.sleep(pause)
                pause = min(pause * 2, 1.0)
        except MlflowException as e:
            raise RegistryUnavailable(f"cannot lock alias {self.alias!r} of {self.name}: {e.message}") from e

    def _delete(self) -> None:
        try:
            self.c.delete_registered_model(self.lock)
        except MlflowException as e:
            if not is_missing(e):
                raise

    def __exit__(self, *exc: object) -> None:
        try:
            held = self._holder()
            if held is not None and held.get("token") == self.token:
                self._delete()
        except MlflowException as e:  # the lease expires on its own
            logger.warning("%s: could not release %s: %s", self.name, self.lock, e.message)


def move_alias(name: str, alias: str, version: str, why: str, mlflow_client: MlflowClient | None = None,
               expected: str | None | AnyVersion = ANY, timing: LockTiming = LockTiming()) -> AliasEvent | None:
    """Point ``alias`` at ``version`` and record the move, compare-and-set.

    Args:
        expected: where the alias must still point (None: nowhere) for the move to happen; ``ANY``
            moves it from wherever it is.
        timing: of the lock serializing movers of this alias.

    Returns:
        The recorded event; None (nothing recorded) when the alias already points at ``version``.

    Raises:
        ChampionMoved: the alias is not at ``expected``; nothing moved.
        RegistryUnavailable: the registry failed, or the alias changed behind the lock's back.
    """
    c = mlflow_client or client()
    version = parse_version(version)
    with _AliasLock(c, name, alias, timing):
        previous = alias_version(name, alias, c)
        if previous == version:
            return None
        if not isinstance(expected, AnyVersion) and previous != expected:
            raise ChampionMoved(name, alias, expected, previous)
        try:
            c.set_registered_model_alias(name, alias, version)
            event = AliasEvent(alias, previous, version, _now(), why)
            c.set_registered_model_tag(name, f"{EVENT_PREFIX}{time.time_ns()}", event.to_json())
        except MlflowException as e:
            raise RegistryUnavailable(f"cannot set alias {alias!r} of {name} to version {version}: {e.message}"
                                      ) from e
        now = alias_version(name, alias, c)
        if now != version:
            raise RegistryUnavailable(f"{name}: {alias} was moved to v{now} by a writer outside Pillars' lock "
                                      f"while moving it to v{version}")
    return event


def history(name: str, alias: str | None = None, mlflow_client: MlflowClient | None = None) -> list[AliasEvent]:
    """Recorded alias moves of model ``name``, oldest first (optionally of one alias)."""
    tags = _model_tags(mlflow_client or client(), name)
    events = [(int(k[len(EVENT_PREFIX):]), AliasEvent.from_json(v)) for k, v in tags.items()
              if k.startswith(EVENT_PREFIX)]
    return [e for _, e in sorted(events, key=lambda kv: kv[0]) if alias is None or e.alias == alias]


def rolled_back(name: str, mlflow_client: MlflowClient | None = None) -> dict[str, dict[str, str]]:
    """Versions of ``name`` marked as rolled back from, with when, why and to which version."""
    versions = search_versions(name, mlflow_client)
    return {str(v.version): json.loads(v.tags[ROLLED_BACK]) for v in versions if ROLLED_BACK in (v.tags or {})}


def rollback_target(moves: list[AliasEvent], current: str, marked: set[str]) -> str | None:
    """The champion before ``current`` in the history, skipping versions rolled back from (``marked``)."""
    held = [moves[0].from_version] if moves and moves[0].from_version else []
    held += [m.to_version for m in moves if m.to_version]
    for version in reversed(held):
        if version != current and version not in marked:
            return version
    return None


def rollback(name: str, why: str = "rollback", to: str | None = None, mlflow_client: MlflowClient | None = None,
             timing: LockTiming = LockTiming()) -> AliasEvent:
    """Move ``champion`` back: to ``to``, else to the champion before the current one that was never
    rolled back from; the current champion is marked ``pillars.rolled_back`` with ``why``.

    Raises:
        ConfigError: ``to`` is not a version number (:func:`parse_version`); nothing moved.
        RegistryError: no champion, nothing left to roll back to, or ``to`` is not a version.
        TaskMismatch: the target is for another task or signature than the champion.
        ChampionMoved: the champion moved while rolling back.
    """
    c = mlflow_client or client()
    target = parse_version(to) if to is not None else None
    get_model(name, c)
    current = alias_version(name, CHAMPION, c)
    if current is None:
        raise RegistryError(f"{name} has no champion to roll back")
    marks = rolled_back(name, c)
    if target is not None:
        try:
            c.get_model_version(name, target)
        except MlflowException as e:
            if is_missing(e) or e.error_code == "INVALID_PARAMETER_VALUE":
                raise RegistryError(f"{name} has no version {to!r} to roll back to") from e
            raise RegistryUnavailable(f"cannot read {name} v{to}: {e.message}") from e
        if target == current:
            raise RegistryError(f"{name}: v{target} is already the champion")
    else:
        found = rollback_target(history(name, CHAMPION, c), current, set(marks))
        if found is None:
            raise RegistryError(f"{name}: champion v{current} has no earlier champion that was not rolled back "
                                "from; pass --to VERSION")
        target = found
    check_same_task(name, target, "roll back to", c)
    event = move_alias(name, CHAMPION, target, f"rollback from v{current}: {why}", c, expected=current, timing=timing)
    if event is None:  # unreachable: target != current was checked under the same expectation
        raise ChampionMoved(name, CHAMPION, current, target)
    try:
        c.set_model_version_tag(name, current, ROLLED_BACK, json.dumps({"at": event.at, "why": why, "to": target}))
        if target in marks:  # an explicit --to a version rolled back from before: the operator cleared it
            c.delete_model_version_tag(name, target, ROLLED_BACK)
    except MlflowException as e:
        raise RegistryUnavailable(f"{name}: champion rolled back to v{target}, but marking v{current} failed: "
                                  f"{e.message}") from e
    return event


def get_model(name: str, mlflow_client: MlflowClient | None = None) -> Any:
    """The registered model, or a RegistryError naming it (RegistryUnavailable when the registry fails)."""
    try:
        return (mlflow_client or client()).get_registered_model(name)
    except MlflowException as e:
        if is_missing(e):
            raise RegistryError(f"no registered model named {name!r}") from e
        raise RegistryUnavailable(f"cannot read registered model {name}: {e.message}") from e


def list_models(mlflow_client: MlflowClient | None = None) -> list[dict[str, Any]]:
    """Registered models with their latest version and aliases."""
    c = mlflow_client or client()
    rows = []
    try:
        models = c.search_registered_models(order_by=["name ASC"])
    except MlflowException as e:
        raise RegistryUnavailable(f"cannot list registered models: {e.message}") from e
    for model in models:
        if model.name.startswith(LOCK_PREFIX):
            continue  # a move under way
        versions = search_versions(model.name, c, newest_only=True)
        rows.append({"name": model.name, "latest": versions[0].version if versions else None,
                     "aliases": dict(sorted(model.aliases.items())) if model.aliases else {}})
    return rows


def list_versions(name: str, mlflow_client: MlflowClient | None = None) -> list[VersionRecord]:
    """Versions of ``name``, newest first, with aliases, tags and the run's test metrics."""
    c = mlflow_client or client()
    model = get_model(name, c)
    by_version: dict[str, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        by_version.setdefault(str(version), []).append(alias)
    rows = []
    for v in search_versions(name, c):
        metrics = c.get_run(v.run_id).data.metrics if v.run_id else {}
        rows.append(VersionRecord.from_model_version(v, by_version.get(str(v.version), []), metrics))
    return rows
