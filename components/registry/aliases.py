"""Moving the ``champion``/``challenger`` aliases by compare-and-set, with a recorded history of every move
so a promotion can be explained and rolled back.

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
import json
import logging
import time
import uuid
from datetime import datetime, timezone
from http import HTTPStatus
from typing import Any, Final

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pillars.components.errors import RegistryError
from pillars.components.registry.identity import check_same_task
from pillars.components.registry.versions import (CHAMPION, LOCK_PREFIX, RegistryUnavailable, alias_version, client,
                                                  get_model, is_missing, model_tags, parse_version, search_versions)

logger = logging.getLogger(__name__)

EVENT_PREFIX = "pillars.alias."
LOCK_TAG = "pillars.lock"
ROLLED_BACK = "pillars.rolled_back"


class ChampionMoved(RegistryError, status=HTTPStatus.CONFLICT, grpc_code="ABORTED"):
    """The alias no longer points where the decision to move it assumed; nothing was moved."""

    def __init__(self, name: str, alias: str, expected: str | None, actual: str | None) -> None:
        super().__init__(f"{name}: {alias} is v{actual or '-'}, not v{expected or '-'} as the decision assumed; "
                         "not moved")
        self.expected = expected
        self.actual = actual


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


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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
                    if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                        # MLflow's SQL store answers a create that lost to an existing lock by reading
                        # that lock; when its holder released it in between, the read says it is missing
                        if time.monotonic() < deadline:
                            continue
                        raise
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
    tags = model_tags(mlflow_client or client(), name)
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
