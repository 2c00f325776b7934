"""Compiling a pipeline to KFP YAML for a cluster: which pipeline, its parameters, and the image its steps run.

Used by ``pillars compile`` / ``pillars submit`` and by the trigger when it starts a run on a
cluster. Nothing here reads settings at import; the image is an argument (default: the
``PILLARS_IMAGE`` setting, read when compiling).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from pillars.components.errors import ConfigError
from pillars.components.parameters import parse_json_object

PIPELINES = ("training", "retraining", "optimize")


def pipeline_factory(name: str) -> Callable[..., Any]:
    """The builder of pipeline ``name`` (imported lazily: kfp and the components load only when needed)."""
    if name not in PIPELINES:
        raise ConfigError(f"unknown pipeline {name!r}; choose from: {', '.join(PIPELINES)}")
    if name == "optimize":
        from pillars.pipelines import optimize

        return optimize.optimize_pipeline
    from pillars.pipelines import training

    return training.training_pipeline if name == "training" else training.retraining_pipeline


def parse_params(pairs: Sequence[str], pipeline: Any) -> dict[str, Any]:
    """``k=v`` strings to typed pipeline arguments, checked against the pipeline's parameters."""
    inputs = pipeline.component_spec.inputs or {}
    result: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--param takes key=value, got {pair!r}")
        if key not in inputs:
            raise ConfigError(f"unknown parameter {key!r}; parameters are: {', '.join(sorted(inputs))}")
        result[key] = _coerce(key, raw, inputs[key].type)
    return result


def task_params(task: str | None, task_args: Sequence[str], params: Sequence[str]) -> list[str]:
    """``--task NAME`` and ``--task-arg K=V`` flags as ``k=v`` pipeline parameters (appended after
    ``params``, so they win). The ``--task-arg`` values (JSON, else strings) are merged into the
    ``task_args`` JSON object that ``params`` may already give.

    Raises:
        ConfigError: a flag without ``=``, or a ``task_args`` parameter that is not a JSON object.
    """
    result = [f"task={task}"] if task else []
    if not task_args:
        return result
    merged: dict[str, Any] = {}
    for pair in params:
        key, _, raw = pair.partition("=")
        if key.strip() == "task_args":
            merged = parse_json_object("task_args", raw, '{"hidden": 64}')
    for pair in task_args:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--task-arg takes key=value, got {pair!r}")
        try:
            merged[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            merged[key.strip()] = raw
    return [*result, f"task_args={json.dumps(merged)}"]


def _coerce(key: str, raw: str, kfp_type: str) -> Any:
    try:
        if kfp_type == "Integer":
            return int(raw)
        if kfp_type == "Float":
            return float(raw)
        if kfp_type == "Boolean":
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1", "yes")
    except ValueError:
        raise ConfigError(f"parameter {key} must be {kfp_type.lower()}, got {raw!r}") from None
    return raw


def compile_pipeline(name: str, output: str, as_k8s: bool = False, params: Sequence[str] = (),
                     namespace: str | None = None, *, image: str | None = None, **cluster_options: Any) -> str:
    """Compile pipeline ``name`` to KFP IR YAML (or, ``as_k8s``, Pipeline/PipelineVersion resources).

    Args:
        image: the image every step runs (default: the ``PILLARS_IMAGE`` setting).
        params: ``k=v`` defaults compiled into the pipeline's parameters.
        cluster_options: the fields of :class:`pillars.pipelines.training.ClusterOptions` (GPUs, PVC, deploy...).

    Returns:
        ``output``.
    """
    from kfp import compiler

    from pillars.components.settings import Settings  # pydantic loads only when compiling

    settings = Settings()
    pipeline = pipeline_factory(name)(image=image or settings.image, **cluster_options)
    defaults = {"tracking_uri": settings.cluster_mlflow_uri, **parse_params(params, pipeline)}
    options: dict[str, Any] = {}
    if as_k8s:
        from kfp.compiler.compiler_utils import KubernetesManifestOptions

        options["kubernetes_manifest_format"] = True
        options["kubernetes_manifest_options"] = KubernetesManifestOptions(
            namespace=namespace, include_pipeline_manifest=True)
    compiler.Compiler().compile(pipeline, output, pipeline_parameters=defaults, **options)
    if as_k8s:
        _drop_pipeline_display_name(output)
    return output


def _drop_pipeline_display_name(path: str) -> None:
    """kfp 2.17 writes ``spec.displayName`` on the ``Pipeline`` resource, a field the v2beta1 Pipeline CRD
    does not define (only ``PipelineVersion`` has it), so ``kubectl apply`` with strict field validation
    rejects it. The display name stays on the PipelineVersion."""
    import yaml

    with open(path) as f:
        docs = list(yaml.safe_load_all(f))
    for doc in docs:
        if doc.get("kind") == "Pipeline":
            doc.get("spec", {}).pop("displayName", None)
    with open(path, "w") as f:
        yaml.safe_dump_all(docs, f, sort_keys=False)
