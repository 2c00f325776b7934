"""The training pipeline, the spine of the loop: prepare -> train -> evaluate -> validate -> register -> promote.

:func:`training_pipeline` builds the pipeline for given compile-time options (the components image,
GPUs); the pipeline's own parameters are what users set per run (``--param k=v`` or the KFP UI).
"""


from typing import Any

from kfp import dsl, kubernetes

from pillars.components.errors import ConfigError
from pillars.components.training.fit import TrainParams
from pillars.components.ops import Components, components
from pillars.components.optimize.variants import step_defaults
from pillars.components.optimize.op import optimize_component
from pillars.components.parameters import TRAINING, check_choices, parameters, pipeline_function, step_arguments
from pillars.components.data.feedback import feedback_store
from pillars.components.data.prepare import PrepareParams
from pillars.components.data.spark_sizes import SparkSizes
from pillars.components.registry.references import check_model_name, default_model_name
from pillars.components.settings import Settings
from pillars.components.task import DataParams, task_reference
from pillars.components.evaluation.gate import check_margin, check_task_owner, parse_thresholds
from pillars.pipelines.parameters import ClusterOptions

__all__ = ["ClusterOptions", "check_arguments", "check_model_owner", "retraining_pipeline", "training_pipeline"]

PIPELINE_NAME = "pillars-training"


CHECKPOINT_MOUNT = "/checkpoints"
RETRAINING_NAME = "pillars-retraining"


PARAMETER_TITLE = "Pipeline parameters (KFP shows these as the parameters' descriptions, the console as field help)."


def _steps(ops: Components, options: ClusterOptions, settings: Settings, table: Any, args: dict[str, Any],
           task: Any = None, task_args: Any = None) -> None:
    """prepare -> train -> evaluate -> validate -> register -> (if approved) promote, wired in a pipeline body.

    Each step takes the run parameters that :mod:`pillars.components.parameters` lists for it (``args``: the
    pipeline's parameters, ``table`` their definitions); ``task``/``task_args``, when given, replace the
    parameters (retraining: the resolved task). ``settings``: the compiling process's (the release a deployed
    model joins).
    """
    uri = args["tracking_uri"]

    def given(step: str) -> dict[str, Any]:
        return step_arguments(step, table, args)

    resolved = {} if task is None else {"task": task, "task_args": task_args}
    data = ops.prepare_data(**{**given("prepare_data"), **resolved})
    data.set_caching_options(options.cache_data).set_display_name("prepare data")
    _resources(data, cpu="500m", memory="1Gi")
    for env, value in spark_env(settings, ops.image).items():
        data.set_env_variable(env, value)

    trained = ops.train(train_data=data.outputs["train_data"], val_data=data.outputs["val_data"],
                        metadata=data.outputs["metadata"], kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                        **{"warm_start": False, **given("train")})
    trained.set_caching_options(False).set_retry(num_retries=2, backoff_duration="10s").set_display_name("train")
    _resources(trained, cpu="1", memory="2Gi")
    if options.gpus:
        trained.set_accelerator_type(options.accelerator).set_accelerator_limit(options.gpus)
    if options.checkpoint_pvc:
        kubernetes.mount_pvc(trained, pvc_name=options.checkpoint_pvc, mount_path=CHECKPOINT_MOUNT)
        trained.set_env_variable("PILLARS_CHECKPOINT_PVC", options.checkpoint_pvc)

    scored = ops.evaluate(model=trained.outputs["model"], train_data=data.outputs["train_data"],
                          val_data=data.outputs["val_data"], test_data=data.outputs["test_data"],
                          mlflow_run_id=trained.outputs["Output"], **given("evaluate"))
    scored.set_caching_options(False).set_display_name("evaluate")
    _resources(scored, cpu="500m", memory="1Gi")

    gate = ops.validate(metrics_json=scored.outputs["Output"], metadata=data.outputs["metadata"],
                        test_data=data.outputs["test_data"], **given("validate"))
    # Not set_retry: the gate retries a registry outage itself; a parameter error or a task mismatch
    # must fail the run at once, not three times.
    gate.set_caching_options(False).set_display_name("validate (gate)")
    _resources(gate, cpu="500m", memory="1Gi")

    registered = ops.register(model=trained.outputs["model"], metadata=data.outputs["metadata"],
                              test_data=data.outputs["test_data"], mlflow_run_id=trained.outputs["Output"],
                              kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, decision=gate.outputs["decision"],
                              **given("register"))
    registered.set_caching_options(False).set_display_name("register")
    _resources(registered, cpu="250m", memory="512Mi")

    with dsl.If(gate.outputs["Output"] == True, name="approved"):  # noqa: E712 (KFP condition syntax)
        promoted = ops.promote(model_name=registered.outputs["model_name"], version=registered.outputs["version"],
                               decision=gate.outputs["decision"], metrics_json=scored.outputs["Output"],
                               metadata=data.outputs["metadata"], test_data=data.outputs["test_data"],
                               **given("promote"))
        promoted.set_caching_options(False).set_display_name("promote to champion")
        _resources(promoted, cpu="250m", memory="256Mi")
        if options.deploy_namespace:
            _deploy_steps(ops, options, settings, registered, uri).after(promoted)
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


def spark_env(settings: Settings, image: str) -> dict[str, str]:
    """What the data step's ``spark_launcher=operator`` needs from the compiling process's settings (the chart
    sets them on its pods when ``sparkOperator.enabled``): the SparkApplication's image, service account, S3
    Secret and endpoint, and the work location. Nothing when no work location is set (no operator)."""
    if not settings.spark_work_uri:
        return {}
    values = {"PILLARS_SPARK_IMAGE": settings.spark_image or image,
              "PILLARS_SPARK_SERVICE_ACCOUNT": settings.spark_service_account,
              "PILLARS_SPARK_WORK_URI": settings.spark_work_uri, "PILLARS_SPARK_S3_SECRET": settings.spark_s3_secret,
              "PILLARS_SPARK_S3_ENDPOINT": settings.spark_s3_endpoint}
    return {k: v for k, v in values.items() if v}


def _secret_env(options: ClusterOptions, step: Any) -> None:
    """The S3 and MLflow credentials a step gets from Secrets (when named)."""
    if options.s3_secret:
        kubernetes.use_secret_as_env(step, secret_name=options.s3_secret, secret_key_to_env={
            "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"})
    if options.mlflow_secret:
        kubernetes.use_secret_as_env(step, secret_name=options.mlflow_secret, secret_key_to_env={
            "username": "MLFLOW_TRACKING_USERNAME", "password": "MLFLOW_TRACKING_PASSWORD"})


def _deploy_steps(ops: Components, options: ClusterOptions, settings: Settings, registered: Any, uri: Any) -> Any:
    """Roll the new champion out: a canary share first (when asked), then all traffic. Returns the first step."""

    def step(canary: int, name: str) -> Any:
        task = ops.deploy_op(model_name=registered.outputs["model_name"], alias="champion",
                         namespace=options.deploy_namespace, version=registered.outputs["version"],
                         tracking_uri=uri, gpu=options.serving_gpus, canary_percent=canary, mode=options.kserve_mode)
        task.set_caching_options(False).set_display_name(name)
        _resources(task, cpu="100m", memory="256Mi")
        # The release the model joins (labels its NetworkPolicy and PodMonitor select, ServiceAccount,
        # serving image), as the compiling process knows it: the chart sets these on the trigger.
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
    """Build the training pipeline whose steps run in ``image`` (default: the ``PILLARS_IMAGE`` setting,
    read now). Keyword arguments: the fields of :class:`ClusterOptions`. Its parameters are
    ``parameters("training")`` of :mod:`pillars.components.parameters`."""
    options = ClusterOptions(**cluster_options)
    settings = Settings()
    ops = components(image or settings.image)
    table = parameters("training")

    def training(args: dict[str, Any]) -> None:
        _steps(ops, options, settings, table, args)

    return dsl.pipeline(name=PIPELINE_NAME,
                        description="Prepare data, train a PyTorch model, evaluate, gate against the champion, "
                                    "register in MLflow and promote when better.")(
        pipeline_function("training", training, PARAMETER_TITLE, **_build_defaults(options)))


def retraining_pipeline(image: str | None = None, **cluster_options: Any) -> Any:
    """Build the retraining pipeline: the training steps for an existing model, on the newest data,
    optionally warm-started from its champion. The data step is never cached: the source is a path
    or prefix whose newest file changes. ``image`` and keyword arguments: as :func:`training_pipeline`;
    its parameters are ``parameters("retraining")``."""
    options = ClusterOptions(**{**cluster_options, "cache_data": False})
    settings = Settings()
    ops = components(image or settings.image)
    table = parameters("retraining")

    def retraining(args: dict[str, Any]) -> None:
        resolved = ops.resolve_task(**step_arguments("resolve_task", table, args))
        resolved.set_caching_options(False).set_display_name("resolve task")
        _resources(resolved, cpu="250m", memory="256Mi")
        _secret_env(options, resolved)
        _steps(ops, options, settings, table, args, resolved.outputs["task"], resolved.outputs["task_args"])

    return dsl.pipeline(name=RETRAINING_NAME,
                        description="Retrain a registered model on the newest data; promote only if better than "
                                    "its champion.")(
        pipeline_function("retraining", retraining, PARAMETER_TITLE, **_build_defaults(options)))


def _build_defaults(options: ClusterOptions) -> dict[str, Any]:
    """Parameter defaults the build options decide: checkpoints go to the mounted PVC when there is one."""
    return {"checkpoint_root": CHECKPOINT_MOUNT} if options.checkpoint_pvc else {}


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
    check_choices(TRAINING, merged)  # launcher, missing_policy
    if int(merged.get("nodes", 1)) > 1 and merged.get("launcher", "local") != "trainjob":
        raise ConfigError("nodes > 1 needs launcher=trainjob (a Kubeflow Trainer TrainJob on a cluster)")
    SparkSizes.from_parameters(merged)
    if merged.get("spark_launcher") == "operator" and merged.get("engine") != "spark":
        raise ConfigError(f"spark_launcher=operator needs engine=spark, got engine={merged.get('engine')!r}")
    if "val_fraction" in merged or "test_fraction" in merged:  # also when the task is resolved at run time
        DataParams(**pick(DataParams))
    task = None
    if merged.get("task"):
        prepare = PrepareParams(**pick(PrepareParams))
        if not merged.get("model_name"):
            check_model_name(default_model_name(prepare.task))
        if load:
            task = prepare.load()  # an unknown task, a missing package or bad task_args: one line naming it
    if merged.get("feedback"):
        feedback_store(str(merged["feedback"]), str(merged.get("model_name") or "model"))  # a bad location
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
