"""KServe's ``ModelServer`` with our REST app, middleware and gRPC server plugged in, bound to ``--host``."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Sequence
from typing import Any

from kserve import ModelServer
from kserve import model_server as kserve_model_server
from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING

from pillars.serving.protocol import codec
from pillars.serving.access import origins
from pillars.serving.access.auth import TokenAuth
from pillars.serving.access.connections import connection_budget, grpc_options, guarded_http_protocol
from pillars.serving.protocol.fast_path import FastV2App
from pillars.serving.protocol.grpc_server import PillarsGRPCServer
from pillars.serving.access.middleware import ServingMiddleware
from pillars.serving.model import PillarsModel
from pillars.serving.monitoring import multiprocess
from pillars.serving.protocol.rest import PillarsRESTServer
from pillars.serving.settings import LOOPBACK

logger = logging.getLogger(__name__)


class PillarsModelServer(ModelServer):
    """One process serving REST (V1, V2, ``/metrics``) and gRPC (V2) for Pillars models.

    Args:
        max_body_bytes: largest REST body / gRPC message accepted.
        host: the address both servers listen on (loopback unless told otherwise).
        auth: bearer-token check, or None for no auth.
        metrics_open: serve ``/metrics`` without the token even when auth is on.
        enable_grpc: start the gRPC server on ``grpc_port``.
        max_connections: most connections per server (lowered below the descriptor limit).
        header_timeout_s: seconds a new connection has to send its request head (gRPC: the handshake).
        grpc_idle_timeout_s: seconds an idle gRPC connection stays open.
        allowed_hosts: host names a request's ``Host`` may name (:func:`pillars.serving.access.origins.allowed_hosts`).
        reuse_port: bind both ports with ``SO_REUSEPORT`` (one of several workers: :mod:`pillars.serving.workers`).
        **kwargs: passed to :class:`kserve.ModelServer` (ports, threads, logging flags); one worker only (this
            process; :mod:`pillars.serving.workers` runs several).
    """

    def __init__(self, max_body_bytes: int, host: str = LOOPBACK, auth: TokenAuth | None = None,
                 metrics_open: bool = False, enable_grpc: bool = True, max_connections: int = 1000,
                 header_timeout_s: float = 10.0, grpc_idle_timeout_s: float = 300.0,
                 allowed_hosts: Sequence[str] = (), reuse_port: bool = False, **kwargs: Any) -> None:
        super().__init__(enable_grpc=False, **kwargs)  # we start our own gRPC server instead
        self._hosts = origins.allowed_hosts(allowed_hosts, host)
        self._max_connections, self._backlog = connection_budget(max_connections, servers=2 if enable_grpc else 1)
        self._header_timeout_s = header_timeout_s
        self._grpc_idle_timeout_s = grpc_idle_timeout_s
        self._serve_grpc = enable_grpc
        self._host = host
        self._max_body_bytes = max_body_bytes
        self._auth = auth
        self._metrics_open = metrics_open
        self._reuse_port = reuse_port

    def start(self, models: list[PillarsModel]) -> None:  # type: ignore[override]
        """Serve ``models`` (already loaded and ready) until SIGTERM/SIGINT.

        KServe's ``start`` builds its own REST server (every interface, the repository routes); this one
        builds ours and otherwise does the same.
        """
        self._register_and_check_atleast_one_model_is_ready(models)
        versions = {m.name: m.version for m in models}  # shared with the middleware and the interceptor
        for model in models:  # a hot reload changes the version label of every later request
            model.version_listeners.append(versions.__setitem__)
        app = kserve_model_server.app
        # Inside ServingMiddleware (added after it, so wrapped by it): auth, limits and request metrics apply.
        app.add_middleware(FastV2App, dataplane=self.dataplane, handlers=app.exception_handlers)
        app.add_middleware(
            ServingMiddleware, versions=versions, max_body_bytes=self._max_body_bytes, auth=self._auth,
            metrics_open=self._metrics_open,
            v1_body_limits={m.name: codec.json_body_limit(m.signature, m.settings.max_rows) for m in models},
            hosts=self._hosts)
        self._rest_server = PillarsRESTServer(
            FASTAPI_APP_IMPORT_STRING, self.dataplane, self.model_repository_extension, self.http_port,
            host=self._host, access_log_format=self.access_log_format, workers=1,
            grace_period=self.grace_period, event_loop=self.event_loop,
            timeout_keep_alive=self.timeout_keep_alive, ssl_certfile=self.ssl_certfile,
            ssl_keyfile=self.ssl_keyfile,
            protocol=guarded_http_protocol(self._max_connections, self._header_timeout_s), backlog=self._backlog,
            reuse_port=self._reuse_port)
        self.servers.append(self._rest_server.start())
        if self._serve_grpc:
            # No request within max_rows is larger: gRPC refuses bigger messages before parsing them.
            message_limit = min(self._max_body_bytes,
                                max(codec.grpc_message_limit(m.signature, m.settings.max_rows) for m in models))
            self._grpc_server = PillarsGRPCServer(
                self.grpc_port, self.dataplane, self.model_repository_extension,
                kwargs=vars(kserve_model_server.args), grace_period=self.grace_period, host=self._host,
                versions=versions, max_message_bytes=message_limit, auth=self._auth,
                connection_options=grpc_options(self._max_connections, self._header_timeout_s,
                                                self._grpc_idle_timeout_s, reuse_port=self._reuse_port))
            self.servers.append(self._grpc_server.start(self.max_threads))
        logger.info("serving %s on http://%s:%d%s (auth %s, /metrics %s, at most %d connections per server)",
                    ", ".join(versions), self._host, self.http_port,
                    f" and gRPC port {self.grpc_port}" if self._serve_grpc else "", "on" if self._auth else "off",
                    "open" if self._metrics_open or not self._auth else "behind the token", self._max_connections)
        if multiprocess.multiprocess_dir() is not None:  # one of several workers: drift series shared
            multiprocess.DriftMirror().start()
        self.setup_event_loop()
        self.register_signal_handler()
        freeze_heap()
        asyncio.run(self._serve())


def freeze_heap() -> None:
    """Move everything loaded so far (torch, KServe, MLflow, the model: some 400k objects) out of the garbage
    collector's reach. A full collection walks all of them: hundreds of milliseconds with the event loop
    stopped, which was the tail of the latency (p99 several times p50); requests' own objects are still
    collected. A hot reload freezes again after its swap (:meth:`PillarsModel.reload_if_moved`)."""
    gc.collect()
    gc.freeze()
