"""The training pipeline, the spine of the loop: prepare -> train -> evaluate -> validate -> register -> promote.

:func:`training_pipeline` builds the pipeline for given compile-time options (GPUs); the pipeline's
own parameters are what users set per run (``--param k=v`` or the KFP UI).
"""


from typing import Any

from kfp import dsl, kubernetes

from components import ops

PIPELINE_NAME = "pillars-training"


CHECKPOINT_MOUNT = "/checkpoints"


def training_pipeline(gpus: int = 0, accelerator: str = "nvidia.com/gpu", cache_data: bool = True,
                      checkpoint_pvc: str = "", s3_secret: str = "") -> Any:
    """Build the training pipeline.

    Args:
        gpus: GPUs the train step asks for (0: CPU only). With GPUs, the compiled YAML sets the
            accelerator type and limit so the cluster schedules the step on a GPU node.
        accelerator: the accelerator resource name.
        cache_data: let KFP cache the data step (turn off when a source path's contents change).
        checkpoint_pvc: a PVC mounted at ``/checkpoints`` in the train step, so a retried pod resumes
            from the last epoch (set ``checkpoint_root=/checkpoints``; done by default when given).
        s3_secret: a Secret whose ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` every step gets (S3 data
            and artifacts through boto3).
    """
    if gpus < 0:
        raise ValueError(f"gpus must be >= 0, got {gpus}")

    @dsl.pipeline(name=PIPELINE_NAME,
                  description="Prepare data, train a PyTorch model, evaluate, gate against the champion, "
                              "register in MLflow and promote when better.")
    def training(
        task: str = "breast_cancer",
        source: str = "",
        label_column: str = "",
        model_name: str = "",
        epochs: int = 30,
        batch_size: int = 64,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-4,
        dropout: float = 0.1,
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
        checkpoint_root: str = CHECKPOINT_MOUNT if checkpoint_pvc else "",
    ) -> None:
        data = ops.prepare_data(task=task, source=source, label_column=label_column, seed=seed,
                                val_fraction=val_fraction, test_fraction=test_fraction,
                                missing_policy=missing_policy, balance=balance)
        data.set_caching_options(cache_data).set_display_name("prepare data")
        _resources(data, cpu="500m", memory="1Gi")

        trained = ops.train(train_data=data.outputs["train_data"], val_data=data.outputs["val_data"],
                            metadata=data.outputs["metadata"], model_name=model_name, epochs=epochs,
                            batch_size=batch_size, learning_rate=learning_rate, weight_decay=weight_decay,
                            dropout=dropout, seed=seed, patience=patience, nproc=nproc,
                            nodes=nodes, launcher=launcher, gpus_per_node=gpus_per_node,
                            kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, tracking_uri=tracking_uri,
                            checkpoint_root=checkpoint_root)
        trained.set_caching_options(False).set_retry(num_retries=2, backoff_duration="10s").set_display_name("train")
        _resources(trained, cpu="1", memory="2Gi")
        if gpus:
            trained.set_accelerator_type(accelerator).set_accelerator_limit(gpus)
        if checkpoint_pvc:
            kubernetes.mount_pvc(trained, pvc_name=checkpoint_pvc, mount_path=CHECKPOINT_MOUNT)
            trained.set_env_variable("PILLARS_CHECKPOINT_PVC", checkpoint_pvc)  # TrainJob pods mount it too

        scored = ops.evaluate(model=trained.outputs["model"], train_data=data.outputs["train_data"],
                              val_data=data.outputs["val_data"], test_data=data.outputs["test_data"],
                              mlflow_run_id=trained.outputs["Output"], tracking_uri=tracking_uri)
        scored.set_caching_options(False).set_display_name("evaluate")
        _resources(scored, cpu="500m", memory="1Gi")

        gate = ops.validate(metrics_json=scored.outputs["Output"], metadata=data.outputs["metadata"],
                            test_data=data.outputs["test_data"], model_name=model_name, thresholds=thresholds,
                            margin=margin, tracking_uri=tracking_uri)
        gate.set_caching_options(False).set_display_name("validate (gate)")
        _resources(gate, cpu="500m", memory="1Gi")

        registered = ops.register(model=trained.outputs["model"], metadata=data.outputs["metadata"],
                                  test_data=data.outputs["test_data"], model_name=model_name,
                                  mlflow_run_id=trained.outputs["Output"], kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                                  decision=gate.outputs["decision"],
                                  tracking_uri=tracking_uri)
        registered.set_caching_options(False).set_display_name("register")
        _resources(registered, cpu="250m", memory="512Mi")

        with dsl.If(gate.outputs["Output"] == True, name="approved"):  # noqa: E712 (KFP condition syntax)
            promoted = ops.promote(model_name=registered.outputs["model_name"],
                                   version=registered.outputs["version"], decision=gate.outputs["decision"],
                                   tracking_uri=tracking_uri)
            promoted.set_caching_options(False).set_display_name("promote to champion")
            _resources(promoted, cpu="250m", memory="256Mi")

        if s3_secret:
            for task in (data, trained, scored, gate, registered, promoted):
                kubernetes.use_secret_as_env(task, secret_name=s3_secret, secret_key_to_env={
                    "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"})

    return training


def check_arguments(arguments: dict[str, Any]) -> None:
    """Fail fast, before any step runs, on arguments a step would reject (task, hyperparameters, thresholds).

    Raises:
        ConfigError: naming the bad argument.
    """
    from components.prepare_data import PrepareParams
    from components.tasks import get_task
    from components.train import TrainParams
    from components.validate import parse_thresholds

    def pick(cls: Any) -> dict[str, Any]:
        return {k: v for k, v in arguments.items() if k in cls.__dataclass_fields__}

    prepare = PrepareParams(**pick(PrepareParams))
    task = get_task(prepare.task)
    TrainParams(**pick(TrainParams))
    if arguments.get("launcher", "local") not in ("local", "trainjob"):
        from components.errors import ConfigError

        raise ConfigError(f"launcher must be 'local' or 'trainjob', got {arguments['launcher']!r}")
    if int(arguments.get("nodes", 1)) > 1 and arguments.get("launcher", "local") != "trainjob":
        from components.errors import ConfigError

        raise ConfigError("nodes > 1 needs launcher=trainjob (a Kubeflow Trainer TrainJob on a cluster)")
    parse_thresholds(str(arguments.get("thresholds", "")), task)
    if task.builtin is None and not prepare.source:
        from components.errors import ConfigError

        raise ConfigError(f"task {task.name!r} needs your data: pass --param source=PATH and label_column=NAME")


def _resources(task: Any, cpu: str, memory: str) -> None:
    task.set_cpu_request(cpu).set_memory_request(memory).set_memory_limit(memory)
