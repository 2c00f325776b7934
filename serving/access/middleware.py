"""ASGI middleware in front of KServe's REST app: auth, body-size limit, request metrics and log lines.

Also the last guard that keeps client mistakes 4xx: an error that KServe's request decoding raises
for a malformed body (``ValueError``, ``KeyError`` ... which it would answer with 500) becomes 400.
Our own model code raises ``InputError`` (a ``PillarsError``) for bad input and ``InferenceError`` for its own failures,
so anything else reaching this point on an inference path came from decoding the client's body.
"""

from __future__ import annotations

import logging
import re
import time

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pillars.serving.monitoring import metrics
from pillars.serving.access.auth import TokenAuth, http_path_is_open
from pillars.serving.access.origins import browser_body_refused, host_name

logger = logging.getLogger(__name__)

_V1_PREDICT = re.compile(r"^/v1/models/([^/:]+):predict$")
_V2_INFER = re.compile(r"^/v2/models/([^/]+)(?:/versions/[^/]+)?/infer$")
_FEEDBACK = re.compile(r"^/v2/models/[^/]+/feedback$")
CLIENT_DECODE_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError,
                        UnicodeError)


def inference_route(path: str) -> tuple[str, str] | None:
    """``(protocol, model name)`` of an inference path (``v1`` or ``v2``), else None."""
    for protocol, pattern in (("v1", _V1_PREDICT), ("v2", _V2_INFER)):
        match = pattern.match(path)
        if match:
            return protocol, match.group(1)
    return None


class ServingMiddleware:
    """Pure ASGI middleware (no response buffering, so it costs microseconds per request).

    Args:
        app: the ASGI app to wrap.
        versions: served model name -> version (other names are counted as ``unknown``).
        max_body_bytes: larger request bodies are answered 413 before the app reads them.
        auth: the token check, or None when auth is off.
        metrics_open: serve ``/metrics`` without the token even when auth is on.
        v1_body_limits: per model name, the longest V1 JSON body a request within ``max_rows`` can need.
        hosts: the host names a request's ``Host`` may name (None: any); see :mod:`pillars.serving.access.origins`.
    """

    def __init__(self, app: ASGIApp, versions: dict[str, str], max_body_bytes: int,
                 auth: TokenAuth | None = None, metrics_open: bool = False,
                 v1_body_limits: dict[str, int] | None = None, hosts: frozenset[str] | None = None) -> None:
        self.app = app
        self.hosts = hosts
        self.versions = versions
        self.max_body_bytes = max_body_bytes
        self.v1_body_limits = v1_body_limits or {}
        self.auth = auth
        self.metrics_open = metrics_open

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        route = inference_route(path)
        started = time.perf_counter()
        state = {"status": 0, "bytes": 0}

        async def send_tracked(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
            await send(message)

        try:
            headers = _headers(scope)
            if self.hosts is not None and host_name(headers.get(b"host")) not in self.hosts:
                await _error(send_tracked, 400, f"host {host_name(headers.get(b'host'))!r} is not served here "
                             f"(allowed: {', '.join(sorted(self.hosts))}; --allowed_hosts)")
                return
            if (route is not None or _FEEDBACK.match(path)) and scope["method"] == "POST" \
                    and browser_body_refused(headers):
                await _error(send_tracked, 415, "a request from a web page (with Origin) must send "
                             "Content-Type: application/json (or the binary extension as application/octet-stream)")
                return
            if self.auth is not None and not http_path_is_open(path, self.metrics_open) \
                    and not self.auth.accepts(headers.get(b"authorization")):
                await _error(send_tracked, 401, "missing or invalid bearer token",
                             [(b"www-authenticate", b'Bearer realm="pillars"')])
                return
            length = headers.get(b"content-length")
            limit = self._body_limit(route)
            if length is not None and (not length.isdigit() or int(length) > limit):
                status = 413 if length.isdigit() else 400
                await _error(send_tracked, status, _too_large(limit) if status == 413
                             else "invalid Content-Length header")
                return
            if length is None and scope["method"] in ("POST", "PUT", "PATCH"):
                # A chunked body: read it here, within the limit, and replay it to the app.
                body = await self._read_limited(receive, limit)
                if body is None:
                    await _error(send_tracked, 413, _too_large(limit))
                    return
                state["bytes"] = len(body)
                receive = _replay(body, receive)
            else:
                state["bytes"] = int(length or 0)
            await self.app(scope, receive, send_tracked)
        except CLIENT_DECODE_ERRORS as e:
            if route is None or state["status"]:
                raise
            await _error(send_tracked, 400, f"malformed request: {type(e).__name__}: {e}")
        finally:
            if route is not None:
                self._record(route, state["status"] or 500, time.perf_counter() - started, state["bytes"])

    def _body_limit(self, route: tuple[str, str] | None) -> int:
        """The body limit of a request: ``max_body_bytes``, and for V1 inference (a JSON body KServe parses
        whole, on the event loop) also the longest JSON any request within ``max_rows`` can need, as V2."""
        if route is not None and route[0] == "v1" and route[1] in self.v1_body_limits:
            return min(self.max_body_bytes, self.v1_body_limits[route[1]])
        return self.max_body_bytes

    async def _read_limited(self, receive: Receive, limit: int) -> bytes | None:
        """The whole request body, or None as soon as it exceeds ``limit``."""
        parts, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(parts)
            parts.append(message.get("body", b""))
            size += len(parts[-1])
            if size > limit:
                return None
            if not message.get("more_body", False):
                return b"".join(parts)

    def _record(self, route: tuple[str, str], status: int, seconds: float, n_bytes: int) -> None:
        protocol, name = route
        model = name if name in self.versions else "unknown"
        version = self.versions.get(name, "")
        metrics.observe_request(model, version, protocol, str(status), seconds)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("request protocol=%s model=%s version=%s status=%d seconds=%.6f body_bytes=%d",
                         protocol, model, version, status, seconds, n_bytes)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()  # the disconnect, when it comes
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _headers(scope: Scope) -> dict[bytes, bytes]:
    return {k.lower(): v for k, v in scope.get("headers", [])}


def _too_large(limit: int) -> str:
    return f"request body is larger than the limit of {limit} bytes"


async def _error(send: Send, status: int, message: str,
                 extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = orjson.dumps({"error": message})
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *(extra_headers or [])]})
    await send({"type": "http.response.body", "body": body})
