"""The KFP v2 components: thin wrappers over each step's plain function.

The bodies below are plain functions; :func:`components` turns them into KFP components that run in
one given image (the pipeline author's choice, made when the pipeline is built: ``pillars compile
--image``) with ``install_kfp_package=False``: nothing is installed at run time, and the same
component runs under ``kfp.local.SubprocessRunner`` and on a cluster. Importing this module reads
no settings. Bodies import inside the function because KFP ships each body as source text.
Each body first calls :func:`pillars.components.shutdown.skip_final_collection`: its process ends without
the interpreter's full collections over the heap the step's imports built (seconds per step).
"""

# No `from __future__ import annotations`: KFP reads the annotations as real types.
import dataclasses
import functools
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output
from kfp.dsl.python_component import PythonComponent


def resolve_task(model_name: str, task: str, task_args: str, tracking_uri: str
                 ) -> NamedTuple("Resolved", task=str, task_args=str):
    """The task to retrain and its arguments: ``task``/``task_args`` when given, else the ones the champion
    of ``model_name`` was trained with."""
    from collections import namedtuple

    from pillars.components.registry.register import task_of_champion
    from pillars.components.registry.tracking import configure_tracking
    from pillars.components.shutdown import skip_final_collection

    skip_final_collection()

    resolved = namedtuple("Resolved", ["task", "task_args"])
    if task:
        return resolved(task, task_args)
    configure_tracking(tracking_uri or None)
    champion_task, champion_args = task_of_champion(model_name)
    return resolved(champion_task, task_args or champion_args)


def prepare_data(
    task: str,
    task_args: str,
    source: str,
    label_column: str,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    missing_policy: str,
    balance: bool,
    engine: str,
    model_name: str,
    feedback: str,
    spark_launcher: str,
    spark_driver_cores: int,
    spark_driver_memory: str,
    spark_executors: int,
    spark_executor_cores: int,
    spark_executor_memory: str,
    train_data: Output[Dataset],
    val_data: Output[Dataset],
    test_data: Output[Dataset],
    metadata: Output[Artifact],
) -> str:
    """Load and split the task's data (plus the trainable rows of the ``feedback`` store of ``model_name``, in
    the train split only), fit its preprocessing; write ``.npz`` splits (engine pandas) or folders of Parquet
    shards (engine spark) and the metadata/profile JSON. ``spark_launcher="operator"`` runs Spark as a
    SparkApplication of the Kubeflow Spark Operator sized by the ``spark_*`` parameters. Returns the data hash."""
    from pillars.components.data.prepare import PrepareParams, run_prepare
    from pillars.components.data.prepare_table import run_prepare_table
    from pillars.components.shutdown import skip_final_collection

    skip_final_collection()

    params = PrepareParams(task=task, task_args=task_args, source=source, label_column=label_column, seed=seed,
                           val_fraction=val_fraction, test_fraction=test_fraction,
                           missing_policy=missing_policy, balance=balance, engine=engine, model_name=model_name,
                           feedback=feedback, spark_launcher=spark_launcher, spark_driver_cores=spark_driver_cores,
                           spark_driver_memory=spark_driver_memory, spark_executors=spark_executors,
                           spark_executor_cores=spark_executor_cores, spark_executor_memory=spark_executor_memory)
    if engine != "pandas":
        return run_prepare_table(params, engine, train_data.path, val_data.path, test_data.path, metadata.path)
    return run_prepare(params, train_data.path, val_data.path, test_data.path, metadata.path)


def train(
    train_data: Input[Dataset],
    val_data: Input[Dataset],
    metadata: Input[Artifact],
    model_name: str,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    weight_decay: float,
    dropout: float,
    seed: int,
    patience: int,
    nproc: int,
    nodes: int,
    launcher: str,
    gpus_per_node: int,
    warm_start: bool,
    kfp_run_id: str,
    tracking_uri: str,
    checkpoint_root: str,
    reason: str,
    model: Output[Model],
) -> str:
    """Train with checkpoints (resumed on retry) inside an MLflow run; ``nproc`` > 1 runs DDP through
    torchrun, ``launcher="trainjob"`` runs ``nodes`` x ``nproc`` on a Kubeflow Trainer TrainJob.
    The epochs show as a tqdm bar in the step's log (``pillars run`` draws it). Returns the MLflow run id."""
    import json

    from pillars.components.shutdown import skip_final_collection
    from pillars.components.training.train import TrainParams, run_training

    skip_final_collection()

    with open(metadata.path) as f:
        name = model_name or json.load(f)["task_name"]
    params = TrainParams(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                         weight_decay=weight_decay, dropout=dropout, seed=seed, patience=patience, nproc=nproc, nodes=nodes)
    return run_training(train_data.path, val_data.path, metadata.path, params, model.path, name,
                        kfp_run_id, tracking_uri, checkpoint_root, progress=True, launcher=launcher,
                        gpus_per_node=gpus_per_node, warm_start_from=name if warm_start else "", reason=reason)


def evaluate(
    model: Input[Model],
    train_data: Input[Dataset],
    val_data: Input[Dataset],
    test_data: Input[Dataset],
    mlflow_run_id: str,
    tracking_uri: str,
    metrics: Output[Metrics],
    classification_metrics: Output[ClassificationMetrics],
    report: Output[HTML],
) -> str:
    """Test metrics, overfitting gap, confusion matrix, ROC and an HTML report. Returns the metrics as JSON."""
    import json

    from pillars.components.evaluation.evaluate import run_evaluation
    from pillars.components.shutdown import skip_final_collection

    skip_final_collection()

    result = run_evaluation(model.path, {"train": train_data.path, "val": val_data.path, "test": test_data.path},
                            mlflow_run_id, report.path, tracking_uri)
    for key, value in result.metrics.items():
        metrics.log_metric(key, value)
    if result.confusion is not None:
        classification_metrics.log_confusion_matrix(result.classes, result.confusion)
    if result.roc is not None:
        classification_metrics.log_roc_curve(result.roc["fpr"], result.roc["tpr"], result.roc["thresholds"])
    return json.dumps(result.metrics)


def validate(
    metrics_json: str,
    metadata: Input[Artifact],
    test_data: Input[Dataset],
    model_name: str,
    thresholds: str,
    margin: float,
    tracking_uri: str,
    decision: Output[Artifact],
    replace_task: bool = False,
) -> bool:
    """The gate: thresholds met and not worse than the champion (by ``margin``).

    Returns approval as the single output (what ``dsl.If`` tests; kfp.local resolves only the
    default output in conditions) and writes the reasons as the ``decision`` JSON artifact.
    """
    import json

    from pillars.components.evaluation.gate import run_gate
    from pillars.components.shutdown import skip_final_collection

    skip_final_collection()

    with open(metadata.path) as f:
        name = model_name or json.load(f)["task_name"]
    result = run_gate(metrics_json, metadata.path, test_data.path, name, thresholds, margin, tracking_uri,
                      replace_task)
    with open(decision.path, "w") as f:
        json.dump(result.to_dict(), f)
    decision.metadata["approved"] = result.approved
    return result.approved


def register(
    model: Input[Model],
    metadata: Input[Artifact],
    test_data: Input[Dataset],
    model_name: str,
    mlflow_run_id: str,
    kfp_run_id: str,
    decision: Input[Artifact],
    tracking_uri: str,
    reason: str,
) -> NamedTuple("Registered", model_name=str, version=str):
    """Log and register the model (alias ``challenger``) with lineage tags; idempotent per MLflow run."""
    import json
    from collections import namedtuple

    from pillars.components.records import GateDecision
    from pillars.components.registry.register import run_register
    from pillars.components.shutdown import skip_final_collection

    skip_final_collection()

    with open(metadata.path) as f:
        name = model_name or json.load(f)["task_name"]
    with open(decision.path) as f:
        gate = GateDecision.from_dict(json.load(f))
    version = run_register(model.path, metadata.path, test_data.path, name, mlflow_run_id, kfp_run_id,
                           gate, tracking_uri, reason)
    return namedtuple("Registered", ["model_name", "version"])(name, version)


def promote(
    model_name: str,
    version: str,
    decision: Input[Artifact],
    metrics_json: str,
    metadata: Input[Artifact],
    test_data: Input[Dataset],
    thresholds: str,
    margin: float,
    tracking_uri: str,
    replace_task: bool = False,
) -> bool:
    """Move alias ``champion`` to the approved version (recorded in the alias history), only while the
    champion is still the one the gate compared against; else gate again against the new champion.
    Returns whether the version became champion."""
    import json

    from pillars.components.evaluation.gate import run_gate
    from pillars.components.records import GateDecision
    from pillars.components.registry.register import promote_gated
    from pillars.components.registry.tracking import configure_tracking
    from pillars.components.shutdown import skip_final_collection

    skip_final_collection()

    with open(decision.path) as f:
        gate = GateDecision.from_dict(json.load(f))
    configure_tracking(tracking_uri or None)

    def regate() -> GateDecision:
        return run_gate(metrics_json, metadata.path, test_data.path, model_name, thresholds, margin, tracking_uri,
                        replace_task)

    return promote_gated(model_name, version, gate, regate, replace_task=replace_task)


def deploy_op(
    model_name: str,
    alias: str,
    namespace: str,
    version: str,
    tracking_uri: str,
    gpu: int = 0,
    canary_percent: int = -1,
    mode: str = "Knative",
    kserve_version: str = "0.15",
    timeout_s: float = 600.0,
) -> str:
    """Deploy ``model_name`` (version ``version``, or the alias when empty) as an InferenceService.

    Args:
        canary_percent: share of traffic for the new revision; -1 sends it all (no canary).
        tracking_uri: the in-cluster MLflow URL the model server downloads from.

    Returns:
        The InferenceService URL.

    Raises:
        DeployError: not ready in time or failed; traffic was rolled back.
    """
    from pillars.components.deploy.inference_service import DeploySpec
    from pillars.components.deploy.rollout import deploy
    from pillars.components.shutdown import skip_final_collection

    skip_final_collection()

    spec = DeploySpec(model=model_name, alias=alias, namespace=namespace, version=version or None,
                      gpu=gpu, canary_percent=None if canary_percent < 0 else canary_percent, mode=mode,
                      kserve_version=kserve_version, tracking_uri=tracking_uri)
    return deploy(spec, timeout_s=timeout_s).url


@dataclasses.dataclass(frozen=True)
class Components:
    """The pipeline's components, all in one image."""

    image: str
    resolve_task: PythonComponent
    prepare_data: PythonComponent
    train: PythonComponent
    evaluate: PythonComponent
    validate: PythonComponent
    register: PythonComponent
    promote: PythonComponent
    deploy_op: PythonComponent


_BODIES = (resolve_task, prepare_data, train, evaluate, validate, register, promote, deploy_op)


@functools.lru_cache(maxsize=8)
def components(image: str) -> Components:
    """Every step as a KFP component whose container runs ``image``.

    Raises:
        ValueError: ``image`` is empty.
    """
    if not image or not image.strip():
        raise ValueError("the components image must be a non-empty image reference")
    make = dsl.component(base_image=image, install_kfp_package=False)
    return Components(image=image, **{body.__name__: make(body) for body in _BODIES})
