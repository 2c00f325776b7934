"""The KFP v2 component of the optimize step: a thin wrapper over
:func:`pillars.components.optimize.register.run_optimize` (the pattern of :mod:`pillars.components.ops`:
the body imports inside because KFP ships it as source text; one image, nothing installed at run time)."""

# No `from __future__ import annotations`: KFP reads the annotations as real types.
import functools

from kfp import dsl
from kfp.dsl import Artifact, Output
from kfp.dsl.python_component import PythonComponent


def optimize(
    model: str,
    variants: str,
    max_drop_points: float,
    max_relative_worsening: float,
    sparsity: float,
    prune_epochs: int,
    distill_epochs: int,
    temperature: float,
    data_args: str,
    tracking_uri: str,
    report: Output[Artifact],
    model_version: str = "",
    task: str = "",
) -> str:
    """Optimise the registered version ``model`` (``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``; or a
    bare model name with ``model_version``, as the training pipeline passes its new champion), register
    the variants within the guard and move alias ``edge``; ``task`` (optional) is the task the version
    must be a model of. Returns the report as JSON (also the ``report`` artifact). A variant that cannot
    be made is skipped or failed in the report; the step fails only when nothing was registered and a
    variant crashed, or before anything is made (a bad reference, another task's model, a variant)."""
    import dataclasses

    from pillars.components.optimize.variants import Guard, OptimizeParams
    from pillars.components.optimize.register import report_json, run_optimize
    from pillars.components.registry.tracking import configure_tracking
    from pillars.components.parameters import parse_json_object

    configure_tracking(tracking_uri or None)
    if model_version:
        model = f"models:/{model}/{model_version}"
    defaults = OptimizeParams()
    overrides = parse_json_object("data_args", data_args, '{"seed": 1}')
    params = OptimizeParams(
        variants=tuple(v.strip() for v in variants.split(",") if v.strip()),
        guard=Guard(max_drop_points=max_drop_points, max_relative_worsening=max_relative_worsening),
        sparsity=sparsity, prune_fit=dataclasses.replace(defaults.prune_fit, epochs=prune_epochs),
        distill_fit=dataclasses.replace(defaults.distill_fit, epochs=distill_epochs), temperature=temperature)
    result, registered = run_optimize(model, params, overrides, task=task)
    text = report_json(result, registered)
    with open(report.path, "w") as f:
        f.write(text)
    report.metadata["edge_version"] = registered.edge or ""
    print(result.summary())  # the step's log; `pillars optimize` prints variants_table from the logged report
    return text


@functools.lru_cache(maxsize=8)
def optimize_component(image: str) -> PythonComponent:
    """The optimize step as a KFP component whose container runs ``image``.

    Raises:
        ValueError: ``image`` is empty.
    """
    if not image or not image.strip():
        raise ValueError("the components image must be a non-empty image reference")
    return dsl.component(base_image=image, install_kfp_package=False)(optimize)
