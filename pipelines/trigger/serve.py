"""``pillars trigger``: the command line, and serving the webhook app (and its metrics port) until stopped."""

from __future__ import annotations

import argparse
import asyncio
import shlex
from collections.abc import Sequence
from typing import Any

from pillars.components.settings import Settings
from pillars.pipelines.parameters import ClusterOptions, add_cluster_flags, cluster_options
from pillars.pipelines.trigger.app import Metrics, create_app, metrics_app
from pillars.pipelines.trigger.decide import Decider
from pillars.pipelines.trigger.runs import kfp_starter, local_starter, registry_champions
from pillars.pipelines.trigger.settings import TriggerSettings, read_token

DESCRIPTION = "The retraining trigger: an Alertmanager webhook receiver that starts the retraining pipeline."


def parse_args(argv: Sequence[str] | None = None, settings: TriggerSettings | None = None) -> argparse.Namespace:
    """The trigger's command line (defaults from ``settings``: :class:`TriggerSettings`, ``PILLARS_TRIGGER_*``)."""
    settings = settings or TriggerSettings()
    parser = argparse.ArgumentParser(prog="pillars trigger", description=DESCRIPTION)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9095)
    parser.add_argument("--token-file", help="file holding the shared bearer token (else PILLARS_TRIGGER_TOKEN)")
    parser.add_argument("--cooldown", type=float, default=settings.cooldown, help="seconds between runs per model")
    parser.add_argument("--max-runs-per-call", type=int, default=settings.max_runs_per_call,
                        help="runs one webhook call may start (the rest: 503, re-sent by Alertmanager)")
    parser.add_argument("--max-active-runs", type=int, default=settings.max_active_runs,
                        help="runs this trigger started that may run at once, across all calls (the rest: 503)")
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="serve /metrics on this port only (not on --port): Prometheus needs no webhook access")
    parser.add_argument("--kfp-host", help="start runs on this KFP API instead of locally")
    parser.add_argument("--experiment", default="pillars-retraining")
    parser.add_argument("--namespace", default=None)
    parser.add_argument("--service-account", default=None,
                        help="service account of the runs (the chart's pillars-pipeline-runner: deploy, TrainJobs)")
    parser.add_argument("--param", action="append", default=[], metavar="K=V", help="retraining parameter")
    parser.add_argument("--command", default=settings.command or None,
                        help="local command line to run instead of `pillars run retraining` "
                             "(the --param arguments are appended; env PILLARS_TRIGGER_COMMAND)")
    add_cluster_flags(parser, settings.cluster_flag_defaults(), "cluster options of the compiled retraining pipeline "
                      "(with --kfp-host)", " (as for `pillars compile`; env PILLARS_TRIGGER_<NAME>)")
    args = parser.parse_args(argv)
    ClusterOptions(**cluster_options(args))  # bad values fail here, not at the first alert
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """``pillars trigger``: serve the webhook receiver until stopped."""
    import uvicorn

    settings = TriggerSettings()
    args = parse_args(argv, settings)
    token = read_token(args.token_file, settings.token)
    if args.kfp_host:
        start = kfp_starter(args.kfp_host, args.experiment, args.param, args.namespace, args.service_account,
                            cluster_options(args))
    else:
        command = shlex.split(args.command) if args.command else None
        start = local_starter(args.param, Settings().resolved_home() / "trigger-runs", command)
    # The champion is looked up where the runs will register their versions (the tracking_uri parameter).
    tracking_uri = dict(p.partition("=")[::2] for p in args.param).get("tracking_uri") or None
    metrics = Metrics()
    app = create_app(token, Decider(args.cooldown, memory=settings.memory), start, registry_champions(tracking_uri),
                     metrics, max_runs_per_call=args.max_runs_per_call, start_workers=settings.start_workers,
                     max_active_runs=args.max_active_runs, registry_timeout=settings.registry_timeout,
                     serve_metrics=args.metrics_port is None)
    servers = [uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="info"))]
    if args.metrics_port is not None:
        servers.append(uvicorn.Server(uvicorn.Config(metrics_app(metrics), host=args.host, port=args.metrics_port,
                                                     log_level="warning")))
    asyncio.run(_serve(servers))
    return 0


async def _serve(servers: Sequence[Any]) -> None:
    """Run uvicorn servers together until one ends (a stop signal), then end the others."""
    tasks = [asyncio.create_task(server.serve()) for server in servers]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for server in servers:
        server.should_exit = True
    await asyncio.gather(*tasks)
