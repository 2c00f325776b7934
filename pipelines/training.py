"""The training pipeline, the spine of the loop: prepare -> train -> evaluate -> validate -> register -> promote.

:func:`training_pipeline` builds the pipeline for given compile-time options (the components image,
GPUs); the pipeline's own parameters are what users set per run (``--param k=v`` or the KFP UI).
"""


import dataclasses
from typing import Any

from kfp import dsl, kubernetes

from pillars.components.errors import ConfigError
from pillars.components.training.fit import TrainParams
from pillars.components.ops import Components, components
from pillars.components.optimize.variants import step_defaults
from pillars.components.optimize.op import optimize_component
from pillars.components.data.prepare import PrepareParams
from pillars.components.registry.references import check_model_name, default_model_name
from pillars.components.settings import Settings
from pillars.components.task import DataParams, task_reference
from pillars.components.evaluation.gate import check_margin, check_task_owner, parse_thresholds

PIPELINE_NAME = "pillars-training"


CHECKPOINT_MOUNT = "/checkpoints"
RETRAINING_NAME = "pillars-retraining"


PARAMETER_HELP = """Pipeline parameters (KFP shows these as the parameters' descriptions, the console as field help).

Args:
    task: An installed task's name (pillars tasks lists them: breast_cancer, digits, diabetes, tabular_classification, ...) or your own as package.module:attribute.
    task_args: The task's constructor arguments as a JSON object, e.g. {"hidden_sizes": [64]}; empty: none.
    source: Your data: a CSV or Parquet file, local or s3://; empty for a built-in task.
    label_column: The label column of your data (tasks that read your table).
    model_name: Registered model name; empty: the task's name (the attribute's name for package.module:attribute).
    warm_start: Start from the champion's weights when its inputs match.
    epochs: Maximum training epochs (early stopping may end sooner).
    batch_size: Rows per batch (per process with nproc > 1).
    learning_rate: AdamW learning rate.
    weight_decay: AdamW weight decay.
    dropout: Probability of every dropout layer of the model, in [0, 1); -1 keeps the task's own.
    seed: Random seed of the split and the initial weights.
    patience: Epochs without validation improvement before stopping.
    nproc: Data-parallel processes per node (DDP).
    nodes: Nodes of a Kubeflow Trainer TrainJob (launcher=trainjob).
    launcher: local (this pod or machine) or trainjob (Kubeflow Trainer).
    gpus_per_node: GPUs per TrainJob node.
    val_fraction: Share of rows for validation, in (0, 0.5).
    test_fraction: Share of rows for the test split, in (0, 0.5).
    missing_policy: How missing values are filled: median, mean, zero or drop.
    balance: Oversample minority classes in the training split.
    thresholds: JSON minimums for the gate, e.g. {"accuracy": 0.95}; empty: the task's defaults ({} is refused).
    margin: How much worse than the champion the candidate may be and still be approved, on the primary metric's scale: >= 0, at most 1 for a higher-is-better metric.
    tracking_uri: MLflow tracking URI; empty: MLFLOW_TRACKING_URI or the local store.
    checkpoint_root: Where training checkpoints go so a retry resumes.
    optimize: After a promotion, run the optimize step on the new champion (ONNX, int8, pruned and
        distilled variants within the accuracy guard; alias edge); off by default.
    replace_task: Let this run's model replace a champion of another task or input signature under model_name (recorded in the alias history); off by default: such a run is refused before training.
"""


def _documented(func: Any) -> Any:
    """Give a pipeline function :data:`PARAMETER_HELP` as its docstring (KFP reads parameter descriptions there)."""
    func.__doc__ = PARAMETER_HELP
    return func


@dataclasses.dataclass(frozen=True)
class ClusterOptions:
    """Compile-time choices of how the steps run on a cluster (they do nothing under kfp.local).

    Attributes:
        gpus: GPUs the train step asks for (0: CPU only); the compiled YAML then sets the accelerator
            type and limit so the cluster schedules the step on a GPU node.
        accelerator: the accelerator resource name.
        cache_data: let KFP cache the data step (off for retraining, whose source changes behind a path).
        checkpoint_pvc: a PVC mounted at ``/checkpoints`` in the train step, so a retried pod resumes
            from the last epoch (``checkpoint_root`` then defaults to it); TrainJob pods mount it too.
        s3_secret: a Secret whose ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` every step gets.
        mlflow_secret: a Secret whose ``username``/``password`` every step gets as
            ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` (the chart's ``<fullname>-mlflow-auth``;
            default ``PILLARS_MLFLOW_SECRET_NAME``, which the chart sets on the trigger).
        deploy_namespace: when set, an approved model is deployed there as a KServe InferenceService
            after promotion (run the pipeline as the chart's ``pillars-pipeline-runner`` service account).
        canary_percent: with ``deploy_namespace``, first send this share of traffic to the new model,
            then (once it is Ready) all of it; 0 skips the canary step.
        kserve_mode: ``Knative`` or ``Standard`` deployment mode of the InferenceService.
        serving_gpus: GPUs per model-server replica.
    """

    gpus: int = 0
    accelerator: str = "nvidia.com/gpu"
    cache_data: bool = True
    checkpoint_pvc: str = ""
    s3_secret: str = ""
    mlflow_secret: str = dataclasses.field(default_factory=lambda: Settings().mlflow_secret_name)
    deploy_namespace: str = ""
    canary_percent: int = 0
    kserve_mode: str = "Knative"
    serving_gpus: int = 0

    def __post_init__(self) -> None:
        if self.gpus < 0 or self.serving_gpus < 0:
            raise ValueError(f"gpus must be >= 0, got {min(self.gpus, self.serving_gpus)}")
        if not 0 <= self.canary_percent < 100:
            raise ValueError(f"canary percent must be in [0, 100), got {self.canary_percent}")


def _steps(ops: Components, options: ClusterOptions, task: Any, task_args: Any, args: dict[str, Any],
           warm_start: Any = False) -> None:
    """prepare -> train -> evaluate -> validate -> register -> (if approved) promote, wired in a pipeline body."""
    uri = args["tracking_uri"]
    data = ops.prepare_data(task=task, task_args=task_args, source=args["source"],
                            label_column=args["label_column"], seed=args["seed"],
                            val_fraction=args["val_fraction"], test_fraction=args["test_fraction"],
                            missing_policy=args["missing_policy"], balance=args["balance"])
    data.set_caching_options(options.cache_data).set_display_name("prepare data")
    _resources(data, cpu="500m", memory="1Gi")

    trained = ops.train(train_data=data.outputs["train_data"], val_data=data.outputs["val_data"],
                        metadata=data.outputs["metadata"], model_name=args["model_name"], epochs=args["epochs"],
                        batch_size=args["batch_size"], learning_rate=args["learning_rate"],
                        weight_decay=args["weight_decay"], dropout=args["dropout"], seed=args["seed"],
                        patience=args["patience"], nproc=args["nproc"], nodes=args["nodes"],
                        launcher=args["launcher"], gpus_per_node=args["gpus_per_node"], warm_start=warm_start,
                        kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, tracking_uri=uri,
                        checkpoint_root=args["checkpoint_root"])
    trained.set_caching_options(False).set_retry(num_retries=2, backoff_duration="10s").set_display_name("train")
    _resources(trained, cpu="1", memory="2Gi")
    if options.gpus:
        trained.set_accelerator_type(options.accelerator).set_accelerator_limit(options.gpus)
    if options.checkpoint_pvc:
        kubernetes.mount_pvc(trained, pvc_name=options.checkpoint_pvc, mount_path=CHECKPOINT_MOUNT)
        trained.set_env_variable("PILLARS_CHECKPOINT_PVC", options.checkpoint_pvc)

    scored = ops.evaluate(model=trained.outputs["model"], train_data=data.outputs["train_data"],
                          val_data=data.outputs["val_data"], test_data=data.outputs["test_data"],
                          mlflow_run_id=trained.outputs["Output"], tracking_uri=uri)
    scored.set_caching_options(False).set_display_name("evaluate")
    _resources(scored, cpu="500m", memory="1Gi")

    gate = ops.validate(metrics_json=scored.outputs["Output"], metadata=data.outputs["metadata"],
                        test_data=data.outputs["test_data"], model_name=args["model_name"],
                        thresholds=args["thresholds"], margin=args["margin"], tracking_uri=uri,
                        replace_task=args["replace_task"])
    # Not set_retry: the gate retries a registry outage itself; a parameter error or a task mismatch
    # must fail the run at once, not three times.
    gate.set_caching_options(False).set_display_name("validate (gate)")
    _resources(gate, cpu="500m", memory="1Gi")

    registered = ops.register(model=trained.outputs["model"], metadata=data.outputs["metadata"],
                              test_data=data.outputs["test_data"], model_name=args["model_name"],
                              mlflow_run_id=trained.outputs["Output"], kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                              decision=gate.outputs["decision"], tracking_uri=uri)
    registered.set_caching_options(False).set_display_name("register")
    _resources(registered, cpu="250m", memory="512Mi")

    with dsl.If(gate.outputs["Output"] == True, name="approved"):  # noqa: E712 (KFP condition syntax)
        promoted = ops.promote(model_name=registered.outputs["model_name"], version=registered.outputs["version"],
                               decision=gate.outputs["decision"], metrics_json=scored.outputs["Output"],
                               metadata=data.outputs["metadata"], test_data=data.outputs["test_data"],
                               thresholds=args["thresholds"], margin=args["margin"], tracking_uri=uri,
                               replace_task=args["replace_task"])
        promoted.set_caching_options(False).set_display_name("promote to champion")
        _resources(promoted, cpu="250m", memory="256Mi")
        if options.deploy_namespace:
            _deploy_steps(ops, options, registered, uri).after(promoted)
        with dsl.If(args["optimize"] == True, name="optimize"):  # noqa: E712 (KFP condition syntax)
            variants = optimize_component(ops.image)(
                model=registered.outputs["model_name"], model_version=registered.outputs["version"],
                **step_defaults(), tracking_uri=uri)
            variants.after(promoted)
            variants.set_caching_options(False).set_display_name("optimize (variants, edge)")
            _resources(variants, cpu="1", memory="2Gi")
            _secret_env(options, variants)

    for step in (data, trained, scored, gate, registered, promoted):
        _secret_env(options, step)


def _secret_env(options: ClusterOptions, step: Any) -> None:
    """The S3 and MLflow credentials a step gets from Secrets (when named)."""
    if options.s3_secret:
        kubernetes.use_secret_as_env(step, secret_name=options.s3_secret, secret_key_to_env={
            "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"})
    if options.mlflow_secret:
        kubernetes.use_secret_as_env(step, secret_name=options.mlflow_secret, secret_key_to_env={
            "username": "MLFLOW_TRACKING_USERNAME", "password": "MLFLOW_TRACKING_PASSWORD"})


def _deploy_steps(ops: Components, options: ClusterOptions, registered: Any, uri: Any) -> Any:
    """Roll the new champion out: a canary share first (when asked), then all traffic. Returns the first step."""

    def step(canary: int, name: str) -> Any:
        task = ops.deploy_op(model_name=registered.outputs["model_name"], alias="champion",
                         namespace=options.deploy_namespace, version=registered.outputs["version"],
                         tracking_uri=uri, gpu=options.serving_gpus, canary_percent=canary, mode=options.kserve_mode)
        task.set_caching_options(False).set_display_name(name)
        _resources(task, cpu="100m", memory="256Mi")
        # The release the model joins (labels its NetworkPolicy and PodMonitor select, ServiceAccount,
        # serving image), as the compiling process knows it: the chart sets these on the trigger.
        settings = Settings()
        for env, value in (("PILLARS_RELEASE", settings.release), ("PILLARS_APP_NAME", settings.app_name),
                           ("PILLARS_MODELS_SERVICE_ACCOUNT", settings.models_service_account),
                           ("PILLARS_IMAGE", ops.image)):
            task.set_env_variable(env, value)
        return task

    if not options.canary_percent:
        return step(-1, "deploy: all traffic")
    canary = step(options.canary_percent, f"deploy: canary {options.canary_percent}%")
    step(-1, "deploy: all traffic").after(canary)
    return canary


def training_pipeline(image: str | None = None, **cluster_options: Any) -> Any:
    """Build the training pipeline whose steps run in ``image`` (default: the ``PILLARS_IMAGE``
    setting, read now). Keyword arguments: the fields of :class:`ClusterOptions`."""
    options = ClusterOptions(**cluster_options)
    ops = components(image or Settings().image)

    @dsl.pipeline(name=PIPELINE_NAME,
                  description="Prepare data, train a PyTorch model, evaluate, gate against the champion, "
                              "register in MLflow and promote when better.")
    @_documented
    def training(
        task: str = "breast_cancer",
        task_args: str = "",
        source: str = "",
        label_column: str = "",
        model_name: str = "",
        epochs: int = 30,
        batch_size: int = 64,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-4,
        dropout: float = -1.0,
        seed: int = 0,
        patience: int = 5,
        nproc: int = 1,
        nodes: int = 1,
        launcher: str = "local",
        gpus_per_node: int = 0,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        missing_policy: str = "median",
        balance: bool = False,
        thresholds: str = "",
        margin: float = 0.0,
        tracking_uri: str = "",
        checkpoint_root: str = CHECKPOINT_MOUNT if options.checkpoint_pvc else "",
        optimize: bool = False,
        replace_task: bool = False,
    ) -> None:
        _steps(ops, options, task, task_args, locals())

    return training


def retraining_pipeline(image: str | None = None, **cluster_options: Any) -> Any:
    """Build the retraining pipeline: the training steps for an existing model, on the newest data,
    optionally warm-started from its champion. The data step is never cached: the source is a path
    or prefix whose newest file changes. ``image`` and keyword arguments: as :func:`training_pipeline`."""
    options = ClusterOptions(**{**cluster_options, "cache_data": False})
    ops = components(image or Settings().image)

    @dsl.pipeline(name=RETRAINING_NAME,
                  description="Retrain a registered model on the newest data; promote only if better than its champion.")
    @_documented
    def retraining(
        model_name: str,
        task: str = "",
        task_args: str = "",
        source: str = "",
        label_column: str = "",
        warm_start: bool = True,
        epochs: int = 30,
        batch_size: int = 64,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-4,
        dropout: float = -1.0,
        seed: int = 0,
        patience: int = 5,
        nproc: int = 1,
        nodes: int = 1,
        launcher: str = "local",
        gpus_per_node: int = 0,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        missing_policy: str = "median",
        balance: bool = False,
        thresholds: str = "",
        margin: float = 0.0,
        tracking_uri: str = "",
        checkpoint_root: str = CHECKPOINT_MOUNT if options.checkpoint_pvc else "",
        optimize: bool = False,
        replace_task: bool = False,
    ) -> None:
        args = dict(locals())
        resolved = ops.resolve_task(model_name=model_name, task=task, task_args=task_args, tracking_uri=tracking_uri)
        resolved.set_caching_options(False).set_display_name("resolve task")
        _resources(resolved, cpu="250m", memory="256Mi")
        _secret_env(options, resolved)
        _steps(ops, options, resolved.outputs["task"], resolved.outputs["task_args"], args, warm_start=warm_start)

    return retraining


def check_arguments(pipeline: Any, arguments: dict[str, Any], load: bool = True) -> None:
    """Fail fast, before any step runs, on arguments a step would reject (task, hyperparameters, thresholds).

    Arguments not given take the pipeline's defaults; an empty ``task`` (retraining) is resolved at run time.
    ``load=False`` (a run for a cluster, whose image holds the task's package) checks the task's arguments
    and thresholds as JSON without importing the task here.

    Raises:
        ConfigError: naming the bad argument.
    """
    inputs = pipeline.component_spec.inputs or {}
    merged = {name: spec.default for name, spec in inputs.items() if spec.default is not None}
    merged.update(arguments)
    missing = sorted(name for name, spec in inputs.items() if spec.default is None and name not in merged)
    if missing:
        raise ConfigError(f"missing required parameter(s): {', '.join(missing)} (pass --param NAME=VALUE)")

    def pick(cls: Any) -> dict[str, Any]:
        return {k: v for k, v in merged.items() if k in cls.__dataclass_fields__}

    TrainParams(**pick(TrainParams))
    if merged.get("model_name"):
        check_model_name(str(merged["model_name"]))
    if merged.get("launcher", "local") not in ("local", "trainjob"):
        raise ConfigError(f"launcher must be 'local' or 'trainjob', got {merged['launcher']!r}")
    if int(merged.get("nodes", 1)) > 1 and merged.get("launcher", "local") != "trainjob":
        raise ConfigError("nodes > 1 needs launcher=trainjob (a Kubeflow Trainer TrainJob on a cluster)")
    if "val_fraction" in merged or "test_fraction" in merged:  # also when the task is resolved at run time
        DataParams(**pick(DataParams))
    task = None
    if merged.get("task"):
        prepare = PrepareParams(**pick(PrepareParams))
        if not merged.get("model_name"):
            check_model_name(default_model_name(prepare.task))
        if load:
            task = prepare.load()  # an unknown task, a missing package or bad task_args: one line naming it
    if "margin" in merged:
        check_margin(merged["margin"], task)
    if str(merged.get("thresholds", "")).strip() or task is not None:
        parse_thresholds(str(merged.get("thresholds", "")), task)


def check_model_owner(pipeline: Any, arguments: dict[str, Any]) -> None:
    """Refuse, before any step runs, a run whose task is not the task of its model name's champion
    (a registered name belongs to one task), unless ``replace_task`` is set. The tracking URI must be
    configured. A retraining run that leaves ``task`` empty takes the champion's: nothing to check.

    Raises:
        TaskMismatch: one line naming both tasks.
    """
    inputs = pipeline.component_spec.inputs or {}
    if "task" not in inputs or "replace_task" not in inputs:
        return
    merged = {name: spec.default for name, spec in inputs.items() if spec.default is not None}
    merged.update(arguments)
    if not merged.get("task"):
        return
    name = str(merged.get("model_name") or default_model_name(str(merged["task"])))
    reference = task_reference(str(merged["task"]))  # as the registry records it: module:attribute
    check_task_owner(name, reference, None, merged.get("replace_task") is True)


def _resources(task: Any, cpu: str, memory: str) -> None:
    task.set_cpu_request(cpu).set_memory_request(memory).set_memory_limit(memory)
