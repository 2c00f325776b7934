"""The optimize step: optimise a registered version, register the variants that pass, move alias ``edge``.

Each variant within the guard becomes a new version of the *same* registered model, tagged with what
it is (:data:`TAGS`); alias ``edge`` moves, compare-and-set, to the fastest of them (the report's
:meth:`~pillars.components.optimize.variants.OptimizeReport.edge` rule: lowest batch-1 latency, then smallest
file). ``champion`` and ``challenger`` are never touched here.

Each variant ends registered, refused by the guard (with its delta), skipped (with the tool's reason)
or failed (with the crash's one line); one variant's failure never discards the others
(:func:`~pillars.components.optimize.variants.optimize_model`). :func:`variants_table` shows them, one line each,
from the report logged as ``optimize_report.json`` in the optimisation's MLflow run
(:func:`latest_report` finds it). The step fails, in one line naming the variants and causes, only
when nothing was registered and a variant failed.

Nothing is registered half-way: every variant is made and judged before the first registration, an
error before then (a model that is not registered, a variant of another task, a version that is itself
a variant) registers nothing, and a registry failure while registering deletes the versions this run
created. ``champion`` never moves.

Logging: a variant's folder (``config.json`` naming its framework, ``model.onnx`` or
``model.safetensors``, ``preprocessing.json``, ``data_profile.json``, ``triton/``) is logged as plain
artifacts under ``variants/<variant>`` of one MLflow run per optimisation, which
:func:`~pillars.components.model.predictor.load_predictor` (and so the model server) reads from
``models:/NAME/VERSION``. The MLflow pyfunc wrapper of the v2 format plugs in through ``log_model``:
pass a function that logs the folder as a pyfunc model in the active run and returns its model URI.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException

from pillars.components.errors import ConfigError, PillarsError, RegistryError
from pillars.components.optimize.variants import OptimizeParams, OptimizeReport, VariantResult, optimize_model
from pillars.components.model.predictor import locate_model_dir, read_config
from pillars.components.registry.references import ModelRef
from pillars.components.registry.register import downloaded_version
from pillars.components.registry import (RegistryUnavailable, alias_version, client, filter_literal, get_model,
                                         move_alias)
from pillars.components.task import DataParams, load_task, task_reference

logger = logging.getLogger(__name__)

EDGE = "edge"
REPORT_FILE = "optimize_report.json"
PARENT_TAG = "pillars.parent"
"""Run tag of an optimisation run: ``NAME/VERSION`` of the version optimised."""
TAGS = ("pillars.variant", "pillars.parent_version", "pillars.size_bytes", "pillars.metric_delta",
        "pillars.latency_ms_b1", "pillars.throughput_b64")
"""Tags of every registered variant (plus ``pillars.metric`` and ``pillars.optimize_run``)."""

LogModel = Callable[[Path, str], str]
"""Logs a variant folder under an artifact path of the active MLflow run; returns what to register: a
logged model's URI (``runs:/`` or ``models:/``, registered with ``mlflow.register_model``) or a plain
artifact URI (registered as the version's source)."""


def log_variant_artifacts(directory: Path, artifact_path: str) -> str:
    """The minimal logger: the folder as plain artifacts of the active run (no pyfunc wrapper); returns
    their artifact URI, which becomes the version's source."""
    mlflow.log_artifacts(str(directory), artifact_path)
    return mlflow.get_artifact_uri(artifact_path)


def variant_tags(result: VariantResult, parent_version: str, run_id: str) -> dict[str, str]:
    """The registry tags of a judged variant."""
    if result.footprint is None or result.speed is None:
        raise ValueError(f"variant {result.variant} was not judged")
    return {"pillars.variant": result.variant, "pillars.parent_version": parent_version,
            "pillars.size_bytes": str(result.footprint.size_bytes), "pillars.metric": result.metric,
            "pillars.metric_delta": f"{result.metric_delta:.6g}",
            "pillars.latency_ms_b1": f"{result.speed.latency_ms_b1:.4g}",
            "pillars.throughput_b64": f"{result.speed.throughput_b64:.4g}", "pillars.optimize_run": run_id}


class VariantsFailed(PillarsError):
    """No variant was registered and at least one crashed while being made."""


@dataclasses.dataclass
class Registered:
    """What :func:`register_variants` did: variant -> version, and where ``edge`` points now."""

    versions: dict[str, str]
    edge: str | None
    run_id: str


def resolve_version(reference: str) -> tuple[str, str]:
    """``(name, version)`` of ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` (an alias resolved once).

    Raises:
        ConfigError: not a model reference.
        RegistryError: no such model, alias or version (one line naming it).
        RegistryUnavailable: the registry cannot be read.
    """
    ref = ModelRef.parse(reference)
    c = client()
    get_model(ref.name, c)
    if ref.alias is not None:
        version = alias_version(ref.name, ref.alias, c)
        if version is None:
            raise RegistryError(f"{ref.name} has no version with alias {ref.alias!r}")
        return ref.name, version
    try:
        c.get_model_version(ref.name, str(ref.version))
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise RegistryError(f"{ref.name} has no version {ref.version}") from e
        raise RegistryUnavailable(f"cannot read {ref.name} v{ref.version}: {e.message}") from e
    return ref.name, str(ref.version)


def register_variants(report: OptimizeReport, model_name: str, parent_version: str,
                      log_model: LogModel = log_variant_artifacts, experiment_id: str | None = None) -> Registered:
    """Register every passing variant of ``report`` as a version of ``model_name`` and move ``edge``.

    Args:
        parent_version: the version the variants were made from.
        log_model: how a variant folder is logged (see the module docstring).
        experiment_id: the MLflow experiment of the optimisation run (default: the parent's run's).

    Returns:
        The versions registered and the ``edge`` version (unchanged when no variant passed).

    Raises:
        RegistryError: the model or the parent version is not registered (nothing registered).
        RegistryUnavailable: the registry failed (versions created by this call are deleted again).
        ChampionMoved: ``edge`` moved while this ran (the versions stay registered; edge unchanged).
    """
    c = client()
    get_model(model_name, c)
    try:
        parent = c.get_model_version(model_name, parent_version)
    except MlflowException as e:
        raise RegistryError(f"{model_name} has no version {parent_version}") from e
    edge_before = alias_version(model_name, EDGE, c)
    if experiment_id is None and parent.run_id:
        experiment_id = c.get_run(parent.run_id).info.experiment_id
    passing = report.passing()
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"optimize {model_name} v{parent_version}",
                          tags={PARENT_TAG: f"{model_name}/{parent_version}"}) as run:
        run_id = run.info.run_id
        for result in [report.original, *report.variants]:
            if result.skipped or result.failed:
                continue
            mlflow.log_metrics({f"{result.variant}.{k}": v for k, v in result.metrics.items()})
            if result.footprint and result.speed:
                mlflow.log_metrics({f"{result.variant}.size_bytes": result.footprint.size_bytes,
                                    f"{result.variant}.latency_ms_b1": result.speed.latency_ms_b1,
                                    f"{result.variant}.throughput_b64": result.speed.throughput_b64})
        uris = {r.variant: log_model(locate_model_dir(r.directory), f"variants/{r.variant}") for r in passing}
    versions: dict[str, str] = {}
    try:
        for result in passing:
            source, tags = uris[result.variant], variant_tags(result, parent_version, run_id)
            if source.startswith(("runs:/", "models:/")):
                version = mlflow.register_model(source, model_name, tags=tags)
            else:
                version = c.create_model_version(model_name, source, run_id=run_id, tags=tags)
            versions[result.variant] = str(version.version)
    except MlflowException as e:
        _delete(model_name, versions)
        raise RegistryUnavailable(f"registering the variants of {model_name} v{parent_version} failed "
                                  f"(none kept): {e.message}") from e
    best = report.edge()
    registered = Registered(versions, edge_before, run_id)
    try:
        if best is not None:
            event = move_alias(model_name, EDGE, versions[best.variant], f"fastest variant within the guard: "
                               f"{best.variant} of v{parent_version} ({best.reason})", c, expected=edge_before)
            registered.edge = event.to_version if event else versions[best.variant]
    finally:  # the versions stay registered even when edge moved meanwhile: the report says which
        c.log_dict(run_id, report_dict(report, registered), REPORT_FILE)
    for line in variants_table(report_dict(report, registered)):
        logger.info("%s v%s: %s", model_name, parent_version, line)
    return registered


def _delete(model_name: str, versions: Mapping[str, str]) -> None:
    for version in versions.values():
        try:
            client().delete_model_version(model_name, version)
        except MlflowException as e:
            logger.error("%s: could not delete half-registered v%s: %s", model_name, version, e.message)


def data_params(run_params: Mapping[str, str], overrides: Mapping[str, Any] | None = None) -> DataParams:
    """The data parameters the parent was trained with (its run's logged parameters where they name
    :class:`DataParams` fields), with ``overrides`` on top: so the variants are judged on its test split."""
    values: dict[str, Any] = {}
    for name, default in dataclasses.asdict(DataParams()).items():
        if name in run_params:
            raw = run_params[name]
            values[name] = raw.lower() in ("true", "1") if isinstance(default, bool) else type(default)(raw)
    return DataParams(**{**values, **dict(overrides or {})})


def run_optimize(reference: str, params: OptimizeParams = OptimizeParams(),
                 data_overrides: Mapping[str, Any] | None = None, log_model: LogModel = log_variant_artifacts,
                 work_dir: str | Path | None = None, task: str = "") -> tuple[OptimizeReport, Registered]:
    """Optimise the registered version ``reference`` (``models:/NAME@champion`` by default in callers)
    on its own data split, register the variants that pass and move ``edge``.

    Args:
        task: the task the caller means to optimise (a name or ``package.module:attribute``); a version
            of another task is refused before anything is made. Empty: the version's own task.

    Raises:
        ConfigError, RegistryError: a bad reference, a model that is not registered, a version of another
            task or one that is itself a variant (nothing made).
        VariantsFailed: nothing was registered and a variant crashed (naming each one and its cause).
    """
    name, version = resolve_version(reference)
    mv = client().get_model_version(name, version)
    if "pillars.variant" in (mv.tags or {}):
        raise ConfigError(f"{name} v{version} is the {mv.tags['pillars.variant']} variant of "
                          f"v{mv.tags.get('pillars.parent_version', '?')}; optimise its parent "
                          f"(models:/{name}/{mv.tags.get('pillars.parent_version', 'VERSION')}) instead")
    run_params = client().get_run(mv.run_id).data.params if mv.run_id else {}
    with downloaded_version(name, version) as folder, tempfile.TemporaryDirectory(
            prefix="pillars-optimize-", dir=work_dir) as out:
        config, _ = read_config(locate_model_dir(folder))
        if task and task_reference(task) != task_reference(config.task):
            raise ConfigError(f"{name} v{version} is a model of task {config.task}, not of {task}; "
                              "nothing was optimised")
        task_obj = load_task(config.task, config.task_args)
        data = task_obj.load_data(data_params(run_params, data_overrides))
        report = optimize_model(folder, data, out, params, parent=f"{name}/{version}")
        registered = register_variants(report, name, version, log_model)
    logger.info("%s v%s optimised:\n%s", name, version, report.summary())
    failed = [v for v in report.variants if v.failed]
    if failed and not registered.versions:
        raise VariantsFailed(f"no variant of {name} v{version} registered; "
                             + "; ".join(f"{v.variant} failed: {v.reason}" for v in failed))
    return report, registered


def report_dict(report: OptimizeReport, registered: Registered) -> dict[str, Any]:
    """The report with the registered versions and ``edge`` (what is logged and what the step returns)."""
    return {**report.to_dict(), "registered": registered.versions, "edge_version": registered.edge,
            "run_id": registered.run_id}


def report_json(report: OptimizeReport, registered: Registered) -> str:
    """The step's output: :func:`report_dict` as JSON."""
    return json.dumps(report_dict(report, registered))


def variants_table(report: Mapping[str, Any]) -> list[str]:
    """One line per variant of a :func:`report_dict` (as logged): registered (its version), refused (the
    guard's delta), skipped (the tool's reason) or failed (the cause); size and batch-1 latency."""
    registered = report.get("registered") or {}
    lines = [f"{'variant':<17} {'outcome':<15} {'size':>10} {'b1 ms':>8}  why"]
    for v in report.get("variants", []):
        outcome = f"registered v{registered[v['variant']]}" if v["variant"] in registered else v["state"]
        size = f"{v['footprint']['size_bytes']}B" if v.get("footprint") else "-"
        latency = f"{v['speed']['latency_ms_b1']:.3f}" if v.get("speed") else "-"
        lines.append(f"{v['variant']:<17} {outcome:<15} {size:>10} {latency:>8}  {v['reason']}")
    return lines


def latest_report(model_name: str, version: str) -> dict[str, Any] | None:
    """The report of the newest optimisation of ``model_name`` v``version`` (None: never optimised)."""
    parent = filter_literal(f"{model_name}/{version}")
    if parent is None:  # a name with both quote characters: no MLflow filter can name it
        return None
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list", max_results=1,
                              filter_string=f"tags.`{PARENT_TAG}` = {parent}",
                              order_by=["attributes.start_time DESC"])
    if not runs:
        return None
    try:
        return mlflow.artifacts.load_dict(f"runs:/{runs[0].info.run_id}/{REPORT_FILE}")
    except MlflowException:
        return None  # the run died before its report was logged
