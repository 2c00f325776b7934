"""Compile-time cluster options and their command-line flags, defined once.

:class:`ClusterOptions` is what ``pillars compile``/``submit`` and the trigger's cluster runs decide when a
pipeline is built for a cluster. Its fields are the flags: :func:`add_cluster_flags` writes one flag per
field (name, type, default, help and choices from the field), and :func:`cluster_options` reads them back;
``pillars compile``/``submit`` (:mod:`pillars.pipelines.cli.parser`) and ``pillars trigger``
(:mod:`pillars.pipelines.trigger`) both call them. The run parameters (set per run) are in
:mod:`pillars.components.parameters`.

Importing this module imports neither kfp nor pydantic: the CLI builds its parser from it.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from typing import Any


def _mlflow_secret_name() -> str:
    from pillars.components.settings import Settings  # pydantic loads only when an option is built

    return Settings().mlflow_secret_name


def _option(default: Any = dataclasses.MISSING, help: str = "", *, flags: tuple[str, ...] = (),
            choices: tuple[str, ...] = (), metavar: str | None = None, flag: bool = True,
            default_factory: Any = dataclasses.MISSING) -> Any:
    """A :class:`ClusterOptions` field and how its flag reads: ``help``, extra ``flags`` (aliases), ``choices``,
    ``metavar``; ``flag=False``: no flag."""
    metadata = {"help": help, "flags": flags, "choices": choices, "metavar": metavar, "flag": flag}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


KSERVE_MODES = ("Knative", "Standard")


@dataclasses.dataclass(frozen=True)
class ClusterOptions:
    """Compile-time choices of how the steps run on a cluster (they do nothing under kfp.local).

    Each field's help (its flag's help in ``pillars compile --help``) says what it does.
    """

    gpus: int = _option(0, "GPUs the train step asks for (default 0: CPU only); the compiled YAML then sets the "
                           "accelerator type and limit so the cluster schedules the step on a GPU node")
    accelerator: str = _option("nvidia.com/gpu", "accelerator resource name")
    cache_data: bool = _option(True, "let KFP cache the data step (off for retraining, whose source changes "
                                     "behind a path)", flag=False)  # `pillars run/submit --no-cache`
    checkpoint_pvc: str = _option("", "PVC mounted at /checkpoints in the train step so a retried pod resumes "
                                      "from the last epoch (checkpoint_root then defaults to it); TrainJob pods "
                                      "mount it too")
    s3_secret: str = _option("", "Secret with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY that every step gets")
    mlflow_secret: str = _option(default_factory=_mlflow_secret_name,
                                 help="Secret with the MLflow username/password every step gets as "
                                      "MLFLOW_TRACKING_USERNAME/PASSWORD (the chart's <release>-mlflow-auth; "
                                      "default: PILLARS_MLFLOW_SECRET_NAME)")
    deploy_namespace: str = _option("", "deploy approved models there as a KServe InferenceService after "
                                        "promotion (run as the chart's pillars-pipeline-runner service account)")
    canary_percent: int = _option(0, "with --deploy-namespace, first send this share of traffic to the new model, "
                                     "then (once Ready) all of it; 0 skips the canary", flags=("--canary",),
                                  metavar="PERCENT")
    kserve_mode: str = _option("Knative", "deployment mode of the InferenceService", choices=KSERVE_MODES)
    serving_gpus: int = _option(0, "GPUs per model-server replica")

    def __post_init__(self) -> None:
        if self.gpus < 0 or self.serving_gpus < 0:
            raise ValueError(f"gpus must be >= 0, got {min(self.gpus, self.serving_gpus)}")
        if not 0 <= self.canary_percent < 100:
            raise ValueError(f"canary percent must be in [0, 100), got {self.canary_percent}")
        if self.kserve_mode not in KSERVE_MODES:
            raise ValueError(f"kserve_mode must be one of {', '.join(KSERVE_MODES)}, got {self.kserve_mode!r}")


def flag_fields() -> list[dataclasses.Field[Any]]:
    """The :class:`ClusterOptions` fields that are flags."""
    return [f for f in dataclasses.fields(ClusterOptions) if f.metadata["flag"]]


def add_cluster_flags(parser: argparse.ArgumentParser, defaults: Mapping[str, Any] | None = None,
                      title: str = "cluster options (compile time)", note: str = "") -> None:
    """One flag per :class:`ClusterOptions` field (``--s3-secret``...; ``dest`` the field's name), in a group.

    ``defaults`` replace the fields' own (the trigger's ``PILLARS_TRIGGER_*``); a field whose default is
    computed (``mlflow_secret``) defaults to None, which :func:`cluster_options` leaves out so
    :class:`ClusterOptions` computes it. ``note`` is appended to every flag's help.
    """
    defaults = defaults or {}
    group = parser.add_argument_group(title)
    for field in flag_fields():
        meta = field.metadata
        kind = type(field.default) if field.default is not dataclasses.MISSING else str
        default = defaults.get(field.name, None if field.default is dataclasses.MISSING else field.default)
        group.add_argument(f"--{field.name.replace('_', '-')}", *meta["flags"], dest=field.name, type=kind,
                           default=default, choices=meta["choices"] or None, metavar=meta["metavar"],
                           help=meta["help"] + note)


def cluster_options(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`ClusterOptions` keyword arguments that :func:`add_cluster_flags`' flags parsed (None: left out)."""
    return {f.name: getattr(args, f.name) for f in flag_fields() if getattr(args, f.name, None) is not None}
