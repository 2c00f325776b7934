"""The bridge from ``pillars serve`` to ``python -m pillars.serving``: one function building the argument list."""

from __future__ import annotations

from pathlib import Path


def serve_argv(model_uri: str, http_port: int = 8080, grpc_port: int = 8081, max_batch_size: int | None = None,
               max_latency_ms: float | None = None, auth_token_file: str | Path | None = None,
               model_name: str | None = None, host: str | None = None) -> list[str]:
    """Arguments for :func:`pillars.serving.__main__.main` (KServe's underscore spelling).

    ``pillars serve models:/iris@champion --http-port 9000`` becomes
    ``main(serve_argv("models:/iris@champion", http_port=9000))``. Options left as None keep the
    server's defaults (or their ``PILLARS_SERVING_*`` environment variables); the host defaults to loopback.
    """
    argv = ["--model_uri", model_uri, "--http_port", str(http_port), "--grpc_port", str(grpc_port)]
    for flag, value in (("--max_batch_size", max_batch_size), ("--max_latency_ms", max_latency_ms),
                        ("--auth_token_file", auth_token_file), ("--model_name", model_name), ("--host", host)):
        if value is not None:
            argv += [flag, str(value)]
    return argv
