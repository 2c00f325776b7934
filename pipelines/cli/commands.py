"""What each ``pillars`` command does, one ``cmd_*`` function per command over its parsed arguments
(:mod:`pillars.pipelines.cli.parser` builds the parser; :func:`with_one_line_errors` turns errors into one line)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable

from pillars.components.errors import ConfigError, PillarsError, one_line
from pillars.components.registry.references import ModelRef, check_model_name, default_model_name
from pillars.pipelines.compile import compile_pipeline, parse_params, pipeline_factory, task_params
from pillars.pipelines.parameters import cluster_options


def cron_expression(text: str) -> str:
    """A KFP cron expression (6 fields, seconds first); a standard 5-field expression gets ``0`` seconds."""
    fields = text.split()
    if len(fields) == 5:
        fields.insert(0, "0")
    if len(fields) != 6:
        raise ConfigError(f"--schedule takes a cron expression of 5 (or 6, with seconds) fields, got {text!r}")
    return " ".join(fields)


# --- commands -----------------------------------------------------------------------------------


def with_one_line_errors(command: Callable[[], int | None]) -> int:
    """Run a command as the CLI does: its exit status, Ctrl-C as 130, and any error as one line on stderr
    (status 2 for a Pillars or value error, else 1; ``PILLARS_DEBUG`` raises it instead)."""
    try:
        return int(command() or 0)
    except KeyboardInterrupt:
        print("pillars: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the CLI's one place that turns errors into one line
        from pillars.components.settings import Settings

        if Settings().debug:
            raise
        print(f"pillars: error: {one_line(e)}", file=sys.stderr)
        return 2 if isinstance(e, (PillarsError, ValueError)) else 1


def cmd_run(args: argparse.Namespace) -> int:
    from pillars.components.settings import Settings
    from pillars.pipelines.local.runner import end_group_on_sigterm, groups_supported, run_in_own_group
    from pillars.pipelines.local.progress import StepFailed, log_path, optimize_summary, run_reported, run_summary
    from pillars.pipelines.training import check_arguments

    pipeline = pipeline_factory(args.pipeline)(cache_data=not args.no_cache)
    arguments = parse_params([*args.param, *task_params(args.task, args.task_arg, args.param)], pipeline)
    check_arguments(pipeline, dict(arguments))  # bad arguments: one line, before any step or log file
    if not args.runner and groups_supported():  # the steps die with this process (pipelines.local)
        def run_here() -> int:
            args.runner = True
            return with_one_line_errors(lambda: cmd_run(args))

        return run_in_own_group([sys.executable, "-m", "pillars.pipelines.cli", *args.argv, "--runner"],
                                in_fork=run_here)
    if args.runner:
        end_group_on_sigterm()
    log = log_path(Settings().resolved_home(), args.pipeline)
    print(f"pillars run {args.pipeline}: steps run with kfp.local; full log: {log}", file=sys.stderr, flush=True)
    if args.pipeline == "optimize":
        from pillars.components.optimize.register import resolve_version

        run_reported(pipeline, arguments, log, verbose=args.verbose or args.show_logs, caching=not args.no_cache)
        for line in optimize_summary(*resolve_version(str(arguments["model"])), log):
            print(line)
        return 0
    name = arguments.get("model_name") or default_model_name(
        arguments.get("task") or pipeline.component_spec.inputs["task"].default)
    try:
        uri = run_reported(pipeline, arguments, log, verbose=args.verbose or args.show_logs, caching=not args.no_cache)
    except StepFailed as e:
        if e.step == "optimize":  # after promotion: what the run registered and promoted still stands
            import mlflow

            for line in run_summary(name, mlflow.get_tracking_uri(), log):
                print(line)
        raise
    for line in run_summary(name, uri, log):
        print(line)
    return 0


def cmd_optimize(args: argparse.Namespace) -> int:
    """``pillars optimize models:/NAME@champion``: the optimize pipeline with kfp.local; the model must be
    registered (checked before any step runs)."""
    from pillars.components.optimize.register import resolve_version
    from pillars.components.settings import Settings
    from pillars.components.registry.tracking import configure_tracking
    from pillars.pipelines.local.progress import log_path, optimize_summary, run_reported

    ModelRef.parse(args.model)
    configure_tracking(create=False)
    name, version = resolve_version(args.model)
    pipeline = pipeline_factory("optimize")()
    arguments = {**parse_params(args.param, pipeline), "model": f"models:/{name}/{version}"}
    if args.variants:
        arguments["variants"] = args.variants
    log = log_path(Settings().resolved_home(), "optimize")
    print(f"pillars optimize {name} v{version}: steps run with kfp.local; full log: {log}", file=sys.stderr,
          flush=True)
    run_reported(pipeline, arguments, log, verbose=args.verbose or args.show_logs, caching=False)
    for line in optimize_summary(name, version, log):
        print(line)
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    params = [*args.param, *task_params(args.task, args.task_arg, args.param)]
    out = compile_pipeline(args.pipeline, args.output, args.as_k8s, params, args.namespace,
                           image=args.image, **cluster_options(args))
    print(f"wrote {out}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    import tempfile

    from pillars.pipelines.submit import connect, schedule_run, submit_run
    from pillars.pipelines.training import check_arguments

    schedule = cron_expression(args.schedule) if args.schedule else None
    pipeline = pipeline_factory(args.pipeline)()
    arguments = parse_params([*args.param, *task_params(args.task, args.task_arg, args.param)], pipeline)
    check_arguments(pipeline, arguments, load=False)  # the task's package is in the image, maybe not here
    caching = False if args.no_cache else None
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(args.pipeline, os.path.join(tmp, "pipeline.yaml"), **cluster_options(args))
        client = connect(args.host, args.namespace)
        common = {"experiment": args.experiment, "namespace": args.namespace, "enable_caching": caching,
                  "service_account": args.service_account}
        if schedule:
            job = schedule_run(client, package, arguments, job_name=args.run_name or f"{args.pipeline}-schedule",
                               cron=schedule, **common)
            print(f"recurring run {job} created ({schedule})")
        else:
            run = submit_run(client, package, arguments, run_name=args.run_name, **common)
            print(f"run {run} submitted to {args.host}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pillars.pipelines.local.demo import run_demo

    flags = task_params(None, args.task_arg, [])  # [] or ["task_args={...}"]
    return run_demo(task=args.task, epochs=args.epochs, serve=not args.no_serve,
                    task_args=flags[0].partition("=")[2] if flags else "")


def cmd_tasks(args: argparse.Namespace) -> int:
    """Installed tasks (entry points in the group ``pillars.tasks``) with their description."""
    from pillars.components.task import known_tasks, load_task

    tasks = known_tasks()
    if not tasks:
        print("no tasks installed")
    width = max((len(name) for name in tasks), default=0)
    for name, reference in sorted(tasks.items()):
        try:
            about = load_task(name).description or reference
        except Exception as e:  # noqa: BLE001 - one broken task must not hide the others
            about = f"(cannot load {reference}: {one_line(e)})"
        print(f"{name:<{width}}  {about}")
    print("your own: --task package.module:attribute (see README, Bring your own model)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from pillars.serving.__main__ import main as serve_main

    return serve_main(["--model_uri", args.model_uri, *args.rest])


def cmd_up(args: argparse.Namespace) -> int:
    from pillars.components.registry import CHAMPION, alias_version
    from pillars.components.registry.tracking import configure_tracking
    from pillars.pipelines.local.stack import Stack, Timing, parse_ports

    check_model_name(args.model)
    configure_tracking(create=False)
    if alias_version(args.model, CHAMPION) is None:
        raise ConfigError(f"{args.model} has no champion to serve; train one first: pillars run training --task ...")
    state = Stack().up(args.model, parse_ports(args.ports), Timing.fast() if args.fast else Timing(), args.param)
    print(f"local stack up for {args.model}:")
    for name, url in state["urls"].items():
        print(f"  {name:<13} {url}")
    auth = state["web_auth"]
    print(f"Prometheus and Alertmanager ask for user {auth['username']}, password in {auth['password_file']}")
    print("stop it with: pillars down")
    return 0


def cmd_console(args: argparse.Namespace) -> int:
    """The console runs as a process of its own (``python -m pillars.console``, which takes the flags): the
    console imports the command-line tools, never the other way round. It dies the way this process does:
    a ``kill -9`` of ``pillars console`` ends the console at once too (its runs' workers, sessions of their
    own, go on), as when both were one process."""
    import signal

    from pillars.pipelines.local.runner import die_with, groups_supported

    parent = os.getpid()
    ties = {"preexec_fn": lambda: die_with(parent, signal.SIGKILL)} if groups_supported() else {}
    return subprocess.call([sys.executable, "-m", "pillars.console", *args.rest], **ties)


def cmd_down(args: argparse.Namespace) -> int:
    from pillars.pipelines.local.stack import Stack

    stopped = Stack().down()
    print(f"stopped: {', '.join(stopped)}" if stopped else "the local stack was not running")
    return 0


def cmd_alerts(args: argparse.Namespace) -> int:
    from pillars.serving.monitoring.alerts import helm_rules_file, rules_file

    text = helm_rules_file() if args.helm else rules_file()
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    else:
        print(text, end="")
    return 0


def cmd_trigger(args: argparse.Namespace) -> int:
    from pillars.pipelines.trigger.serve import main as trigger_main

    return trigger_main(args.rest)


def cmd_deploy(args: argparse.Namespace) -> int:
    """``pillars deploy NAME@ALIAS --namespace NS [--gpu] [--canary P] [--dry-run -o yaml]``.

    With ``--dry-run`` the alias is resolved to a version when the registry answers;
    otherwise the object serves the alias itself (``models:/NAME@ALIAS``) and a note says so on
    stderr. Without ``--dry-run`` the alias must resolve. Exit codes: 0 ok, 1 rollout failed,
    2 bad input.
    """
    import dataclasses
    import json

    import yaml

    from pillars.components.deploy.inference_service import (DeployError, DeploySpec, build_inference_service,
                                                             mode_annotation)
    from pillars.components.deploy.rollout import deploy, resolve_version
    from pillars.components.registry.tracking import configure_tracking

    ref = ModelRef.parse(args.model)
    if not ref.is_alias:
        raise ConfigError(f"pillars deploy takes NAME@ALIAS (e.g. iris@champion), got {args.model!r}")
    from pillars.components.settings import Settings

    spec = DeploySpec(model=ref.name, alias=ref.alias, namespace=args.namespace or Settings().namespace, gpu=args.gpu,
                      canary_percent=args.canary, mode=args.mode, kserve_version=args.kserve_version,
                      name=args.name, **({"tracking_uri": args.mlflow_uri} if args.mlflow_uri else {}))
    mode_annotation(spec.mode, spec.kserve_version)
    try:
        configure_tracking(create=False)
        reachable = True
    except ConfigError as e:
        if not args.dry_run:
            raise
        reachable = False
        print(f"note: MLflow registry unreachable ({one_line(e)}); serving the alias {ref.uri}", file=sys.stderr)
    if reachable:
        spec = dataclasses.replace(spec, version=resolve_version(ref.name, ref.alias))
    if args.dry_run:
        obj = build_inference_service(spec)
        print(yaml.safe_dump(obj, sort_keys=False) if args.output == "yaml" else json.dumps(obj, indent=2), end="")
        return 0
    try:
        result = deploy(spec, timeout_s=args.timeout)
    except DeployError as e:
        print(f"pillars: error: {one_line(e)}", file=sys.stderr)
        return 1
    print(f"{result.namespace}/{result.name} ready at {result.url} ({result.model_uri})")
    return 0


# --- parser -------------------------------------------------------------------------------------
