"""The optimize pipeline: a registered version (default the champion) -> ONNX, int8, pruned and distilled
variants judged on its test split -> the passing ones registered, alias ``edge`` on the fastest.

The champion never moves here. Runs with kfp.local (``pillars run optimize --param
model=models:/NAME@champion``) and compiles for a cluster like the others (``pillars compile optimize``).
"""

from typing import Any

from kfp import dsl, kubernetes

from pillars.components.optimize.variants import VARIANTS, Guard, OptimizeParams
from pillars.components.optimize.op import optimize_component
from pillars.components.settings import Settings

PIPELINE_NAME = "pillars-optimize"
_DEFAULTS = OptimizeParams()

PARAMETER_HELP = f"""Pipeline parameters.

Args:
    model: The registered version to optimise: models:/NAME@champion (an alias) or models:/NAME/VERSION.
    variants: Comma-separated variants to make, of: {', '.join(VARIANTS)}.
    max_drop_points: Largest drop, in points, of a higher-is-better metric (accuracy) a variant may show.
    max_relative_worsening: Largest relative increase of a lower-is-better metric (RMSE, MASE).
    sparsity: Share of Linear/Conv weights pruning sets to zero, in (0, 1).
    prune_epochs: Fine-tune epochs after pruning.
    distill_epochs: Training epochs of the distilled student.
    temperature: Temperature of the teacher's soft targets.
    data_args: JSON object of data parameters (seed, val_fraction, test_fraction, source...) overriding the
        parent run's, so the variants are judged on the split the parent was tested on.
    tracking_uri: MLflow tracking URI; empty: MLFLOW_TRACKING_URI or the local store.
    task: The task the version must be a model of (a name or package.module:attribute); empty: any.
"""


def optimize_pipeline(image: str | None = None, mlflow_secret: str | None = None, **_cluster_options: Any) -> Any:
    """Build the optimize pipeline whose step runs in ``image`` (default: the ``PILLARS_IMAGE`` setting).

    Args:
        mlflow_secret: a Secret with the MLflow ``username``/``password`` the step gets (default: the
            ``PILLARS_MLFLOW_SECRET_NAME`` setting). Other cluster options of the training pipeline
            (GPUs, PVCs, deploy) do not apply and are ignored.
    """
    settings = Settings()
    component = optimize_component(image or settings.image)
    secret = settings.mlflow_secret_name if mlflow_secret is None else mlflow_secret

    def documented(func: Any) -> Any:
        func.__doc__ = PARAMETER_HELP  # KFP reads the parameters' descriptions from the docstring
        return func

    @dsl.pipeline(name=PIPELINE_NAME, description="Make ONNX, int8, pruned and distilled variants of a registered "
                                                  "model; register those within the accuracy guard; alias edge.")
    @documented
    def optimize(
        model: str,
        variants: str = ",".join(VARIANTS),
        max_drop_points: float = Guard().max_drop_points,
        max_relative_worsening: float = Guard().max_relative_worsening,
        sparsity: float = _DEFAULTS.sparsity,
        prune_epochs: int = _DEFAULTS.prune_fit.epochs,
        distill_epochs: int = _DEFAULTS.distill_fit.epochs,
        temperature: float = _DEFAULTS.temperature,
        data_args: str = "",
        tracking_uri: str = "",
        task: str = "",
    ) -> None:
        step = component(model=model, variants=variants, max_drop_points=max_drop_points,
                         max_relative_worsening=max_relative_worsening, sparsity=sparsity,
                         prune_epochs=prune_epochs, distill_epochs=distill_epochs, temperature=temperature,
                         data_args=data_args, tracking_uri=tracking_uri, task=task)
        # No retry: a failure after registering is not a clean slate (the step cleans up what it can).
        step.set_caching_options(False).set_display_name("optimize")
        step.set_cpu_request("2").set_memory_request("4Gi").set_memory_limit("4Gi")
        if secret:
            kubernetes.use_secret_as_env(step, secret_name=secret, secret_key_to_env={
                "username": "MLFLOW_TRACKING_USERNAME", "password": "MLFLOW_TRACKING_PASSWORD"})

    return optimize

