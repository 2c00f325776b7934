"""The task API: how a user brings their own model to Pillars (public, versioned as ``API_VERSION``).

A *task* is a small Python object in the user's own package. It says how to load and split the data,
what preprocessing is learned from the train split, which ``torch.nn.Module`` learns it, the loss,
the metrics (and which one the gate compares), and the inference signature: named inputs and outputs
with Open Inference Protocol datatypes and per-instance shapes, plus the request -> tensors
(:meth:`Task.encode`) and tensors -> response (:meth:`Task.decode`) steps. The same ``encode``/``decode``
run in training, evaluation, the gate, MLflow pyfunc and the model server, so preprocessing never
drifts between training and serving.

A pipeline run names a task as ``--task my_package.tasks:churn`` (an attribute that is a :class:`Task`
instance, or a :class:`Task` subclass constructible without arguments), or by the name of an entry point
in the group ``pillars.tasks``; the built-in tasks (:mod:`pillars.tasks`) are registered exactly so.
Constructor arguments travel as ``task_args`` (a JSON object); a task that is a dataclass gets them as
fields, and they are saved with the model so it can be rebuilt.

Data flow (every array is a numpy array whose first axis is the example; strings are numpy unicode
arrays (``dtype.kind == "U"``) so that splits are saved without pickle)::

    load_data(params) -> Dataset(train, val, test: Examples, info)
    fit_preprocessing(train, info) -> Preprocessing          # JSON, saved beside the weights
    build_model(prep) -> nn.Module
    signature(prep) -> Signature(inputs, outputs)            # derived from the declared inputs and outputs
    encode(inputs, prep) -> dict[str, Tensor]                 # model(**encoded) -> head
    targets(examples, prep) -> Tensor ; loss(head, targets)   # training
    decode(head, inputs, prep) -> Outputs                     # what clients receive
    evaluate(predict, examples, prep) -> metrics              # predict = encode -> model -> decode
    drift_features(inputs, prep) -> {name: [N] float}         # what the model server watches for drift

Most tasks subclass :class:`ClassificationTask` or :class:`RegressionTask`, which supply the
preprocessing of the target, the loss, targets, decode, outputs and metrics: such a task implements
only ``load_data``, ``build_model``, ``inputs`` and ``encode``. ``inputs`` (and ``outputs``) are a tuple
of :class:`TensorSpec` set as a class attribute, or a method of ``prep`` when they depend on what
preprocessing learned or on constructor arguments; ``signature`` is derived from them, and a task may
still override it. The methods added after the first release (``inputs``, ``outputs``, a derived
``signature``) keep ``API_VERSION`` 1: a task that overrides ``signature`` works as before.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
import importlib.metadata
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from sklearn import metrics as skm
from torch import nn

# The tensor contract is part of the task API: re-exported for user packages and saved models of API version 1.
from pillars.components.task.contract import DATATYPES as DATATYPES
from pillars.components.task.contract import InputError as InputError
from pillars.components.task.contract import Signature, TensorSpec
from pillars.components.task.sources import TableSource as TableSource
from pillars.components.task.sources import TableStatistics as TableStatistics
from pillars.components.errors import ConfigError, DataError
from pillars.components.registry.references import ENTRY_POINT_GROUP, known_tasks

API_VERSION = 1

Examples = dict[str, np.ndarray]
"""Named arrays with one row per example: a task's inputs (named as its signature) and its targets."""
Outputs = dict[str, np.ndarray]
"""Named output arrays, one row per example, named as the signature's outputs."""
Preprocessing = dict[str, Any]
"""What preprocessing learned from the train split (a vocabulary, scalers, id maps): JSON-ready."""

MISSING_POLICIES = ("median", "mean", "zero", "drop")
"""How a task that reads a table fills missing feature values (:attr:`DataParams.missing_policy`)."""


@dataclasses.dataclass
class DataParams:
    """Data parameters of a pipeline run; a task uses those that apply to it and ignores the rest.

    ``source``/``label_column``/``missing_policy``/``balance`` are for tasks that read the user's table.
    """

    source: str = ""
    label_column: str = ""
    seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    missing_policy: str = "median"
    balance: bool = False

    def __post_init__(self) -> None:
        if self.missing_policy not in MISSING_POLICIES:
            raise ConfigError(f"missing_policy must be one of {MISSING_POLICIES}, got {self.missing_policy!r}")
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 < value < 0.5:
                raise ConfigError(f"{name} must be in (0, 0.5), got {value}")


@dataclasses.dataclass
class Dataset:
    """The three splits and what is known about the data (``info`` is JSON: source, class names, ...)."""

    train: Examples
    val: Examples
    test: Examples
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def splits(self) -> dict[str, Examples]:
        return {"train": self.train, "val": self.val, "test": self.test}


class Task(abc.ABC):
    """A learning task: data, preprocessing, model, loss, metrics and inference signature.

    Class attributes a task sets:
        kind: ``classification``, ``regression`` or another word (``ranking``, ``forecasting``); the
            server measures prediction drift for the first two.
        primary_metric: the test metric the gate compares against the champion.
        lower_is_better: direction of ``primary_metric``.
        thresholds: the minimum (maximum for lower-is-better metrics) values the gate requires by default.
            Read-only: a dict a subclass sets is frozen when the class is created, so no task can change
            the defaults of another (or of its subclasses).
        lower_is_better_metrics: every metric name (besides ``primary_metric``) where lower is better.
        description: one line for ``pillars tasks`` and the docs.
        inputs, outputs: the signature's tensors, as a tuple of :class:`TensorSpec` (or the methods below).
    """

    kind: ClassVar[str] = "other"
    primary_metric: ClassVar[str] = ""
    lower_is_better: ClassVar[bool] = False
    thresholds: ClassVar[Mapping[str, float]] = types.MappingProxyType({})
    lower_is_better_metrics: ClassVar[frozenset[str]] = frozenset({"rmse", "mae", "mase", "loss"})
    description: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("thresholds")
        if isinstance(own, Mapping) and not isinstance(own, types.MappingProxyType):
            cls.thresholds = types.MappingProxyType(dict(own))

    # ---- data -------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def load_data(self, params: DataParams) -> Dataset:
        """Load, clean and split the data, deterministically for ``params.seed``; never download at run time.

        Raises:
            DataError: the data is missing, empty or malformed (the message names the problem).
        """

    def fit_preprocessing(self, train: Examples, info: Mapping[str, Any]) -> Preprocessing:
        """Learn preprocessing from the train split only (vocabulary, scalers, id maps); JSON-ready."""
        return {}

    def table_source(self, params: DataParams) -> TableSource | None:
        """The task's data as a table the data step reads with pandas or Spark (``engine``), instead of
        :meth:`load_data`'s arrays; None (the default): the task has no table source
        (:mod:`pillars.components.task.sources`)."""
        return None

    def fit_table_preprocessing(self, statistics: TableStatistics, info: Mapping[str, Any]) -> Preprocessing:
        """Preprocessing learned from the train split's statistics, for a task with a :meth:`table_source`."""
        raise ConfigError(f"task {type(self).__name__} gives a table source but no fit_table_preprocessing")

    # ---- model ------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def build_model(self, prep: Preprocessing) -> nn.Module:
        """A fresh model; ``model(**encode(inputs, prep))`` returns the head the loss and ``decode`` take."""

    def inputs(self, prep: Preprocessing) -> tuple[TensorSpec, ...]:
        """The tensors a request carries (never the targets), named as ``encode`` reads them.

        Override this method when the inputs depend on ``prep`` or on constructor arguments, or set
        ``inputs = (TensorSpec(...), ...)`` as a class attribute when they do not.
        """
        raise ConfigError(f"task {type(self).__name__} declares no inputs: set the class attribute "
                          "inputs = (TensorSpec(...),), or define inputs(prep) or signature(prep)")

    def outputs(self, prep: Preprocessing) -> tuple[TensorSpec, ...]:
        """The tensors a response carries, named as ``decode`` returns them (a method, or a tuple as a class
        attribute, as ``inputs``). :class:`ClassificationTask` and :class:`RegressionTask` declare theirs."""
        raise ConfigError(f"task {type(self).__name__} declares no outputs: set the class attribute "
                          "outputs = (TensorSpec(...),), or define outputs(prep) or signature(prep)")

    def signature(self, prep: Preprocessing) -> Signature:
        """The inputs a request carries and the outputs it gets back: the declared ``inputs`` and ``outputs``.

        Override it only where the two cannot be declared apart.

        Raises:
            ConfigError: ``inputs`` or ``outputs`` is undeclared, or not a tuple of :class:`TensorSpec`.
        """
        return Signature(_declared(self, "inputs", prep), _declared(self, "outputs", prep))

    @abc.abstractmethod
    def encode(self, inputs: Examples, prep: Preprocessing) -> dict[str, torch.Tensor]:
        """Turn checked request inputs (or a split's input columns) into the model's keyword arguments.

        Raises:
            InputError: a value the model cannot take (unknown id, too-short history), naming the input.
        """

    @abc.abstractmethod
    def targets(self, examples: Examples, prep: Preprocessing) -> torch.Tensor:
        """The training targets of a split, as the loss takes them."""

    @abc.abstractmethod
    def loss(self, head: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean loss of a batch."""

    @abc.abstractmethod
    def decode(self, head: torch.Tensor, inputs: Examples, prep: Preprocessing) -> Outputs:
        """The response outputs (named as ``signature(prep).outputs``) of a batch."""

    @abc.abstractmethod
    def evaluate(self, predict: Callable[[Examples], Outputs], examples: Examples,
                 prep: Preprocessing) -> dict[str, float]:
        """Metrics of a split; ``predict`` is the served path (encode, model, decode)."""

    def batch_metrics(self, head: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """Cheap metrics of a validation pass shown per epoch (e.g. accuracy); none by default."""
        return {}

    # ---- monitoring -------------------------------------------------------------------------------------
    def drift_features(self, inputs: Examples, prep: Preprocessing) -> dict[str, np.ndarray]:
        """Per-example numbers whose distribution the server compares with the train split's
        (e.g. token count and out-of-vocabulary share for text). Default: every numeric input, flattened."""
        features: dict[str, np.ndarray] = {}
        for spec in self.signature(prep).inputs:
            value = inputs.get(spec.name)
            if value is None or value.dtype.kind not in "iufb" or -1 in spec.shape:
                continue
            flat = np.asarray(value, dtype=np.float64).reshape(len(value), -1)
            if flat.shape[1] == 1:
                features[spec.name] = flat[:, 0]
            else:
                features.update({f"{spec.name}[{i}]": flat[:, i] for i in range(flat.shape[1])})
        return features

    def label_profile(self, train: Examples, prep: Preprocessing) -> dict[str, Any] | None:
        """The distribution of training targets, for prediction drift (classification and regression)."""
        return None

    # ---- identity ---------------------------------------------------------------------------------------
    def task_args(self) -> dict[str, Any]:
        """The constructor arguments saved with the model (a dataclass task's fields by default)."""
        if dataclasses.is_dataclass(self):
            return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        return {}

    # ---- optimisation (optional) ------------------------------------------------------------------------
    def student(self) -> Task | None:
        """A smaller model of the same task, for distillation (:mod:`pillars.components.optimize.variants`).

        Return the same task with smaller constructor arguments (e.g. ``dataclasses.replace(self,
        hidden=16)``): same data, preprocessing, ``encode`` and outputs, fewer parameters. It is saved
        with those arguments, so the distilled model loads like any other. Default None: this task
        cannot be distilled, and the optimize step says so instead of producing a student.
        """
        return None


class ClassificationTask(Task):
    """A classifier: the head is logits ``[N, classes]``; outputs ``label``, ``class_index``, ``probabilities``.

    ``prep["classes"]`` holds the class names (set it in :meth:`fit_preprocessing`, or leave the default,
    which reads ``info["classes"]``); targets are class indices in the column ``target_column``.
    """

    kind: ClassVar[str] = "classification"
    primary_metric: ClassVar[str] = "accuracy"
    target_column: ClassVar[str] = "label"

    def fit_preprocessing(self, train: Examples, info: Mapping[str, Any]) -> Preprocessing:
        if not info.get("classes"):
            raise DataError("a classification task's data info needs its class names under 'classes'")
        return {"classes": list(info["classes"])}

    def outputs(self, prep: Preprocessing) -> tuple[TensorSpec, ...]:
        """``label`` BYTES, ``class_index`` INT64 and ``probabilities`` FP32 ``[classes]``, as :meth:`decode` gives."""
        return (TensorSpec("label", "BYTES"), TensorSpec("class_index", "INT64"),
                TensorSpec("probabilities", "FP32", (len(prep["classes"]),)))

    def targets(self, examples: Examples, prep: Preprocessing) -> torch.Tensor:
        return torch.as_tensor(np.asarray(examples[self.target_column], dtype=np.int64))

    def loss(self, head: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(head.float(), targets)

    def decode(self, head: torch.Tensor, inputs: Examples, prep: Preprocessing) -> Outputs:
        probabilities = torch.softmax(head.float(), dim=-1).cpu().numpy().astype(np.float32)
        index = probabilities.argmax(axis=1).astype(np.int64)
        labels = np.asarray(prep["classes"], dtype=object)[index]
        return {"label": labels, "class_index": index, "probabilities": probabilities}

    def batch_metrics(self, head: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        return {"accuracy": float((head.argmax(-1) == targets).float().mean())}

    def evaluate(self, predict: Callable[[Examples], Outputs], examples: Examples,
                 prep: Preprocessing) -> dict[str, float]:
        out = predict(examples)
        y = np.asarray(examples[self.target_column], dtype=np.int64)
        n = len(prep["classes"])
        result = {"accuracy": skm.accuracy_score(y, out["class_index"]),
                  "f1_macro": skm.f1_score(y, out["class_index"], average="macro", labels=range(n), zero_division=0)}
        if n == 2 and len(np.unique(y)) == 2:
            result["roc_auc"] = skm.roc_auc_score(y, out["probabilities"][:, 1])
        return {k: float(v) for k, v in result.items()}

    def label_profile(self, train: Examples, prep: Preprocessing) -> dict[str, Any] | None:
        counts = np.bincount(np.asarray(train[self.target_column], dtype=np.int64), minlength=len(prep["classes"]))
        return {"classes": list(prep["classes"]), "counts": counts.tolist(),
                "shares": (counts / max(counts.sum(), 1)).tolist()}


class RegressionTask(Task):
    """A regressor of one value: the head is ``[N, 1]`` on a standardised target scale; outputs ``value``.

    :meth:`fit_preprocessing` stores the target's train mean and standard deviation as
    ``prep["target_mean"]``/``prep["target_std"]``; the loss is MSE on that scale.
    """

    kind: ClassVar[str] = "regression"
    primary_metric: ClassVar[str] = "rmse"
    lower_is_better: ClassVar[bool] = True
    target_column: ClassVar[str] = "label"

    def fit_preprocessing(self, train: Examples, info: Mapping[str, Any]) -> Preprocessing:
        y = np.asarray(train[self.target_column], dtype=np.float64)
        return {"target_mean": float(y.mean()), "target_std": float(y.std() or 1.0)}

    def outputs(self, prep: Preprocessing) -> tuple[TensorSpec, ...]:
        """``value`` FP32, one number per row on the target's own scale, as :meth:`decode` gives."""
        return (TensorSpec("value", "FP32"),)

    def targets(self, examples: Examples, prep: Preprocessing) -> torch.Tensor:
        y = np.asarray(examples[self.target_column], dtype=np.float32)
        return torch.as_tensor((y - prep["target_mean"]) / prep["target_std"], dtype=torch.float32)

    def loss(self, head: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(head.float().reshape(-1), targets)

    def decode(self, head: torch.Tensor, inputs: Examples, prep: Preprocessing) -> Outputs:
        value = head.float().reshape(-1).cpu().numpy() * prep["target_std"] + prep["target_mean"]
        return {"value": value.astype(np.float32)}

    def evaluate(self, predict: Callable[[Examples], Outputs], examples: Examples,
                 prep: Preprocessing) -> dict[str, float]:
        y = np.asarray(examples[self.target_column], dtype=np.float64)
        value = predict(examples)["value"]
        return {"rmse": float(np.sqrt(skm.mean_squared_error(y, value))),
                "mae": float(skm.mean_absolute_error(y, value)), "r2": float(skm.r2_score(y, value))}

    def label_profile(self, train: Examples, prep: Preprocessing) -> dict[str, Any] | None:
        from pillars.components.data.profile import feature_profile

        return feature_profile(np.asarray(train[self.target_column], dtype=np.float64))


def _declared(task: Task, name: str, prep: Preprocessing) -> tuple[TensorSpec, ...]:
    """A task's ``inputs`` or ``outputs``: its class attribute, or what its method returns for ``prep``."""
    declared = getattr(task, name)
    specs = declared(prep) if callable(declared) else declared
    if isinstance(specs, list):
        specs = tuple(specs)
    if not isinstance(specs, tuple) or not all(isinstance(s, TensorSpec) for s in specs):
        hint = " (a tuple of one needs a trailing comma: (TensorSpec(...),))" if isinstance(specs, TensorSpec) else ""
        raise ConfigError(f"task {type(task).__name__}: {name} must be a tuple of TensorSpec, "
                          f"got {type(specs).__name__}{hint}")
    return specs


# ---- finding a task ---------------------------------------------------------------------------------------

class TaskNotFound(ConfigError):
    """The task reference names nothing installed (the message names the package to install)."""


def load_task(reference: str, args: Mapping[str, Any] | None = None) -> Task:
    """The task named by ``reference``: ``package.module:attribute`` or an entry point in ``pillars.tasks``.

    The attribute is a :class:`Task` instance (used as it is, or rebuilt with ``args`` when it is a
    dataclass and ``args`` are given) or a :class:`Task` subclass (constructed with ``**args``).
    Task code is only ever imported from installed packages, never from a model artifact.

    Raises:
        TaskNotFound: the module or attribute does not exist; the message names the package to install.
        ConfigError: the attribute is not a task, or the arguments do not fit it.
    """
    args = dict(args or {})
    target = _resolve(reference)
    if isinstance(target, type) and issubclass(target, Task):
        try:
            return target(**args)
        except TypeError as e:
            raise ConfigError(f"task {reference!r} does not take these arguments: {e}") from e
    if isinstance(target, Task):
        if not args:
            return target
        if dataclasses.is_dataclass(target):
            try:
                return dataclasses.replace(target, **args)
            except TypeError as e:
                raise ConfigError(f"task {reference!r} does not take these arguments: {e}") from e
        raise ConfigError(f"task {reference!r} is an instance that takes no arguments; got {sorted(args)}")
    raise ConfigError(f"{reference!r} is a {type(target).__name__}, not a pillars Task (subclass or instance)")


def task_reference(reference: str) -> str:
    """The ``module:attribute`` form of a reference (entry-point names are resolved), as saved in models."""
    if ":" in reference:
        return reference
    return _entry_point(reference).value


def _entry_point(name: str) -> importlib.metadata.EntryPoint:
    found = [ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not found:
        raise TaskNotFound(f"unknown task {name!r}; installed tasks: {', '.join(sorted(known_tasks()))} "
                           "(or give your own as package.module:attribute)")
    return found[0]


def _resolve(reference: str) -> Any:
    if not isinstance(reference, str) or not reference.strip():
        raise ConfigError("a task reference is needed: a task name or package.module:attribute")
    value = reference if ":" in reference else _entry_point(reference).value
    module_name, _, attribute = value.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"task reference {reference!r} must look like package.module:attribute")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        missing = (e.name or module_name).split(".")[0]
        raise TaskNotFound(f"task {value!r} needs the Python package that provides {e.name or module_name!r}, "
                           f"which is not installed here: install {missing!r} (pip install, or build the "
                           "image FROM pillars with it)") from e
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise TaskNotFound(f"module {module_name!r} has no attribute {attribute!r} "
                               f"(task reference {value!r}); is the installed version the right one?") from None
    return target


def check_examples(examples: Examples, names: Sequence[str], where: str) -> int:
    """Rows shared by ``names`` in ``examples``, or a DataError naming a missing or ragged column."""
    missing = [n for n in names if n not in examples]
    if missing:
        raise DataError(f"{where}: missing column(s) {missing}; present: {sorted(examples)}")
    lengths = {n: len(examples[n]) for n in names}
    if len(set(lengths.values())) > 1:
        raise DataError(f"{where}: columns differ in length: {lengths}")
    return next(iter(lengths.values()), 0)
