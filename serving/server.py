"""KServe's ``ModelServer`` with our REST middleware and gRPC server plugged in."""

from __future__ import annotations

import logging
from typing import Any

from kserve import ModelServer
from kserve import model_server as kserve_model_server

from pillars.serving.auth import TokenAuth
from pillars.serving.grpc_server import PillarsGRPCServer
from pillars.serving.model import PillarsModel
from pillars.serving.rest import ServingMiddleware

logger = logging.getLogger("pillars.serving")


class PillarsModelServer(ModelServer):
    """One process serving REST (V1, V2, ``/metrics``) and gRPC (V2) for Pillars models.

    Args:
        max_body_bytes: largest REST body / gRPC message accepted.
        auth: bearer-token check, or None for no auth.
        enable_grpc: start the gRPC server on ``grpc_port``.
        **kwargs: passed to :class:`kserve.ModelServer` (ports, threads, logging flags).
    """

    def __init__(self, max_body_bytes: int, auth: TokenAuth | None = None, enable_grpc: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(enable_grpc=False, **kwargs)  # we start our own gRPC server instead
        self._serve_grpc = enable_grpc
        self._max_body_bytes = max_body_bytes
        self._auth = auth

    def start(self, models: list[PillarsModel]) -> None:  # type: ignore[override]
        """Serve ``models`` (already loaded and ready) until SIGTERM/SIGINT."""
        versions = {m.name: m.version for m in models}  # shared with the middleware and the interceptor
        for model in models:  # a hot reload changes the version label of every later request
            model.version_listeners.append(versions.__setitem__)
        kserve_model_server.app.add_middleware(
            ServingMiddleware, versions=versions, max_body_bytes=self._max_body_bytes, auth=self._auth)
        if self._serve_grpc:
            self._grpc_server = PillarsGRPCServer(
                self.grpc_port, self.dataplane, self.model_repository_extension,
                kwargs=vars(kserve_model_server.args), grace_period=self.grace_period,
                versions=versions, max_message_bytes=self._max_body_bytes, auth=self._auth)
            self.servers.append(self._grpc_server.start(self.max_threads))
        logger.info("serving %s on HTTP port %d%s (auth %s)", ", ".join(versions), self.http_port,
                    f" and gRPC port {self.grpc_port}" if self._serve_grpc else "",
                    "on" if self._auth else "off")
        super().start(models)
