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

The definitions live by concern: :mod:`~pillars.components.task.base` (the :class:`Task` base and its data
types), :mod:`~pillars.components.task.stock` (the stock bases), :mod:`~pillars.components.task.loading`
(finding a task), :mod:`~pillars.components.task.contract` (the tensor contract) and
:mod:`~pillars.components.task.sources` (table sources). This package re-exports them: user packages and
saved models of API version 1 import every name from ``pillars.components.task``.
"""

from __future__ import annotations

from pillars.components.errors import ConfigError, DataError
from pillars.components.registry.references import ENTRY_POINT_GROUP, known_tasks
from pillars.components.task.base import (
    API_VERSION,
    MISSING_POLICIES,
    DataParams,
    Dataset,
    Examples,
    Outputs,
    Preprocessing,
    Task,
    check_examples,
)
from pillars.components.task.contract import DATATYPES, InputError, Signature, TensorSpec
from pillars.components.task.loading import TaskNotFound, load_task, task_reference
from pillars.components.task.sources import TableSource, TableStatistics
from pillars.components.task.stock import ClassificationTask, RegressionTask

__all__ = [
    "API_VERSION", "DATATYPES", "ENTRY_POINT_GROUP", "MISSING_POLICIES", "ClassificationTask", "ConfigError",
    "DataError", "DataParams", "Dataset", "Examples", "InputError", "Outputs", "Preprocessing", "RegressionTask",
    "Signature", "TableSource", "TableStatistics", "Task", "TaskNotFound", "TensorSpec", "check_examples",
    "known_tasks", "load_task", "task_reference",
]
