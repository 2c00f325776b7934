"""``python -m pillars.serving``: the container entrypoint (KServe's flags plus ours).

Flags are accepted in KServe's underscore spelling (``--http_port``) and in dash spelling
(``--http-port``), so ``pillars serve MODEL_URI --http-port 8080`` can pass its flags straight on.
Every flag of ours can also come from a ``PILLARS_SERVING_*`` environment variable.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pillars.components.errors import PillarsError
from pillars.components.registry.references import SCHEME, ModelRef

if TYPE_CHECKING:
    from pillars.serving.settings import ServingSettings

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """KServe's model-server parser as a parent, plus one flag per :class:`ServingSettings` field
    (:func:`add_settings_flags`) and ``--log_level``."""
    from kserve.model_server import parser as kserve_parser

    from pillars.serving.settings import ServingSettings

    parser = argparse.ArgumentParser(prog="python -m pillars.serving", parents=[kserve_parser],
                                     description="Serve a Pillars model with the KServe model server.")
    parser.set_defaults(model_name=None, enable_latency_logging=False)
    add_settings_flags(parser, ServingSettings())
    parser.add_argument("--reuse_port", action="store_true", help=argparse.SUPPRESS)  # set for each of --workers
    parser.add_argument("--log_level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="level of the serving logger (DEBUG: one line per request)")
    return parser


def add_settings_flags(parser: argparse.ArgumentParser, env: ServingSettings) -> None:
    """One flag per field of ``env``'s class but :data:`~pillars.serving.settings.ENV_ONLY`, defaulting to
    ``env``'s value (the ``PILLARS_SERVING_*`` variables).

    The field decides the flag: ``--NAME`` of its type (``X | None``: X; a path: text; a ``Literal``: its
    choices; a list: comma-separated), a boolean that defaults to False as a switch ``--NAME``, one that
    defaults to True as ``--no_NAME``; the help is the first sentence of the field's docstring.
    """
    from pillars.serving.settings import ENV_ONLY

    for name, field in type(env).model_fields.items():
        if name in ENV_ONLY:
            continue
        kind = _flag_type(field.annotation)
        default, text = getattr(env, name), _first_sentence(field.description or "")
        if kind is bool:
            flag = f"--{name}" if not field.default else f"--no_{name}"
            parser.add_argument(flag, dest=name, action="store_false" if field.default else "store_true",
                                default=default, help=text if not field.default else f"turn off: {text}")
        elif typing.get_origin(kind) is typing.Literal:
            parser.add_argument(f"--{name}", choices=typing.get_args(kind), default=default, help=text)
        else:
            parser.add_argument(f"--{name}", type=kind, default=default, help=text)


def _flag_type(annotation: Any) -> Any:
    """What a flag parses a field's text as: ``X | None`` as X, a path as text, a list as comma-separated."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (types.UnionType, typing.Union) and len(args) == 1:
        annotation = args[0]
    if annotation is Path:
        return str
    if typing.get_origin(annotation) is list:
        return _comma_separated
    return annotation


def _comma_separated(value: str) -> list[str]:
    return [part for part in value.split(",") if part.strip()]


def _first_sentence(description: str) -> str:
    """A field docstring's first sentence as flag help (RST literals as plain text, ``%`` escaped)."""
    first = re.split(r"(?<=\.)\s", " ".join(description.split()), maxsplit=1)[0]
    return first.replace("``", "").replace("%", "%%")


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
    flags = normalize_flags(sys.argv[1:] if argv is None else argv, parser)
    args = parser.parse_args(flags)
    _configure_logging(args.log_level)
    if args.workers < 1:
        logger.error("cannot serve: --workers must be at least 1, not %d", args.workers)
        return 2
    if args.workers > 1:
        from pillars.serving.workers import serve_workers

        return serve_workers(flags, args.workers)

    from pillars.components.registry.tracking import configure_tracking
    from pillars.serving.access.auth import load_auth
    from pillars.serving.model import PillarsModel
    from pillars.serving.server import PillarsModelServer
    from pillars.serving.settings import ENV_ONLY, ServingSettings

    imported = time.perf_counter()
    try:
        settings = ServingSettings(**{name: getattr(args, name) for name in ServingSettings.model_fields
                                      if name not in ENV_ONLY})
        auth = load_auth(settings.auth_token_file, settings.auth_token)
        if settings.model_uri.startswith(("models:/", "runs:/")):
            configure_tracking(create=False)  # the registry every command finds: MLFLOW_TRACKING_URI or ./.pillars
        model = PillarsModel(args.model_name or default_model_name(settings.model_uri), settings)
        model.load()
    except (PillarsError, ValueError) as e:
        from pillars.serving.versions import whole_message

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
        ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile, reuse_port=args.reuse_port)
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
