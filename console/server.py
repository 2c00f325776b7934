"""Serving the console: refuse an unsafe bind, build the app, run uvicorn."""

from __future__ import annotations

import logging
from pathlib import Path

import uvicorn

from pillars.console.app import create_app
from pillars.console.security import check_bind, read_token
from pillars.console.settings import ConsoleSettings

logger = logging.getLogger(__name__)


def serve(host: str | None = None, port: int | None = None, token_file: Path | None = None) -> None:
    """Serve the console until interrupted; arguments override ``PILLARS_CONSOLE_*`` settings.

    Raises:
        ConfigError: a non-loopback ``host`` without a token, an unreadable token file, or no registry.
    """
    overrides = {k: v for k, v in {"host": host, "port": port, "token_file": token_file}.items() if v is not None}
    settings = ConsoleSettings(**overrides)
    token = read_token(settings.token_file)
    check_bind(settings.host, token)
    app = create_app(settings, token)
    logger.info("console on http://%s:%d (%s)", settings.host, settings.port,
                "token required" if token else "loopback, no token")
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", access_log=False,
                proxy_headers=False, server_header=False)
