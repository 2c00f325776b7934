"""Who may talk to the REST server from a browser: the ``Host`` a request names, and its body's type.

With auth off, a server on a laptop would otherwise answer any web page the user opens: a page can POST a
``text/plain`` "simple" request (no CORS preflight) that the server reads as JSON, or reach a loopback port
through a DNS name it controls (DNS rebinding), and skew the drift window with its inferences. So:

- the ``Host`` header must name an allowed host: by default, when the server listens on loopback, only
  the loopback names (``localhost``, ``127.0.0.1``, ``::1``); bound elsewhere (``0.0.0.0`` in a pod, where
  probes and Services use the pod IP), any host, unless ``allowed_hosts`` lists them (``*``: any);
- a request that carries a browser's ``Origin`` must send its body as JSON (``application/json``) to the
  JSON routes, or as ``application/octet-stream`` with the binary extension's header length: both need a
  CORS preflight, which this server never grants. Clients that are not browsers send no ``Origin`` and
  keep Triton's rule (a body without the binary header is JSON whatever its ``Content-Type``).
"""

from __future__ import annotations

from collections.abc import Sequence

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
LOOPBACK_ADDRESSES = frozenset({"127.0.0.1", "::1", "localhost"})
ANY = "*"


def allowed_hosts(configured: Sequence[str], bind_host: str) -> frozenset[str] | None:
    """The host names a request may name (None: any).

    Args:
        configured: ``allowed_hosts`` from the settings (empty: the default for ``bind_host``).
        bind_host: the address the server listens on.
    """
    names = [h.strip().lower() for h in configured if h.strip()]
    if ANY in names:
        return None
    if names:
        return frozenset(names)
    bind = bind_host.strip("[]").lower()
    return LOOPBACK_NAMES if bind in LOOPBACK_ADDRESSES or bind.startswith("127.") else None


def host_name(header: bytes | None) -> str:
    """The host of a ``Host`` header, without its port (``[::1]:8080`` -> ``::1``), lower case."""
    value = (header or b"").decode("latin-1").strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def browser_body_refused(headers: dict[bytes, bytes]) -> bool:
    """Whether a request from a browser page (it carries ``Origin``) sends its body as anything but JSON
    or the binary extension, i.e. as a "simple" request a page may send without the server's consent."""
    if b"origin" not in headers:
        return False
    content_type = headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
    if b"inference-header-content-length" in headers:
        return content_type != b"application/octet-stream"
    return not (content_type == b"application/json" or content_type.endswith(b"+json"))
