"""Step 1, data preparation, through the task API: load and split the task's data, fit its preprocessing
on the train split, profile the train split's drift features. With the ``feedback`` parameter, the labelled
rows a model server kept inputs for join the train split only (validation and test stay the task's own, so
the gate judges every run on the same kind of rows); the metadata's ``feedback`` records how many.

The splits and the metadata are written in the format of :mod:`pillars.components.data.splits`, which
the later steps read; the metadata carries the drift profile every registered model keeps as
``data_profile.json``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from pillars.components.errors import ConfigError, DataError
from pillars.components.task.examples import row_count
from pillars.components.parameters import parse_json_object
from pillars.components.model.predictor import drift_matrix
from pillars.components.data.profile import drift_profile
from pillars.components.data.spark_sizes import SparkSizes
from pillars.components.registry.references import default_model_name
from pillars.components.data.feedback import (
    TRAINABLE_KINDS,
    FeedbackRows,
    FeedbackStoreError,
    add_feedback,
    feedback_examples,
    feedback_hash,
    feedback_store,
    lineage,
)
from pillars.components.data.splits import (PreparedMetadata, input_names, inputs_of, save_metadata, save_split,
                                             storable)
from pillars.components.task import (
    DataParams,
    Dataset,
    Examples,
    Preprocessing,
    Task,
    check_examples,
    load_task,
    task_reference,
)

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class PrepareParams(DataParams):
    """How to prepare the data (all are pipeline parameters): the task and the data parameters.

    ``task`` is an installed task's name (``breast_cancer``) or ``package.module:attribute``;
    ``task_args`` its constructor arguments as a JSON object (empty: none).
    """

    task: str = "breast_cancer"
    task_args: str = ""
    engine: str = "pandas"
    """``pandas`` (the task's arrays in memory, ``.npz`` splits) or ``spark`` (its table source on Apache Spark,
    Parquet shard splits: :mod:`pillars.components.data.prepare_table`)."""
    model_name: str = ""
    """The registered (and served) model's name; empty: the task's default name. Names its feedback."""
    feedback: str = ""
    """A model server's feedback store (a folder or ``s3://bucket/prefix``): its trainable labelled rows join
    the train split (:mod:`pillars.components.data.feedback`). Empty: none."""
    spark_launcher: str = "local"
    """Where ``engine=spark`` runs: ``local`` (Spark ``local[*]`` in this process) or ``operator`` (a
    SparkApplication of the Kubeflow Spark Operator: :mod:`pillars.components.data.spark_application`)."""
    spark_driver_cores: int = 1
    spark_driver_memory: str = "2g"
    spark_executors: int = 2
    spark_executor_cores: int = 1
    spark_executor_memory: str = "2g"
    """The SparkApplication's sizes (``spark_launcher=operator``; :class:`SparkSizes`); the driver's memory is
    also the heap of Spark ``local[*]`` (``spark_launcher=local``)."""

    def __post_init__(self) -> None:
        super().__post_init__()  # checks the fractions and the missing policy
        parse_task_args(self.task_args)
        if self.engine not in ("pandas", "spark"):
            raise ConfigError(f"engine must be 'pandas' or 'spark', got {self.engine!r}")
        if self.spark_launcher not in ("local", "operator"):
            raise ConfigError(f"spark_launcher must be 'local' or 'operator', got {self.spark_launcher!r}")
        if self.spark_launcher == "operator" and self.engine != "spark":
            raise ConfigError(f"spark_launcher=operator needs engine=spark, got engine={self.engine!r}")
        self.spark_sizes()  # a bad size fails here, naming its parameter
        if self.feedback:
            if self.engine != "pandas":
                raise ConfigError("feedback rows need engine=pandas (the spark engine streams shards it does "
                                  "not rewrite)")
            feedback_store(self.feedback, self.model_name or "model")  # a bad location fails here

    def feedback_model(self) -> str:
        """Whose labels the feedback store holds: ``model_name``, else the task's default name."""
        return self.model_name or default_model_name(self.task)

    def spark_sizes(self) -> SparkSizes:
        """The ``spark_*`` sizes, checked (a ConfigError names the bad parameter)."""
        return SparkSizes.from_parameters(dataclasses.asdict(self))

    def data_params(self) -> DataParams:
        return DataParams(**{f.name: getattr(self, f.name) for f in dataclasses.fields(DataParams)})

    def load(self) -> Task:
        """The task, built with its arguments (one line naming an unknown task or a missing package)."""
        return load_task(self.task, parse_task_args(self.task_args))


def parse_task_args(text: str | Mapping[str, Any]) -> dict[str, Any]:
    """A task's arguments from a JSON object string (``'{"epochs_hint": 3}'``); empty means none.

    Raises:
        ConfigError: not a JSON object.
    """
    return parse_json_object("task_args", text, '{"hidden": 64}')


@dataclasses.dataclass
class PreparedData:
    """The three splits (named arrays) plus the metadata every later step reads (with the profile)."""

    splits: dict[str, Examples]
    metadata: PreparedMetadata
    task: Task


def task_profile(task: Task, train: Examples, prep: Preprocessing, seed: int = 0) -> dict[str, Any]:
    """The drift profile of the train split: the task's drift features of its inputs, its label profile."""
    names, matrix = drift_matrix(task, inputs_of(task, prep, train), prep)
    return drift_profile(names, matrix, task.label_profile(train, prep), task.kind, seed)


def prepare(params: PrepareParams) -> PreparedData:
    """Load and split the task's data, fit preprocessing on the train split, and profile it.

    Raises:
        DataError: the task's data is missing or malformed, or a split lacks one of the task's inputs.
        ConfigError: an unknown task (one line naming the installed ones), a missing package, bad arguments.
    """
    task = params.load()
    reference = task_reference(params.task)
    data = task.load_data(params.data_params())
    prep = task.fit_preprocessing(data.train, data.info)
    feedback = None
    if params.feedback:
        data, feedback = _with_feedback(task, data, prep, params)
        prep = task.fit_preprocessing(data.train, data.info)  # fitted on the rows it trains on
    signature = task.signature(prep)
    required = [s.name for s in signature.inputs if not s.optional]
    for name, split in data.splits().items():
        present = [s.name for s in signature.inputs if s.name in split]
        if not present:  # every input optional (one of several forms, as audio or wav), none given
            raise DataError(f"{reference}: the {name} split holds none of the inputs "
                            f"{[s.name for s in signature.inputs]}")
        if check_examples(split, list(dict.fromkeys(required + present)), f"{reference} {name} split") == 0:
            raise DataError(f"{reference}: the {name} split is empty")
    splits = {name: storable(split, f"{reference} {name} split") for name, split in data.splits().items()}
    info = _json_ready(data.info)
    metadata = PreparedMetadata(
        task=reference,
        task_name=default_model_name(params.task),
        task_args=parse_task_args(params.task_args),
        kind=task.kind,
        info=info,
        prep=_json_ready(prep),
        signature=_json_ready(signature.to_dict()),
        data_hash=_data_hash(str(info.get("data_hash") or hash_examples(splits)), feedback),
        split_rows={name: row_count(split) for name, split in splits.items()},
        seed=params.seed,
        source=str(info.get("source") or params.source or reference),
        profile=task_profile(task, splits["train"], prep, params.seed),
        feedback=lineage(params.feedback, feedback) if feedback is not None else None,
    )
    return PreparedData(splits, metadata, task)


def _with_feedback(task: Task, data: Dataset, prep: Preprocessing,
                   params: PrepareParams) -> tuple[Dataset, FeedbackRows]:
    """``data`` with the feedback store's trainable rows appended to its train split (validation and test
    stay the task's own, so the gate judges on the same rows).

    Raises:
        ConfigError: the task's kind takes no feedback rows.
        DataError: the feedback does not fit the train split, or a line is malformed (naming it).
    """
    if task.kind not in TRAINABLE_KINDS:
        raise ConfigError(f"feedback rows need a classification or regression task; {params.task} is "
                          f"{task.kind}")
    store = feedback_store(params.feedback, params.feedback_model())
    target = getattr(task, "target_column", "label")
    classes = prep.get("classes") if task.kind == "classification" else None
    try:
        rows = feedback_examples(store, input_names(task, prep), target, classes)
    except FeedbackStoreError as e:
        raise DataError(f"cannot read the feedback store {store.where}: {e.strerror or e}") from e
    if rows.rows + rows.without_inputs == 0:
        logger.warning("no feedback labels for model %s in %s", params.feedback_model(), store.where)
    else:
        logger.info("feedback from %s: %d trainable rows added to the train split, %d labels without inputs",
                    store.where, rows.rows, rows.without_inputs)
    train = add_feedback(data.train, rows, store.where)
    return dataclasses.replace(data, train=train), rows


def _data_hash(base: str, feedback: FeedbackRows | None) -> str:
    """The task data's hash, joined with the feedback rows' when there are any."""
    if feedback is None or feedback.rows == 0:
        return base
    return hashlib.sha256(f"{base}+{feedback_hash(feedback)}".encode()).hexdigest()[:16]


def hash_examples(splits: Mapping[str, Examples]) -> str:
    """A short hash of every split's named arrays (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    for split in sorted(splits):
        for name in sorted(splits[split]):
            array = np.ascontiguousarray(splits[split][name])
            digest.update(f"{split}/{name}/{array.dtype.str}/{array.shape}".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def _json_ready(value: Any) -> Any:
    """``value`` with numpy scalars and arrays as plain JSON values."""
    return json.loads(json.dumps(value, default=_plain))


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON-ready")


def run_prepare(params: PrepareParams, train_path: str, val_path: str, test_path: str, metadata_path: str) -> str:
    """Prepare and write the three splits and the metadata; returns the data hash."""
    data = prepare(params)
    for name, path in (("train", train_path), ("val", val_path), ("test", test_path)):
        save_split(path, data.splits[name])
    save_metadata(metadata_path, data.metadata)
    return data.metadata.data_hash
