"""``pillars``: run, compile and submit pipelines, browse the model registry, serve and deploy models.

This module is the parser and the entry point; what each command does is :mod:`pillars.pipelines.cli.commands`.
Every failure prints one line (``pillars: error: ...``) and exits non-zero; set ``PILLARS_DEBUG=1``
for the traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from pillars.components.shutdown import skip_final_collection
from pillars.pipelines.cli.models import cmd_models
from pillars.pipelines.compile import PIPELINES
from pillars.pipelines.cli.commands import (cmd_alerts, cmd_compile, cmd_console, cmd_demo, cmd_deploy, cmd_down,
                                        cmd_optimize, cmd_run, cmd_serve, cmd_submit, cmd_tasks,
                                        cmd_trigger, cmd_up, with_one_line_errors)
from pillars.pipelines.parameters import KSERVE_MODES, add_cluster_flags


def build_parser() -> argparse.ArgumentParser:
    """The ``pillars`` parser: one sub-parser per command, each built by its ``_add_*`` function."""
    parser = argparse.ArgumentParser(prog="pillars", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_run, _add_optimize, _add_compile, _add_submit, _add_models, _add_demo, _add_tasks, _add_serve,
                _add_up, _add_console, _add_down, _add_alerts, _add_trigger, _add_deploy):
        add(sub)
    return parser


Subparsers = Any  # argparse's _SubParsersAction, which argparse does not name publicly


def _pipeline_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("pipeline", choices=PIPELINES, help="which pipeline (its parameters are listed below)")


def _param_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--param", action="append", default=[], metavar="K=V",
                   help="pipeline parameter (repeatable), e.g. --param epochs=10")


def _task_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", help="an installed task's name (pillars tasks) or package.module:attribute "
                                  "(same as --param task=...)")
    p.add_argument("--task-arg", action="append", default=[], metavar="K=V",
                   help="a task constructor argument (repeatable), V as JSON else a string; merged into "
                        "--param task_args='{...}' (the flag wins)")


def _parameters_epilog() -> str:
    """Every pipeline's parameters, from :mod:`pillars.components.parameters` (the help of run/compile/submit)."""
    from pillars.components.parameters import help_lines

    blocks = [f"{name} parameters (--param NAME=VALUE):\n" + "\n".join(help_lines(name)) for name in PIPELINES]
    return "\n\n".join(blocks)


def _pipeline_parser(sub: Subparsers, name: str, help: str, cluster: bool = False) -> argparse.ArgumentParser:
    """A command that takes a pipeline, its task and its parameters (and, for a ``cluster`` command, the
    cluster flags); its help lists the parameters."""
    p = sub.add_parser(name, help=help, description=help, epilog=_parameters_epilog(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _pipeline_arg(p)
    if cluster:
        add_cluster_flags(p)
    _task_args(p)
    _param_arg(p)
    return p


def _add_run(sub: Subparsers) -> None:
    p = _pipeline_parser(sub, "run", "run a pipeline on this machine (kfp.local)")
    p.add_argument("--no-cache", action="store_true", help="run every step, even the data step")
    p.add_argument("-v", "--verbose", dest="show_logs", action="store_true",
                   help="print every step's full output (it always goes to the log file)")
    p.add_argument("--runner", action="store_true", help=argparse.SUPPRESS)  # the child of run_in_own_group
    p.set_defaults(func=cmd_run)


def _add_optimize(sub: Subparsers) -> None:
    p = sub.add_parser("optimize", help="make ONNX/int8/pruned/distilled variants of a registered model (kfp.local)")
    p.add_argument("model", help="models:/NAME@champion or models:/NAME/VERSION")
    p.add_argument("--variants", default="", help="comma-separated subset (default: all)")
    _param_arg(p)
    p.add_argument("-v", "--verbose", dest="show_logs", action="store_true", help="print every step's full output")
    p.set_defaults(func=cmd_optimize)


def _add_compile(sub: Subparsers) -> None:
    p = _pipeline_parser(sub, "compile", "compile a pipeline to KFP YAML", cluster=True)
    p.add_argument("-o", "--output", required=True, help="output YAML file")
    p.add_argument("--as-k8s", action="store_true", help="emit Pipeline/PipelineVersion custom resources")
    p.add_argument("--namespace", default=None, help="namespace of the --as-k8s resources")
    p.add_argument("--image", help="components image (default: PILLARS_IMAGE or the release image)")
    p.set_defaults(func=cmd_compile)


def _add_submit(sub: Subparsers) -> None:
    p = _pipeline_parser(sub, "submit", "submit a pipeline run to a Kubeflow Pipelines cluster", cluster=True)
    p.add_argument("--host", required=True, help="KFP API URL")
    p.add_argument("--experiment", default="pillars", help="KFP experiment (default pillars)")
    p.add_argument("--namespace", default=None, help="Kubeflow namespace (multi-user installs)")
    p.add_argument("--run-name", default=None)
    p.add_argument("--schedule", help="cron expression: create a recurring run instead")
    p.add_argument("--service-account", default=None,
                   help="service account of the run (the chart's pillars-pipeline-runner to deploy)")
    p.add_argument("--no-cache", action="store_true")
    p.set_defaults(func=cmd_submit)


def _add_models(sub: Subparsers) -> None:
    p = sub.add_parser("models", help="browse and manage the MLflow model registry")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", help="registered models and their aliases")
    a = actions.add_parser("show", help="versions of a model, newest first")
    a.add_argument("name")
    a.add_argument("--limit", type=int, default=10)
    a = actions.add_parser("promote", help="make a version the champion")
    a.add_argument("name")
    a.add_argument("version")
    a.add_argument("--why", default="manual promotion")
    a = actions.add_parser("decide-shadow", help="promote the shadow challenger a model server judged better on "
                           "its labels (the decision's reason goes to the alias history)")
    a.add_argument("name")
    a.add_argument("--server", required=True, help="the model server's URL (it runs the challenger with --shadow_uri)")
    a.add_argument("--served-as", default=None, help="the model's name on the server (default: NAME)")
    a.add_argument("--token-file", default=None, help="the server's bearer token, when auth is on")
    a = actions.add_parser("decide-canary", help="judge a KServe canary from Prometheus: promote (all traffic, champion "
                           "alias), roll back (no traffic) or wait",
                           description="Read what the canary and the champion did from Prometheus, decide (error ratio, "
                           "p99 latency, realised or estimated accuracy; pillars.components.evaluation.canary), print "
                           "the decision and the kubectl patch; --apply patches canaryTrafficPercent through the "
                           "Kubernetes client and moves the champion alias by compare-and-set.")
    a.add_argument("name")
    a.add_argument("--prometheus", required=True, help="Prometheus URL")
    a.add_argument("--canary-version", required=True, help="the registry version the canary serves")
    a.add_argument("--champion-version", default=None,
                   help="the version it is judged against (default: the other version that answered the most requests)")
    a.add_argument("--served-as", default=None, help="the model's name on the server (default: NAME)")
    a.add_argument("--namespace", "-n", default=None, help="the InferenceService's namespace (a Prometheus matcher too)")
    a.add_argument("--isvc", default=None, help="the InferenceService (default: from NAME; a Prometheus matcher too)")
    a.add_argument("--window", default="1h", help="Prometheus range of the request, error and latency figures")
    a.add_argument("--min-requests", type=int, default=200, help="requests each version must have answered")
    a.add_argument("--min-labels", type=int, default=200, help="scored labels each version needs to be judged on them")
    a.add_argument("--accuracy-margin", type=float, default=0.02, help="non-inferiority margin on realised accuracy")
    a.add_argument("--latency-ratio", type=float, default=1.5,
                   help="roll back when the canary's p99 is more than this times the champion's (and 10 ms slower)")
    a.add_argument("--prometheus-token-file", default=None, help="bearer token for Prometheus, when it asks for one")
    a.add_argument("--apply", action="store_true", help="patch the InferenceService and move the alias")
    a = actions.add_parser("history", help="recorded alias moves")
    a.add_argument("name")
    a = actions.add_parser("rollback", help="restore the previous champion (never one rolled back from)")
    a.add_argument("name")
    a.add_argument("--to", metavar="VERSION", help="roll back to this version instead")
    a.add_argument("--why", default="manual rollback")
    a = actions.add_parser("upgrade", help="re-register versions logged by Pillars 0.1 so MLflow's pyfunc loads them")
    a.add_argument("name")
    a.add_argument("version", nargs="?", help="one version (default: every version that needs it)")
    p.set_defaults(func=cmd_models)


def _add_demo(sub: Subparsers) -> None:
    p = sub.add_parser("demo", help="train, register and serve a model on this machine")
    p.add_argument("--task", default="breast_cancer", help="an installed task's name or package.module:attribute")
    p.add_argument("--task-arg", action="append", default=[], metavar="K=V",
                   help="a task constructor argument (repeatable); V is JSON, else a string")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--no-serve", action="store_true", help="stop after training and registration")
    p.set_defaults(func=cmd_demo)


def _add_tasks(sub: Subparsers) -> None:
    p = sub.add_parser("tasks", help="list the installed tasks (entry points pillars.tasks)")
    p.set_defaults(func=cmd_tasks)


def _add_serve(sub: Subparsers) -> None:
    p = sub.add_parser("serve", help="serve a model with the KServe model server (HTTP + gRPC)", add_help=False)
    p.add_argument("model_uri", help="models:/NAME@alias, models:/NAME/VERSION, s3://..., or a folder")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_serve)


def _add_up(sub: Subparsers) -> None:
    p = sub.add_parser("up", help="start the local stack: MLflow, model server, Prometheus, Alertmanager, trigger")
    p.add_argument("--model", required=True, help="registered model whose champion is served and watched")
    p.add_argument("--ports", default="", help="overrides, e.g. mlflow=5001,http=8090,prometheus=9091")
    p.add_argument("--fast", action="store_true", help="react in seconds (scrape 1s, drift alert after 5s)")
    _param_arg(p)
    p.set_defaults(func=cmd_up)


def _add_console(sub: Subparsers) -> None:
    p = sub.add_parser("console", help="the web console: pipelines, runs, models, endpoints", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER, help="the console's own flags (pillars console --help)")
    p.set_defaults(func=cmd_console)


def _add_down(sub: Subparsers) -> None:
    p = sub.add_parser("down", help="stop the local stack")
    p.set_defaults(func=cmd_down)


def _add_alerts(sub: Subparsers) -> None:
    p = sub.add_parser("alerts", help="print the alert rules (Prometheus rules file, or the chart's source)")
    p.add_argument("--helm", action="store_true", help="with Helm value placeholders (helm/pillars/files/alert-rules.yaml)")
    p.add_argument("-o", "--output", help="write to this file")
    p.set_defaults(func=cmd_alerts)


def _add_trigger(sub: Subparsers) -> None:
    p = sub.add_parser("trigger", help="receive Alertmanager webhooks and start retraining runs", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_trigger)


def _add_deploy(sub: Subparsers) -> None:
    p = sub.add_parser("deploy", help="deploy a registered model as a KServe InferenceService",
                       description="Deploy a registered model version as a KServe InferenceService (server-side "
                                   "apply), wait for Ready, roll back on failure.")
    p.add_argument("model", metavar="NAME@ALIAS", help="registered model and alias, e.g. iris@champion")
    p.add_argument("--namespace", "-n", default=None,
                   help="namespace of the platform release (default: PILLARS_NAMESPACE, else pillars)")
    p.add_argument("--gpu", nargs="?", type=int, const=1, default=0, help="GPUs per replica (flag alone: 1)")
    p.add_argument("--canary", type=int, metavar="PERCENT", help="traffic share for the new revision")
    p.add_argument("--mode", choices=KSERVE_MODES, default="Knative", help="KServe deployment mode")
    p.add_argument("--kserve-version", default="0.15", help="decides the mode annotation's spelling")
    p.add_argument("--name", default="", help="InferenceService name (default: from the model name)")
    p.add_argument("--mlflow-uri", default=None,
                   help="MLflow URL the model server uses in the cluster (default: PILLARS_CLUSTER_MLFLOW_URI)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for Ready")
    p.add_argument("--dry-run", action="store_true", help="print the object; touch no cluster")
    p.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml")
    p.set_defaults(func=cmd_deploy)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pillars`` console script."""
    skip_final_collection()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if hasattr(args, "rest"):  # serve, trigger, console: their own parsers read the rest
        args.rest = [*extra, *args.rest]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return with_one_line_errors(lambda: args.func(args))

