"""Registered models and their versions in MLflow, as Pillars reads them: the client, the aliases' current
versions, version searches and listings, and what an unreachable registry raises."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.store.model_registry import SEARCH_MODEL_VERSION_MAX_RESULTS_DEFAULT
from mlflow.tracking import MlflowClient

from pillars.components.errors import ConfigError, PillarsError, RegistryError
from pillars.components.records import VersionRecord

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
LOCK_PREFIX = "pillars-lock."
"""Name prefix of the registered models that hold alias locks (:mod:`pillars.components.registry.aliases`)."""
TASK_TAG = "task"
"""Version tag: the task a version was trained for (an installed task's name or ``package.module:attribute``)."""
SIGNATURE_TAG = "pillars.signature"
"""Version tag: the digest of the model's input signature (:func:`signature_key`)."""
SIGNATURE_FIELDS = ("name", "datatype", "shape", "optional", "labels")
"""The fields of an input's spec that make the signature (what a request must match)."""
PARENT_TAG = "pillars.parent_version"
REASON_TAG = "pillars.reason"
"""Run and version tag: why the run that trained it started (the ``reason`` run parameter; the trigger's alert)."""
_MISSING_CODES = ("RESOURCE_DOES_NOT_EXIST",)


class RegistryUnavailable(PillarsError, RuntimeError, status=HTTPStatus.SERVICE_UNAVAILABLE, grpc_code="UNAVAILABLE"):
    """The registry could not be read or written (outage, auth failure, lock not obtained): retry later."""


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


def model_tags(c: MlflowClient, name: str) -> dict[str, str]:
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
