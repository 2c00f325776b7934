"""Optional bearer-token auth: which calls need a token, and checking one in constant time.

The token comes from a file (``--auth_token_file``, e.g. a mounted Secret) or the
``PILLARS_SERVING_AUTH_TOKEN`` environment variable; it is never logged. Health calls stay open
for probes; inference, metadata and ``/metrics`` need ``Authorization: Bearer <token>`` (``/metrics``
can be opened for a scraper that cannot carry one, with ``--metrics_open``).
"""

from __future__ import annotations

import hmac
import re
from pathlib import Path

from pillars.components.errors import ConfigError

OPEN_HTTP_PATHS = re.compile(
    r"^/($|v2/health/(live|ready)$|v2/models/[^/]+(/versions/[^/]+)?/ready$|v1/models/[^/:]+$)"
)
"""REST paths open without a token: liveness, readiness (server and model), V1 model health."""
METRICS_PATH = "/metrics"

OPEN_GRPC_METHODS = frozenset({"ServerLive", "ServerReady", "ModelReady"})
"""gRPC methods of ``inference.GRPCInferenceService`` open without a token."""


class TokenAuth:
    """Checks ``Authorization`` header values against the configured token."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ConfigError("the auth token is empty")
        self._expected = f"Bearer {token}".encode()

    def __repr__(self) -> str:
        return "TokenAuth(<redacted>)"

    def accepts(self, authorization: str | bytes | None) -> bool:
        """Whether an ``Authorization`` header value carries the token (constant-time compare)."""
        if authorization is None:
            return False
        value = authorization.encode("latin-1", "replace") if isinstance(authorization, str) else authorization
        return hmac.compare_digest(value.strip(), self._expected)


def load_auth(token_file: str | Path | None, token: str = "") -> TokenAuth | None:
    """The configured auth, or None when no token is set (auth off).

    Raises:
        ConfigError: the token file is missing, unreadable or empty.
    """
    if token_file:
        path = Path(token_file)
        try:
            token = path.read_text().strip()
        except OSError as e:
            raise ConfigError(f"cannot read the auth token file {path}: {e.strerror}") from e
        if not token:
            raise ConfigError(f"the auth token file {path} is empty")
    return TokenAuth(token.strip()) if token.strip() else None


def http_path_is_open(path: str, metrics_open: bool = False) -> bool:
    """Whether a REST path is served without a token (``/metrics`` only when ``metrics_open``)."""
    return OPEN_HTTP_PATHS.match(path) is not None or (metrics_open and path == METRICS_PATH)


def grpc_method_is_open(full_method: str) -> bool:
    """Whether a gRPC method (``/inference.GRPCInferenceService/ServerLive``) is served without a token."""
    return full_method.rsplit("/", 1)[-1] in OPEN_GRPC_METHODS
