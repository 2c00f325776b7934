"""Bounding the model server's connections, so idle sockets cannot exhaust it.

Opening a connection needs no token, so without bounds anyone who can reach the port can hold thousands of
idle sockets until the process runs out of file descriptors ("Too many open files") and cannot even answer
its health probes. Three bounds, for HTTP (uvicorn's httptools protocol, subclassed here) and gRPC
(server options, :func:`grpc_options`):

- a connection cap below the descriptor limit (:func:`connection_cap`): HTTP and gRPC each get at most
  half of what the soft ``RLIMIT_NOFILE`` leaves after a reserve for the model, logs and threads. When the
  HTTP cap is reached, the OLDEST connection with no request in flight is closed to make room (an idle
  socket of a flood, not the probe that just connected), so health keeps answering during a flood;
- a header timeout: a connection that has not sent a whole request head within ``header_timeout_s`` of
  opening is closed (slow or silent clients; gRPC: ``grpc.server_handshake_timeout_ms``);
- a keep-alive timeout between requests (uvicorn's ``timeout_keep_alive``; gRPC:
  ``grpc.max_connection_idle_ms``), and at most ``max_concurrent_streams`` calls on one gRPC connection.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = logging.getLogger(__name__)

FD_RESERVE = 128
"""Descriptors kept for everything but client connections: the model's files, logs, pipes, threads' epolls."""
DEFAULT_BACKLOG = 2048
"""uvicorn's listen backlog, kept when the descriptor limit leaves room for it."""
GRPC_MAX_CONCURRENT_STREAMS = 100
"""Most calls in flight on one gRPC connection (HTTP/2 streams)."""


def connection_budget(max_connections: int, servers: int = 2) -> tuple[int, int]:
    """``(cap, backlog)``: at most ``max_connections`` connections per server, and a listen backlog, lowered
    so that ``servers`` servers at their cap, each with a full accept burst, stay below the soft descriptor
    limit. (asyncio accepts up to ``backlog`` connections in one go before any of them can be closed, so
    the burst counts too.)"""
    backlog = DEFAULT_BACKLOG
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return max_connections, backlog
    share = max(16, (soft - FD_RESERVE) // servers)
    backlog = min(backlog, max(4, share // 4))
    return max(8, min(max_connections, share - backlog)), backlog


def guarded_http_protocol(max_connections: int, header_timeout_s: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with a connection cap (oldest idle connection closed first) and a
    deadline for the first request head; one class per server (it holds that server's open connections)."""
    opened: dict[GuardedProtocol, None] = {}  # insertion-ordered: the oldest first

    class GuardedProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._heads = 0
            self._deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            opened[self] = None
            if len(opened) > max_connections:
                # A victim leaves ``opened`` as it is closed, not when its close completes (a loop iteration
                # later): else every new connection would pick the same, already closing, oldest one.
                victim = next((c for c in opened if c is not self and c._idle()), self)
                victim._close()
                logger.debug("connection cap %d reached: closed the oldest idle connection", max_connections)
                if victim is self:
                    return
            self._deadline = self.loop.call_later(header_timeout_s, self._head_overdue)

        def _close(self) -> None:
            opened.pop(self, None)
            self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            opened.pop(self, None)
            if self._deadline is not None:
                self._deadline.cancel()
            super().connection_lost(exc)

        def on_headers_complete(self) -> None:
            self._heads += 1
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            super().on_headers_complete()

        def _idle(self) -> bool:
            """No request in flight: never sent a head, or its last response is complete."""
            return self.cycle is None or self.cycle.response_complete

        def _head_overdue(self) -> None:
            if self._heads == 0 and not self.transport.is_closing():
                self._close()

    return GuardedProtocol


def grpc_options(max_connections: int, header_timeout_s: float, keep_alive_s: float,
                 reuse_port: bool = False) -> list[tuple[str, int]]:
    """gRPC server options bounding connections as :func:`guarded_http_protocol` bounds HTTP ones; the port
    shared with the other workers (``SO_REUSEPORT``) only when ``reuse_port`` (gRPC's default is to share it)."""
    return [
        ("grpc.so_reuseport", int(reuse_port)),
        ("grpc.max_allowed_incoming_connections", max_connections),
        ("grpc.server_handshake_timeout_ms", int(header_timeout_s * 1000)),
        ("grpc.max_connection_idle_ms", int(keep_alive_s * 1000)),
        ("grpc.max_concurrent_streams", GRPC_MAX_CONCURRENT_STREAMS),
    ]
