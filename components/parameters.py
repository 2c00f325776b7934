"""Run parameters, defined once: every parameter a user sets per pipeline run, and the one JSON-object parser.

A :class:`Parameter` names its type, default, help text, allowed values and the steps (the component
bodies of :mod:`pillars.components.ops` and :mod:`pillars.components.optimize.op`) that take it.
:data:`PIPELINE_PARAMETERS` holds the parameters of each pipeline, in signature order.

Derived from this table, never written again:

- the pipelines' signatures and parameter descriptions (:func:`signature`, :func:`docstring`; used by
  :mod:`pillars.pipelines.training` and :mod:`pillars.pipelines.optimize`), so KFP's parameter list, the
  console's run form (read from the compiled pipeline) and ``--param`` typing follow it;
- the parameter list in ``pillars run --help`` (:func:`help_lines`) and the check of allowed values
  (:func:`check_choices`);
- the keyword arguments the pipelines pass to their steps (:func:`step_arguments`).

Written literally, because KFP ships a component body as source text and reads its annotations, or because
they check the values: the component signatures (``ops.py``, ``optimize_op.py``) and the dataclasses
``DataParams``, ``PrepareParams``, ``TrainParams``, ``OptimizeParams``/``Guard``.
``tests/pipelines/test_parameters.py`` proves those agree with this table (names, types, defaults).

To add a hyperparameter: one entry here, the field of the dataclass that uses it and the component
that passes it on; the test names whichever of the two is missing.

Importing this module imports nothing heavy (no kfp, torch or pydantic): the CLI's help reads it.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

from pillars.components.errors import ConfigError


class _Required:
    """The default of a parameter that has none (the run must give it)."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Final = _Required()


@dataclasses.dataclass(frozen=True)
class Parameter:
    """One run parameter.

    Attributes:
        name: the parameter's name (``--param NAME=VALUE``, the KFP input, the form field).
        type: ``str``, ``int``, ``float`` or ``bool``.
        default: its default, or :data:`REQUIRED`.
        help: one sentence for KFP's description, the console's field help and ``pillars run --help``.
        steps: the component bodies that take it under this name (none: the pipeline itself uses it).
        choices: the allowed values, when only some are.
    """

    name: str
    type: type
    default: Any
    help: str
    steps: tuple[str, ...] = ()
    choices: tuple[Any, ...] = ()

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


_TRACKED = ("train", "evaluate", "validate", "register", "promote")
"""The training steps that talk to MLflow (take ``tracking_uri``)."""

TRAINING: Final[tuple[Parameter, ...]] = (
    Parameter("task", str, "breast_cancer",
              "An installed task's name (pillars tasks lists them: breast_cancer, digits, diabetes, "
              "tabular_classification, ...) or your own as package.module:attribute.",
              ("resolve_task", "prepare_data")),
    Parameter("task_args", str, "",
              "The task's constructor arguments as a JSON object, e.g. {\"hidden_sizes\": [64]}; empty: none.",
              ("resolve_task", "prepare_data")),
    Parameter("source", str, "", "Your data: a CSV or Parquet file, local or s3://; empty for a built-in task.",
              ("prepare_data",)),
    Parameter("label_column", str, "", "The label column of your data (tasks that read your table).",
              ("prepare_data",)),
    Parameter("model_name", str, "",
              "Registered model name; empty: the task's name (the attribute's name for package.module:attribute).",
              ("resolve_task", "prepare_data", "train", "validate", "register")),
    Parameter("warm_start", bool, False, "Start from the champion's weights when its inputs match.", ("train",)),
    Parameter("epochs", int, 30, "Maximum training epochs (early stopping may end sooner).", ("train",)),
    Parameter("batch_size", int, 64, "Rows per batch (per process with nproc > 1).", ("train",)),
    Parameter("learning_rate", float, 1e-3, "AdamW learning rate.", ("train",)),
    Parameter("weight_decay", float, 1e-4, "AdamW weight decay.", ("train",)),
    Parameter("dropout", float, -1.0,
              "Probability of every dropout layer of the model, in [0, 1); -1 keeps the task's own.", ("train",)),
    Parameter("seed", int, 0, "Random seed of the split and the initial weights.", ("prepare_data", "train")),
    Parameter("patience", int, 5, "Epochs without validation improvement before stopping.", ("train",)),
    Parameter("nproc", int, 1, "Data-parallel processes per node (DDP).", ("train",)),
    Parameter("nodes", int, 1, "Nodes of a Kubeflow Trainer TrainJob (launcher=trainjob).", ("train",)),
    Parameter("launcher", str, "local", "local (this pod or machine) or trainjob (Kubeflow Trainer).", ("train",),
              choices=("local", "trainjob")),
    Parameter("gpus_per_node", int, 0, "GPUs per TrainJob node.", ("train",)),
    Parameter("val_fraction", float, 0.15, "Share of rows for validation, in (0, 0.5).", ("prepare_data",)),
    Parameter("test_fraction", float, 0.15, "Share of rows for the test split, in (0, 0.5).", ("prepare_data",)),
    Parameter("missing_policy", str, "median", "How missing values are filled: median, mean, zero or drop.",
              ("prepare_data",), choices=("median", "mean", "zero", "drop")),
    Parameter("balance", bool, False, "Oversample minority classes in the training split.", ("prepare_data",)),
    Parameter("engine", str, "pandas",
              "The data step's engine: pandas (in the step's memory) or spark (Apache Spark; your table's splits "
              "become Parquet shards that training streams).", ("prepare_data",), choices=("pandas", "spark")),
    Parameter("spark_launcher", str, "local",
              "Where engine=spark runs: local (Spark local[*] in the step's own pod or process) or operator (a "
              "SparkApplication of the Kubeflow Spark Operator on the cluster, sized by the spark_* parameters).",
              ("prepare_data",), choices=("local", "operator")),
    Parameter("spark_driver_cores", int, 1, "CPU cores of the Spark driver (spark_launcher=operator).",
              ("prepare_data",)),
    Parameter("spark_driver_memory", str, "2g",
              "Memory of the Spark driver, like 2g or 512m: Spark local[*]'s heap (spark_launcher=local) or the "
              "driver pod's (operator).", ("prepare_data",)),
    Parameter("spark_executors", int, 2, "Spark executors (spark_launcher=operator).", ("prepare_data",)),
    Parameter("spark_executor_cores", int, 1, "CPU cores per Spark executor (spark_launcher=operator).",
              ("prepare_data",)),
    Parameter("spark_executor_memory", str, "2g",
              "Memory per Spark executor, like 4g or 512m (spark_launcher=operator).", ("prepare_data",)),
    Parameter("feedback", str, "",
              "The model server's feedback store (its --feedback_dir: a folder or s3://bucket/prefix): the "
              "labelled rows whose inputs the server kept join the train split only (never validation or test); "
              "the counts are recorded on the run and the version. Empty: none.", ("prepare_data",)),
    Parameter("thresholds", str, "",
              "JSON minimums for the gate, e.g. {\"accuracy\": 0.95}; empty: the task's defaults ({} is refused).",
              ("validate", "promote")),
    Parameter("margin", float, 0.0,
              "How much worse than the champion the candidate may be and still be approved, on the primary "
              "metric's scale: >= 0, at most 1 for a higher-is-better metric.", ("validate", "promote")),
    Parameter("tracking_uri", str, "", "MLflow tracking URI; empty: MLFLOW_TRACKING_URI or the local store.",
              ("resolve_task", *_TRACKED)),
    Parameter("reason", str, "",
              "Why this run started (the trigger passes its alert's reason); a tag of the training run and the "
              "registered version.", ("train", "register")),
    Parameter("checkpoint_root", str, "", "Where training checkpoints go so a retry resumes.", ("train",)),
    Parameter("optimize", bool, False,
              "After a promotion, run the optimize step on the new champion (ONNX, int8, pruned and distilled "
              "variants within the accuracy guard; alias edge); off by default."),
    Parameter("replace_task", bool, False,
              "Let this run's model replace a champion of another task or input signature under model_name "
              "(recorded in the alias history); off by default: such a run is refused before training.",
              ("validate", "promote")),
)
"""Parameters of the training and retraining pipelines (see :data:`PIPELINE_PARAMETERS` for the differences)."""

VARIANT_NAMES: Final = ("onnx", "onnx-int8", "onnx-int8-static", "pruned", "distilled")
"""The optimize step's variants (``components.optimize.VARIANTS``; the test proves they are equal)."""

OPTIMIZE: Final[tuple[Parameter, ...]] = (
    Parameter("model", str, REQUIRED,
              "The registered version to optimise: models:/NAME@champion (an alias) or models:/NAME/VERSION.",
              ("optimize",)),
    Parameter("variants", str, ",".join(VARIANT_NAMES),
              f"Comma-separated variants to make, of: {', '.join(VARIANT_NAMES)}.", ("optimize",)),
    Parameter("max_drop_points", float, 1.0,
              "Largest drop, in points, of a higher-is-better metric (accuracy) a variant may show.", ("optimize",)),
    Parameter("max_relative_worsening", float, 0.05,
              "Largest relative increase of a lower-is-better metric (RMSE, MASE).", ("optimize",)),
    Parameter("sparsity", float, 0.5, "Share of Linear/Conv weights pruning sets to zero, in (0, 1).",
              ("optimize",)),
    Parameter("prune_epochs", int, 2, "Fine-tune epochs after pruning.", ("optimize",)),
    Parameter("distill_epochs", int, 15, "Training epochs of the distilled student.", ("optimize",)),
    Parameter("temperature", float, 2.0, "Temperature of the teacher's soft targets.", ("optimize",)),
    Parameter("data_args", str, "",
              "JSON object of data parameters (seed, val_fraction, test_fraction, source...) overriding the "
              "parent run's, so the variants are judged on the split the parent was tested on.", ("optimize",)),
    Parameter("tracking_uri", str, "", "MLflow tracking URI; empty: MLFLOW_TRACKING_URI or the local store.",
              ("optimize",)),
    Parameter("task", str, "",
              "The task the version must be a model of (a name or package.module:attribute); empty: any.",
              ("optimize",)),
)
"""Parameters of the optimize pipeline."""


def _variant(table: Sequence[Parameter], drop: Iterable[str] = (), **defaults: Any) -> tuple[Parameter, ...]:
    """``table`` without ``drop``, with other ``defaults``; required parameters first (Python's rule)."""
    changed = [dataclasses.replace(p, default=defaults.get(p.name, p.default)) for p in table if p.name not in drop]
    return tuple(sorted(changed, key=lambda p: not p.required))


PIPELINE_PARAMETERS: Final[Mapping[str, tuple[Parameter, ...]]] = {
    "training": _variant(TRAINING, drop=("warm_start",)),  # a first training has no champion to start from
    "retraining": _variant(TRAINING, model_name=REQUIRED, task="", warm_start=True),  # task "": the champion's
    "optimize": OPTIMIZE,
}
"""Each pipeline's parameters, in signature order."""


def parameters(pipeline: str) -> tuple[Parameter, ...]:
    """The parameters of ``pipeline`` (a name in :data:`PIPELINE_PARAMETERS`), in signature order.

    Raises:
        ConfigError: an unknown pipeline.
    """
    try:
        return PIPELINE_PARAMETERS[pipeline]
    except KeyError:
        raise ConfigError(f"unknown pipeline {pipeline!r}; choose from: {', '.join(PIPELINE_PARAMETERS)}") from None


def signature(table: Sequence[Parameter], **defaults: Any) -> inspect.Signature:
    """The Python signature of a pipeline function taking ``table`` (KFP reads it: names, annotations,
    defaults); ``defaults`` replace the table's where the pipeline's build options decide them."""
    return inspect.Signature([
        inspect.Parameter(p.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=p.type,
                          default=inspect.Parameter.empty if p.required else defaults.get(p.name, p.default))
        for p in table])


def docstring(table: Sequence[Parameter], title: str = "Pipeline parameters.") -> str:
    """A Google-style docstring whose ``Args`` are the parameters' help (KFP's parameter descriptions)."""
    return "\n".join([title, "", "Args:", *(f"    {p.name}: {p.help}" for p in table), ""])


def pipeline_function(name: str, body: Callable[[dict[str, Any]], None], title: str = "Pipeline parameters.",
                      **defaults: Any) -> Callable[..., None]:
    """A pipeline function for ``dsl.pipeline``: the signature (:func:`signature`) and docstring
    (:func:`docstring`) of pipeline ``name``'s parameters, calling ``body`` with them as one dict.

    KFP reads the signature (``inspect.signature``: names, annotations, defaults) and the docstring
    (descriptions), and calls the function with the parameters in signature order. ``defaults`` replace
    the table's where the pipeline's build options decide them.
    """
    table = parameters(name)

    def pipeline(*values: Any) -> None:
        body(dict(zip([p.name for p in table], values, strict=True)))

    pipeline.__name__ = pipeline.__qualname__ = name
    pipeline.__signature__ = signature(table, **defaults)  # what inspect.signature returns
    pipeline.__doc__ = docstring(table, title)
    return pipeline


def step_arguments(step: str, table: Sequence[Parameter], values: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments component ``step`` takes from the pipeline's parameters ``values``."""
    return {p.name: values[p.name] for p in table if step in p.steps}


def check_choices(table: Sequence[Parameter], values: Mapping[str, Any]) -> None:
    """Refuse a value outside its parameter's choices.

    Raises:
        ConfigError: naming the parameter, the value and the allowed values.
    """
    for p in table:
        if p.choices and p.name in values and values[p.name] not in p.choices:
            names = [repr(c) for c in p.choices]
            allowed = " or ".join(names) if len(names) <= 2 else f"one of {', '.join(names)}"
            raise ConfigError(f"{p.name} must be {allowed}, got {values[p.name]!r}")


def help_lines(pipeline: str, width: int = 100) -> list[str]:
    """``name=default  help`` for each parameter of ``pipeline``, wrapped at ``width`` (``pillars run --help``)."""
    lines = []
    for p in parameters(pipeline):
        value = " (required)" if p.required else f"={json.dumps(p.default) if p.type is str else p.default}"
        lines += textwrap.wrap(f"{p.name}{value}  {p.help}", width, initial_indent="  ", subsequent_indent="      ")
    return lines


def parse_json_object(name: str, text: str | Mapping[str, Any], example: str = '{"key": 1}') -> dict[str, Any]:
    """The JSON object a parameter's text holds (``task_args``, ``thresholds``, ``data_args``); empty: ``{}``.

    The one parser of JSON-object parameters: the CLI's ``--task-arg`` merging, the data step, the gate and
    the optimize step call it, so each refuses bad text with the same message.

    Raises:
        ConfigError: ``name must be a JSON object like EXAMPLE, got TEXT`` (and why, when it is not JSON).
    """
    if isinstance(text, Mapping):
        return dict(text)
    if not str(text).strip():
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{name} must be a JSON object like '{example}', got {text!r}: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{name} must be a JSON object like '{example}', got {text!r}")
    return data
