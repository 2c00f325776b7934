"""The task registry: what a task's data looks like and which model architecture learns it.

Later work registers more tasks (text, audio, recommendation, forecasting) with :func:`register_task`.
"""

from __future__ import annotations

import dataclasses

from pillars.components.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """A learning task.

    Attributes:
        name: registry key, used as ``--task`` and as the default registered model name.
        kind: ``classification`` or ``regression``.
        architecture: ``mlp`` for tabular features, ``cnn`` for images.
        builtin: name of a data set shipped with an installed package (see ``pillars.components.datasets``),
            or None when the user must give a source path and label column.
        primary_metric: the test metric the gate compares against the champion (higher is better
            unless ``lower_is_better``).
        thresholds: minimum (or, for ``lower_is_better`` metrics, maximum) values the gate requires.
    """

    name: str
    kind: str
    architecture: str
    builtin: str | None
    primary_metric: str
    lower_is_better: bool = False
    thresholds: tuple[tuple[str, float], ...] = ()
    description: str = ""


_REGISTRY: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add a task; re-registering a name replaces it."""
    _REGISTRY[spec.name] = spec
    return spec


def get_task(name: str) -> TaskSpec:
    """The task named ``name``, or a :class:`ConfigError` listing the known tasks."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown task {name!r}; known tasks: {', '.join(sorted(_REGISTRY))}") from None


register_task(TaskSpec(
    name="breast_cancer", kind="classification", architecture="mlp", builtin="breast_cancer",
    primary_metric="accuracy", thresholds=(("accuracy", 0.9),),
    description="Tabular binary classification (scikit-learn breast cancer, 30 features).",
))
register_task(TaskSpec(
    name="digits", kind="classification", architecture="cnn", builtin="digits",
    primary_metric="accuracy", thresholds=(("accuracy", 0.85),),
    description="Image classification of 1x8x8 handwritten digits (scikit-learn digits).",
))
register_task(TaskSpec(
    name="diabetes", kind="regression", architecture="mlp", builtin="diabetes",
    primary_metric="rmse", lower_is_better=True, thresholds=(("r2", 0.2),),
    description="Tabular regression of disease progression (scikit-learn diabetes, 10 features).",
))
register_task(TaskSpec(
    name="tabular_classification", kind="classification", architecture="mlp", builtin=None,
    primary_metric="accuracy", thresholds=(("accuracy", 0.5),),
    description="Your own CSV/Parquet (local or s3://) with a label column; MLP classifier.",
))
register_task(TaskSpec(
    name="tabular_regression", kind="regression", architecture="mlp", builtin=None,
    primary_metric="rmse", lower_is_better=True, thresholds=(),
    description="Your own CSV/Parquet (local or s3://) with a numeric target column; MLP regressor.",
))
