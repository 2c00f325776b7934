"""The task base class and what it reads and returns: :class:`Task`, :class:`DataParams`, :class:`Dataset`.

Part of the task API (:mod:`pillars.components.task`, which re-exports every name here and documents the
data flow). :class:`Task` declares the hooks a user implements; the stock bases that supply most of them
are in :mod:`pillars.components.task.stock`, and finding a task by reference in
:mod:`pillars.components.task.loading`.
"""

from __future__ import annotations

import abc
import dataclasses
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from pillars.components.errors import ConfigError, DataError
from pillars.components.task.contract import Signature, TensorSpec
from pillars.components.task.sources import TableSource, TableStatistics

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

    def drift_matrix(self, inputs: Examples, prep: Preprocessing) -> tuple[list[str], np.ndarray]:
        """:meth:`drift_features` as their names and a float64 ``[N, F]`` matrix, one column per name in
        order (what the server observes once per forward pass, and the training profile describes).

        Default: the features stacked. A task whose features are the columns of one array may return that
        array instead of splitting it into columns to stack them again (the same matrix, without one
        Python step per feature on every forward pass)."""
        features = self.drift_features(inputs, prep)
        names = list(features)
        n = len(next(iter(inputs.values()))) if inputs else 0
        matrix = (np.stack([np.asarray(features[k], dtype=np.float64).reshape(-1) for k in names], axis=1) if names
                  else np.zeros((n, 0)))
        return names, matrix

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




def check_examples(examples: Examples, names: Sequence[str], where: str) -> int:
    """Rows shared by ``names`` in ``examples``, or a DataError naming a missing or ragged column."""
    missing = [n for n in names if n not in examples]
    if missing:
        raise DataError(f"{where}: missing column(s) {missing}; present: {sorted(examples)}")
    lengths = {n: len(examples[n]) for n in names}
    if len(set(lengths.values())) > 1:
        raise DataError(f"{where}: columns differ in length: {lengths}")
    return next(iter(lengths.values()), 0)
