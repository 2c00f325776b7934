"""``python -m pillars.serving``: the container entrypoint (KServe's flags plus ours).

Flags are accepted in KServe's underscore spelling (``--http_port``) and in dash spelling
(``--http-port``), so ``pillars serve MODEL_URI --http-port 8080`` can pass its flags straight on.
Every flag of ours can also come from a ``PILLARS_SERVING_*`` environment variable.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence

from pillars.components.errors import PillarsError
from pillars.components.registry.references import SCHEME, ModelRef

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """KServe's model-server parser as a parent, plus where the model is and how to serve it."""
    from kserve.model_server import parser as kserve_parser

    from pillars.serving.settings import ServingSettings

    env = ServingSettings()
    parser = argparse.ArgumentParser(prog="python -m pillars.serving", parents=[kserve_parser],
                                     description="Serve a Pillars model with the KServe model server.")
    parser.set_defaults(model_name=None, enable_latency_logging=False)
    parser.add_argument("--model_uri", default=env.model_uri,
                        help="models:/NAME@alias, models:/NAME/VERSION, runs:/..., s3://... or a folder")
    parser.add_argument("--model_dir", default=env.model_dir,
                        help="local model folder (KServe storage initializer: /mnt/models)")
    parser.add_argument("--host", default=env.host,
                        help="address the HTTP and gRPC servers listen on (default 127.0.0.1; "
                             "0.0.0.0 for every interface, as in the container image)")
    parser.add_argument("--max_rows", type=int, default=env.max_rows,
                        help="most rows one request may carry (checked on the declared shape, before decoding)")
    parser.add_argument("--max_queued_rows", type=int, default=env.max_queued_rows,
                        help="most rows waiting for a forward pass; more are answered 503 / RESOURCE_EXHAUSTED")
    parser.add_argument("--metrics_open", action="store_true", default=env.metrics_open,
                        help="serve /metrics without the bearer token even when auth is on")
    parser.add_argument("--max_batch_size", type=int, default=env.max_batch_size,
                        help="most rows merged into one forward pass")
    parser.add_argument("--max_latency_ms", type=float, default=env.max_latency_ms,
                        help="longest a batch waits for more requests under load")
    parser.add_argument("--auth_token_file", default=env.auth_token_file,
                        help="file holding the bearer token (or set PILLARS_SERVING_AUTH_TOKEN)")
    parser.add_argument("--cpu_threads", type=int, default=env.cpu_threads,
                        help="torch CPU threads (0: torch's default, one per core)")
    parser.add_argument("--max_body_bytes", type=int, default=env.max_body_bytes,
                        help="largest request body / gRPC message")
    parser.add_argument("--device", default=env.device, help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--no_drift", dest="drift", action="store_false", default=env.drift,
                        help="do not measure input drift against the model's data profile")
    parser.add_argument("--drift_method", choices=["jsd", "psi", "ks"], default=env.drift_method,
                        help="what decides that a feature drifted (default jsd: Jensen-Shannon distance)")
    parser.add_argument("--drift_threshold", type=float, default=env.drift_threshold,
                        help="threshold of the method (default: jsd 0.1, psi 0.25, ks p-value 0.05)")
    parser.add_argument("--drift_share", type=float, default=env.drift_share,
                        help="share of drifted features at which the model counts as drifting")
    parser.add_argument("--drift_window", type=int, default=env.drift_window,
                        help="most recent rows compared with the training profile")
    parser.add_argument("--drift_min_rows", type=int, default=env.drift_min_rows,
                        help="rows needed in the window before drift is reported")
    parser.add_argument("--drift_interval_s", type=float, default=env.drift_interval_s,
                        help="seconds between drift computations (off the request path)")
    parser.add_argument("--reload_interval_s", type=float, default=env.reload_interval_s,
                        help="with models:/NAME@ALIAS: check the alias every N s and swap in a new version "
                             "(0: off)")
    parser.add_argument("--max_connections", type=int, default=env.max_connections,
                        help="most open client connections per server (kept below ulimit -n; at the cap the "
                             "oldest idle HTTP connection is closed)")
    parser.add_argument("--header_timeout_s", type=float, default=env.header_timeout_s,
                        help="seconds a new connection has to send its request head (gRPC: the handshake)")
    parser.add_argument("--grpc_idle_timeout_s", type=float, default=env.grpc_idle_timeout_s,
                        help="seconds an idle gRPC connection stays open")
    parser.add_argument("--allowed_hosts", type=lambda v: [h for h in v.split(",") if h.strip()],
                        default=env.allowed_hosts,
                        help="comma-separated host names a request's Host header may name (*: any; default: "
                             "the loopback names when --host is loopback, any otherwise)")
    parser.add_argument("--log_level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="level of the serving logger (DEBUG: one line per request)")
    return parser


def normalize_flags(argv: Sequence[str], parser: argparse.ArgumentParser) -> list[str]:
    """Map ``--http-port`` to ``--http_port`` (and back) for options the parser knows in one spelling."""
    known = parser._option_string_actions
    out = []
    for token in argv:
        if token.startswith("--") and token not in known:
            name, eq, value = token.partition("=")
            for candidate in ("--" + name[2:].replace("-", "_"), "--" + name[2:].replace("_", "-")):
                if candidate in known:
                    token = candidate + eq + value
                    break
        out.append(token)
    return out


def default_model_name(model_uri: str) -> str:
    """``NAME`` of ``models:/NAME@alias`` or ``models:/NAME/3``, else ``model`` (KServe's default)."""
    return ModelRef.parse(model_uri).name if model_uri.startswith(SCHEME) else "model"


def main(argv: list[str] | None = None) -> int:
    """Load the model, then serve it until SIGTERM. Returns the exit status (2: bad configuration)."""
    parser = build_parser()
    args = parser.parse_args(normalize_flags(sys.argv[1:] if argv is None else argv, parser))
    _configure_logging(args.log_level)

    from pillars.components.registry.tracking import configure_tracking
    from pillars.serving.access.auth import load_auth
    from pillars.serving.model import PillarsModel
    from pillars.serving.server import PillarsModelServer
    from pillars.serving.settings import ServingSettings

    imported = time.perf_counter()
    try:
        if args.workers != 1:
            raise PillarsError("--workers must be 1: micro-batching works within one process; "
                               "scale with replicas instead")
        settings = ServingSettings(
            model_uri=args.model_uri or "", model_dir=args.model_dir, host=args.host, max_rows=args.max_rows,
            max_queued_rows=args.max_queued_rows, metrics_open=args.metrics_open, max_batch_size=args.max_batch_size,
            max_latency_ms=args.max_latency_ms, auth_token_file=args.auth_token_file,
            cpu_threads=args.cpu_threads, max_body_bytes=args.max_body_bytes, device=args.device,
            drift=args.drift, drift_method=args.drift_method, drift_threshold=args.drift_threshold,
            drift_share=args.drift_share, drift_window=args.drift_window, drift_min_rows=args.drift_min_rows,
            drift_interval_s=args.drift_interval_s, reload_interval_s=args.reload_interval_s,
            max_connections=args.max_connections, header_timeout_s=args.header_timeout_s,
            grpc_idle_timeout_s=args.grpc_idle_timeout_s, allowed_hosts=args.allowed_hosts)
        auth = load_auth(settings.auth_token_file, settings.auth_token)
        if settings.model_uri.startswith(("models:/", "runs:/")):
            configure_tracking(create=False)  # the registry every command finds: MLFLOW_TRACKING_URI or ./.pillars
        model = PillarsModel(args.model_name or default_model_name(settings.model_uri), settings)
        model.load()
    except (PillarsError, ValueError) as e:
        from pillars.serving.model import whole_message

        logger.error("cannot serve: %s", whole_message(e))  # one line: `pillars demo` shows the log's last lines
        return 2
    logger.info("model ready %.3f seconds after the imports", time.perf_counter() - imported)
    server = PillarsModelServer(
        host=settings.host, max_body_bytes=settings.max_body_bytes, auth=auth, metrics_open=settings.metrics_open,
        max_connections=settings.max_connections, header_timeout_s=settings.header_timeout_s,
        grpc_idle_timeout_s=settings.grpc_idle_timeout_s, allowed_hosts=settings.allowed_hosts,
        enable_grpc=args.enable_grpc,
        http_port=args.http_port, grpc_port=args.grpc_port, max_threads=args.max_threads,
        max_asyncio_workers=args.max_asyncio_workers, enable_docs_url=args.enable_docs_url,
        enable_latency_logging=args.enable_latency_logging, access_log_format=args.access_log_format,
        event_loop=args.event_loop, timeout_keep_alive=args.timeout_keep_alive,
        ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile)
    server.start([model])
    return 0


def _configure_logging(level: str) -> None:
    from kserve.logging import configure_logging

    configure_logging()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    for name in {__package__, __name__}:  # every serving module's logger, and this one (``__main__`` under ``-m``)
        target = logging.getLogger(name)
        target.handlers[:] = [handler]
        target.setLevel(level)
        target.propagate = False
    # The access log is one info line per request; keep it for debugging only.
    logging.getLogger("uvicorn.access").setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)
    logging.getLogger("kserve.trace").setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)
    if level != "DEBUG":
        logging.getLogger("kserve").addFilter(_drop_client_errors)


def _drop_client_errors(record: logging.LogRecord) -> bool:
    """KServe logs a traceback for every 4xx; those are the client's mistakes (counted in metrics)."""
    from kserve.errors import InvalidInput, ModelNotFound

    error = record.exc_info[1] if record.exc_info else None
    client = isinstance(error, PillarsError) and error.status < 500
    return not (client or isinstance(error, (InvalidInput, ModelNotFound)))


if __name__ == "__main__":
    sys.exit(main())
