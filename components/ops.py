"""The KFP v2 components: thin ``@dsl.component`` wrappers over each step's plain function.

Every component runs in the one prebuilt image (``PILLARS_IMAGE``, default
``ghcr.io/pillars-mlops/pillars:<version>``) with ``install_kfp_package=False``: nothing is installed
at run time, and the same component runs under ``kfp.local.SubprocessRunner`` and on a cluster.
Bodies import inside the function because KFP ships each body as source text.
"""


from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from pillars.components.settings import Settings

IMAGE = Settings().image


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def resolve_task(model_name: str, task: str, tracking_uri: str) -> str:
    """The task to retrain: ``task`` when given, else the one the champion of ``model_name`` was trained on."""
    from pillars.components.register import task_of_champion
    from pillars.components.tracking import configure_tracking

    if task:
        return task
    configure_tracking(tracking_uri or None)
    return task_of_champion(model_name)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def prepare_data(
    task: str,
    source: str,
    label_column: str,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    missing_policy: str,
    balance: bool,
    train_data: Output[Dataset],
    val_data: Output[Dataset],
    test_data: Output[Dataset],
    metadata: Output[Artifact],
) -> str:
    """Load, clean and split the data; write ``.npz`` splits and the metadata/profile JSON. Returns the data hash."""
    from pillars.components.prepare_data import PrepareParams, run_prepare

    params = PrepareParams(task=task, source=source, label_column=label_column, seed=seed,
                           val_fraction=val_fraction, test_fraction=test_fraction,
                           missing_policy=missing_policy, balance=balance)
    return run_prepare(params, train_data.path, val_data.path, test_data.path, metadata.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
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
    model: Output[Model],
) -> str:
    """Train with checkpoints (resumed on retry) inside an MLflow run; ``nproc`` > 1 runs DDP through
    torchrun, ``launcher="trainjob"`` runs ``nodes`` x ``nproc`` on a Kubeflow Trainer TrainJob.
    Returns the MLflow run id."""
    import json

    from pillars.components.train import TrainParams, run_training

    with open(metadata.path) as f:
        name = model_name or json.load(f)["task"]
    params = TrainParams(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                         weight_decay=weight_decay, dropout=dropout, seed=seed, patience=patience, nproc=nproc, nodes=nodes)
    return run_training(train_data.path, val_data.path, metadata.path, params, model.path, name,
                        kfp_run_id, tracking_uri, checkpoint_root, launcher=launcher, gpus_per_node=gpus_per_node,
                        warm_start_from=name if warm_start else "")


@dsl.component(base_image=IMAGE, install_kfp_package=False)
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

    from pillars.components.evaluate import run_evaluation

    result = run_evaluation(model.path, {"train": train_data.path, "val": val_data.path, "test": test_data.path},
                            mlflow_run_id, report.path, tracking_uri)
    for key, value in result.metrics.items():
        metrics.log_metric(key, value)
    if result.confusion is not None:
        classification_metrics.log_confusion_matrix(result.classes, result.confusion)
    if result.roc is not None:
        classification_metrics.log_roc_curve(result.roc["fpr"], result.roc["tpr"], result.roc["thresholds"])
    return json.dumps(result.metrics)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def validate(
    metrics_json: str,
    metadata: Input[Artifact],
    test_data: Input[Dataset],
    model_name: str,
    thresholds: str,
    margin: float,
    tracking_uri: str,
    decision: Output[Artifact],
) -> bool:
    """The gate: thresholds met and not worse than the champion (by ``margin``).

    Returns approval as the single output (what ``dsl.If`` tests; kfp.local resolves only the
    default output in conditions) and writes the reasons as the ``decision`` JSON artifact.
    """
    import json

    from pillars.components.validate import run_gate

    with open(metadata.path) as f:
        name = model_name or json.load(f)["task"]
    result = run_gate(metrics_json, metadata.path, test_data.path, name, thresholds, margin, tracking_uri)
    with open(decision.path, "w") as f:
        json.dump({"approved": result.approved, "reasons": result.reasons,
                   "champion_version": result.champion_version, "champion_score": result.champion_score}, f)
    decision.metadata["approved"] = result.approved
    return result.approved


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def register(
    model: Input[Model],
    metadata: Input[Artifact],
    test_data: Input[Dataset],
    model_name: str,
    mlflow_run_id: str,
    kfp_run_id: str,
    decision: Input[Artifact],
    tracking_uri: str,
) -> NamedTuple("Registered", model_name=str, version=str):
    """Log and register the model (alias ``challenger``) with lineage tags; idempotent per MLflow run."""
    import json
    from collections import namedtuple

    from pillars.components.register import run_register

    with open(metadata.path) as f:
        name = model_name or json.load(f)["task"]
    with open(decision.path) as f:
        gate = json.load(f)
    version = run_register(model.path, metadata.path, test_data.path, name, mlflow_run_id, kfp_run_id,
                           gate["approved"], "; ".join(gate["reasons"]), tracking_uri)
    return namedtuple("Registered", ["model_name", "version"])(name, version)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
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
) -> bool:
    """Move alias ``champion`` to the approved version (recorded in the alias history), only while the
    champion is still the one the gate compared against; else gate again against the new champion.
    Returns whether the version became champion."""
    import json

    from pillars.components.register import promote_gated
    from pillars.components.tracking import configure_tracking
    from pillars.components.validate import run_gate

    with open(decision.path) as f:
        gate = json.load(f)
    configure_tracking(tracking_uri or None)

    def regate() -> tuple:
        again = run_gate(metrics_json, metadata.path, test_data.path, model_name, thresholds, margin, tracking_uri)
        return again.approved, again.champion_version, "; ".join(again.reasons)

    return promote_gated(model_name, version, "; ".join(gate["reasons"]), gate["champion_version"], regate)
