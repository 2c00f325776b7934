"""Who may use the console, and proof that a state-changing form came from the console's own page.

- **Access**: on a loopback address no token is needed (only this machine's users reach it) and only
  loopback ``Host`` headers are accepted (no DNS rebinding). Anywhere else a token is required: a
  bearer token (``Authorization: Bearer ...``) or the login form, which sets an ``HttpOnly``,
  ``SameSite=Strict`` cookie holding a keyed digest of the token (never the token itself).
- **CSRF**: every browser gets a random session cookie (``SameSite=Strict``); each form carries
  ``csrf_token`` = HMAC(server key, session), checked on every POST before anything else happens.
- **Limits**: wrong tokens are rate-limited per client address (:class:`LoginLimiter`); request bodies
  are counted as they are read, whatever ``Content-Length`` says (:class:`BodyLimit`).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pillars.components.errors import ConfigError

SESSION_COOKIE = "pillars_console_session"
AUTH_COOKIE = "pillars_console_auth"
CSRF_FIELD = "csrf_token"
MIN_TOKEN_CHARS = 16


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is a loopback interface."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_token(path: Path | None) -> str | None:
    """The token in ``path`` (stripped), None when no file is given.

    Raises:
        ConfigError: the file cannot be read, or holds a token shorter than :data:`MIN_TOKEN_CHARS`.
    """
    if path is None:
        return None
    try:
        token = Path(path).read_text().strip()
    except OSError as e:
        raise ConfigError(f"cannot read the console token file {path}: {e.strerror}") from e
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(f"the console token in {path} is shorter than {MIN_TOKEN_CHARS} characters")
    return token


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen off loopback without a token.

    Raises:
        ConfigError: ``host`` is not loopback and there is no token.
    """
    if token is None and not is_loopback(host):
        raise ConfigError(f"refusing to serve the console on {host} without a token: "
                          "pass --token-file (or bind 127.0.0.1)")


class Guard:
    """The server's secret key and its token; issues and checks sessions, auth cookies and CSRF tokens."""

    def __init__(self, token: str | None, loopback: bool) -> None:
        self.token = token
        self.loopback = loopback
        self._key = secrets.token_bytes(32)

    @property
    def auth_required(self) -> bool:
        return self.token is not None

    def _digest(self, purpose: str, value: str) -> str:
        return hmac.new(self._key, f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()

    def new_session(self) -> str:
        return secrets.token_urlsafe(24)

    def csrf_token(self, session: str) -> str:
        return self._digest("csrf", session)

    def check_csrf(self, session: str | None, submitted: str | None) -> bool:
        return bool(session) and bool(submitted) and hmac.compare_digest(self.csrf_token(session), str(submitted))

    def token_matches(self, candidate: str | None) -> bool:
        return self.token is not None and candidate is not None and hmac.compare_digest(
            hashlib.sha256(candidate.encode()).digest(), hashlib.sha256(self.token.encode()).digest())

    def auth_cookie(self) -> str:
        """The login cookie's value: a keyed digest of the token (changes when the server restarts)."""
        return self._digest("auth", self.token or "")

    def authenticated(self, authorization: str | None, cookie: str | None) -> bool:
        """No token configured, a matching bearer token, or a valid login cookie."""
        if not self.auth_required:
            return True
        scheme, _, value = (authorization or "").partition(" ")
        if scheme.lower() == "bearer" and self.token_matches(value.strip()):
            return True
        return cookie is not None and hmac.compare_digest(cookie, self.auth_cookie())


class LoginLimiter:
    """Wrong tokens per client address: after ``attempts`` failures within ``window_s`` seconds, the address
    is refused (429) until its oldest failure leaves the window.

    Memory is bounded: at most ``max_clients`` addresses are remembered (the least recently failing one is
    forgotten first), each with at most ``attempts`` times. IPv6 clients count per /64 (one host usually
    holds a whole /64). Behind a proxy every client shares the proxy's address: the console binds
    ``proxy_headers=False`` on purpose, so a forged ``X-Forwarded-For`` cannot buy fresh attempts.
    """

    def __init__(self, attempts: int, window_s: float, max_clients: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.attempts = attempts
        self.window_s = window_s
        self.max_clients = max_clients
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(address: str | None) -> str:
        """The counted unit of ``address``: itself, or its /64 network for IPv6."""
        try:
            ip = ipaddress.ip_address(address or "")
        except ValueError:
            return address or "-"
        if isinstance(ip, ipaddress.IPv6Address):
            if ip.ipv4_mapped is not None:
                return str(ip.ipv4_mapped)
            return str(ipaddress.ip_network(f"{ip}/64", strict=False))
        return str(ip)

    def retry_after(self, address: str | None) -> int:
        """Seconds until ``address`` may try a token again; 0 when it may now."""
        with self._lock:
            times = self._failures.get(self.key(address))
            if not times or len(times) < self.attempts:
                return 0
            wait = times[0] + self.window_s - self._clock()
            return math.ceil(wait) if wait > 0 else 0

    def failed(self, address: str | None) -> None:
        """Count a wrong token from ``address``."""
        key = self.key(address)
        with self._lock:
            times = self._failures.pop(key, None) or deque(maxlen=self.attempts)
            times.append(self._clock())
            self._failures[key] = times  # most recent last
            while len(self._failures) > self.max_clients:
                self._failures.popitem(last=False)

    def succeeded(self, address: str | None) -> None:
        """A right token: the address's failures are forgotten."""
        with self._lock:
            self._failures.pop(self.key(address), None)

    def __len__(self) -> int:
        return len(self._failures)


class BodyTooLarge(Exception):
    """A request body passed the console's limit while it was being read."""


class BodyLimit:
    """ASGI middleware: a request body may hold at most ``max_bytes``, counted as it is read.

    A ``Content-Length`` over the limit is answered 413 before anything is read; otherwise every chunk
    the app receives is counted (chunked uploads declare no length), and the first one past the limit
    ends the request with 413 (``Connection: close``) before the app buffers more.
    """

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                       send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(send)
            return
        received = 0
        started = False

        async def counted_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def watched_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except BodyTooLarge:
            if not started:
                await self._too_large(send)

    async def _too_large(self, send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        body = f"the request body is larger than {self.max_bytes} bytes\n".encode()
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
