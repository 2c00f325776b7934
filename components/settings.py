"""Platform configuration in one place, read from ``PILLARS_*`` environment variables."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


DISTRIBUTION = "pillars-mlops"
"""The distribution that installs the ``pillars`` import namespace (``pip install pillars-mlops``)."""


def package_version() -> str:
    """The installed version of the ``pillars-mlops`` distribution (``0.0.0`` when run from a bare tree)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "0.0.0"


IMAGE_REPOSITORY = "ghcr.io/pillars-mlops/pillars"
"""Repository of the components image; the tag is the package version unless ``PILLARS_IMAGE`` says otherwise."""


class Settings(BaseSettings):
    """Settings shared by the CLI, the components and the compiled pipelines."""

    model_config = SettingsConfigDict(env_prefix="PILLARS_", extra="ignore")

    home: Path = Field(default=Path(".pillars"))
    """Folder of the embedded default: MLflow store, artifacts, pipeline outputs, checkpoints."""

    image: str = Field(default_factory=lambda: f"{IMAGE_REPOSITORY}:{package_version()}")
    """Container image every component names as ``base_image`` (the package preinstalled)."""

    cluster_mlflow_uri: str = "http://pillars-mlflow.pillars.svc.cluster.local:5000"
    """Tracking URI compiled into pipelines for the cluster (the chart's MLflow Service)."""

    release: str = "pillars"
    """Helm release of the platform chart (``PILLARS_RELEASE``; the chart sets it on its pods): deployed
    InferenceServices carry it as ``app.kubernetes.io/instance`` so the release's NetworkPolicy and
    PodMonitor select them."""

    app_name: str = "pillars"
    """The chart's ``app.kubernetes.io/name`` label (its ``nameOverride``, default ``pillars``)."""

    namespace: str = "pillars"
    """Namespace of the platform release: where its serving runtimes, NetworkPolicies and Secrets live."""

    models_service_account: str = "pillars-models"
    """ServiceAccount of model-server pods (``<fullname>-models`` in the chart)."""

    mlflow_secret_name: str = ""
    """Secret with the MLflow credentials (keys ``username``, ``password``) that compiled pipelines give
    their steps as ``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` (the chart's ``<fullname>-mlflow-auth``)."""

    checkpoint_root: Path | None = None
    """Where training checkpoints live; defaults to ``<home>/checkpoints``. On a cluster, a PVC mount."""

    git_sha: str = ""
    """The commit the installed code was built from (the images set it); registered versions record it
    in their ``code_version`` tag. Empty: ``git rev-parse`` when running from a checkout."""

    checkpoint_pvc: str = ""
    """PersistentVolumeClaim a multi-node training job (``launcher=trainjob``) mounts for checkpoints."""

    spark_image: str = ""
    """Image of the data step's SparkApplication (``spark_launcher=operator``): Pillars with Java and Spark's
    Kubernetes entrypoint. Empty: :attr:`image`."""

    spark_service_account: str = "pillars-spark"
    """ServiceAccount of the Spark drivers (the chart's ``sparkOperator.serviceAccount``, ``<fullname>-spark``)."""

    spark_work_uri: str = ""
    """Where a SparkApplication's driver writes the prepared splits for the data step to copy back
    (``s3://bucket/prefix``; the chart's ``sparkOperator.workUri``). Required by ``spark_launcher=operator``."""

    spark_s3_secret: str = ""
    """Secret whose keys (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``) the Spark driver and executors get
    as environment (the chart's ``sparkOperator.s3.existingSecret``). Empty: IAM / workload identity."""

    spark_s3_endpoint: str = ""
    """S3-compatible endpoint of the work location and ``s3a://`` sources (``http://minio.minio.svc:9000``);
    empty: AWS S3."""

    debug: bool = False
    """The CLI re-raises an error with its traceback instead of printing one line."""

    onnx_threads: int = Field(default=0, ge=0)
    """Intra-op threads of each ONNX Runtime session serving an ONNX variant (0: one per core). On a
    pod with a CPU limit, set it to the limit so threads do not contend."""

    def resolved_home(self) -> Path:
        """The home folder as an absolute path (not created)."""
        return self.home.expanduser().resolve()

    def resolved_checkpoint_root(self) -> Path:
        """The checkpoint folder as an absolute path (not created)."""
        root = self.checkpoint_root or self.resolved_home() / "checkpoints"
        return Path(root).expanduser().resolve()
