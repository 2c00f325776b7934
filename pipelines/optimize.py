"""The optimize pipeline: a registered version (default the champion) -> ONNX, int8, pruned and distilled
variants judged on its test split -> the passing ones registered, alias ``edge`` on the fastest.

The champion never moves here. Runs with kfp.local (``pillars run optimize --param
model=models:/NAME@champion``) and compiles for a cluster like the others (``pillars compile optimize``).
"""

from typing import Any

from kfp import dsl, kubernetes

from pillars.components.optimize.op import optimize_component
from pillars.components.parameters import parameters, pipeline_function, step_arguments
from pillars.components.settings import Settings

PIPELINE_NAME = "pillars-optimize"


def optimize_pipeline(image: str | None = None, mlflow_secret: str | None = None, **_cluster_options: Any) -> Any:
    """Build the optimize pipeline whose step runs in ``image`` (default: the ``PILLARS_IMAGE`` setting).
    Its parameters are ``parameters("optimize")`` of :mod:`pillars.components.parameters`.

    Args:
        mlflow_secret: a Secret with the MLflow ``username``/``password`` the step gets (default: the
            ``PILLARS_MLFLOW_SECRET_NAME`` setting). Other cluster options of the training pipeline
            (GPUs, PVCs, deploy) do not apply and are ignored.
    """
    settings = Settings()
    component = optimize_component(image or settings.image)
    secret = settings.mlflow_secret_name if mlflow_secret is None else mlflow_secret
    table = parameters("optimize")

    def optimize(args: dict[str, Any]) -> None:
        step = component(**step_arguments("optimize", table, args))
        # No retry: a failure after registering is not a clean slate (the step cleans up what it can).
        step.set_caching_options(False).set_display_name("optimize")
        step.set_cpu_request("2").set_memory_request("4Gi").set_memory_limit("4Gi")
        if secret:
            kubernetes.use_secret_as_env(step, secret_name=secret, secret_key_to_env={
                "username": "MLFLOW_TRACKING_USERNAME", "password": "MLFLOW_TRACKING_PASSWORD"})

    return dsl.pipeline(name=PIPELINE_NAME, description="Make ONNX, int8, pruned and distilled variants of a "
                                                        "registered model; register those within the accuracy "
                                                        "guard; alias edge.")(pipeline_function("optimize", optimize))
