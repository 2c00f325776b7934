"""Who may use the console, and proof that a state-changing form came from the console's own page.

- **Access**: on a loopback address no token is needed (only this machine's users reach it) and only
  loopback ``Host`` headers are accepted (no DNS rebinding). Anywhere else a token is required: a
  bearer token (``Authorization: Bearer ...``) or the login form, which sets an ``HttpOnly``,
  ``SameSite=Strict`` cookie holding a keyed digest of the token (never the token itself).
- **CSRF**: every browser gets a random session cookie (``SameSite=Strict``); each form carries
  ``csrf_token`` = HMAC(server key, session), checked on every POST before anything else happens.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from pathlib import Path

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
