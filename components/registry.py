"""The MLflow model registry as Pillars uses it: versions, the ``champion``/``challenger`` aliases,
and a recorded history of every alias move so a promotion can be explained and rolled back.

Each alias move is stored as a registered-model tag ``pillars.alias.<ns timestamp>`` whose value is a
JSON event ``{"alias", "from", "to", "at", "why"}``: visible in the MLflow UI, and no extra store.
"""

from __future__ import annotations

import dataclasses
import json
import time
from datetime import datetime, timezone
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pillars.components.errors import RegistryError

CHAMPION = "champion"
CHALLENGER = "challenger"
EVENT_PREFIX = "pillars.alias."


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


def client() -> MlflowClient:
    """A client for the current tracking URI."""
    return MlflowClient()


def alias_version(name: str, alias: str, mlflow_client: MlflowClient | None = None) -> str | None:
    """The version an alias points to, or None when the alias (or the model) does not exist."""
    c = mlflow_client or client()
    try:
        return str(c.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def move_alias(name: str, alias: str, version: str, why: str, mlflow_client: MlflowClient | None = None
               ) -> AliasEvent | None:
    """Point ``alias`` at ``version`` and record the move; None (nothing recorded) if it already points there."""
    c = mlflow_client or client()
    previous = alias_version(name, alias, c)
    if previous == str(version):
        return None
    try:
        c.set_registered_model_alias(name, alias, str(version))
    except MlflowException as e:
        raise RegistryError(f"cannot set alias {alias!r} of {name} to version {version}: {e.message}") from e
    event = AliasEvent(alias, previous, str(version), datetime.now(timezone.utc).isoformat(timespec="seconds"), why)
    c.set_registered_model_tag(name, f"{EVENT_PREFIX}{time.time_ns()}", event.to_json())
    return event


def history(name: str, alias: str | None = None, mlflow_client: MlflowClient | None = None) -> list[AliasEvent]:
    """Recorded alias moves of model ``name``, oldest first (optionally of one alias)."""
    model = get_model(name, mlflow_client)
    events = [(int(k[len(EVENT_PREFIX):]), AliasEvent.from_json(v)) for k, v in model.tags.items()
              if k.startswith(EVENT_PREFIX)]
    return [e for _, e in sorted(events, key=lambda kv: kv[0]) if alias is None or e.alias == alias]


def rollback(name: str, why: str = "rollback", mlflow_client: MlflowClient | None = None) -> AliasEvent:
    """Move ``champion`` back to the version it held before its last move.

    Raises:
        RegistryError: the model has no champion history to roll back to.
    """
    c = mlflow_client or client()
    moves = history(name, CHAMPION, c)
    current = alias_version(name, CHAMPION, c)
    if not moves or current is None:
        raise RegistryError(f"{name} has no champion to roll back")
    previous = moves[-1].from_version
    if previous is None:
        raise RegistryError(f"{name}: champion version {current} is the first champion; nothing to roll back to")
    event = move_alias(name, CHAMPION, previous, why, c)
    if event is None:
        raise RegistryError(f"{name}: champion already at version {previous}")
    return event


def get_model(name: str, mlflow_client: MlflowClient | None = None) -> Any:
    """The registered model, or a RegistryError naming it."""
    try:
        return (mlflow_client or client()).get_registered_model(name)
    except MlflowException as e:
        raise RegistryError(f"no registered model named {name!r}") from e


def list_models(mlflow_client: MlflowClient | None = None) -> list[dict[str, Any]]:
    """Registered models with their latest version and aliases."""
    c = mlflow_client or client()
    rows = []
    for model in c.search_registered_models(order_by=["name ASC"]):
        versions = c.search_model_versions(f"name='{model.name}'", order_by=["version_number DESC"], max_results=1)
        rows.append({"name": model.name, "latest": versions[0].version if versions else None,
                     "aliases": dict(sorted(model.aliases.items())) if model.aliases else {}})
    return rows


def list_versions(name: str, mlflow_client: MlflowClient | None = None) -> list[dict[str, Any]]:
    """Versions of ``name``, newest first, with aliases, tags and the run's test metrics."""
    c = mlflow_client or client()
    model = get_model(name, c)
    by_version: dict[str, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        by_version.setdefault(str(version), []).append(alias)
    rows = []
    for v in c.search_model_versions(f"name='{name}'", order_by=["version_number DESC"]):
        metrics = c.get_run(v.run_id).data.metrics if v.run_id else {}
        rows.append({"version": v.version, "aliases": sorted(by_version.get(str(v.version), [])),
                     "created": datetime.fromtimestamp(v.creation_timestamp / 1000, timezone.utc).isoformat(
                         timespec="seconds"),
                     "run_id": v.run_id, "tags": dict(v.tags),
                     "metrics": {k: v for k, v in sorted(metrics.items()) if k.startswith("test_")}})
    return rows
