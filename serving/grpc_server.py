"""KServe's Open Inference Protocol gRPC server, with our auth and request-metrics interceptors.

KServe's ``GRPCServer`` fixes its interceptors when it builds the server, so :class:`PillarsGRPCServer`
builds the same server (same servicer, KServe's exception-to-status mapping) with ours in front, and
caps message size at the configured body limit (larger messages get RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

from grpc import StatusCode, aio
from grpc_interceptor import AsyncServerInterceptor
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.grpc.servicer import InferenceServicer

from pillars.serving import metrics
from pillars.serving.auth import TokenAuth, grpc_method_is_open

logger = logging.getLogger("pillars.serving")

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


class AuthInterceptor(AsyncServerInterceptor):
    """Rejects calls other than the health ones without ``authorization: Bearer <token>`` metadata."""

    def __init__(self, auth: TokenAuth) -> None:
        self.auth = auth

    async def intercept(self, method: Callable, request: Any, context: aio.ServicerContext,
                        method_name: str) -> Any:
        if not grpc_method_is_open(method_name):
            metadata = dict(context.invocation_metadata() or ())
            if not self.auth.accepts(metadata.get("authorization")):
                await context.abort(StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")
        return await method(request, context)


class MetricsInterceptor(AsyncServerInterceptor):
    """Counts and times ModelInfer calls by model, version and status code; one debug line each."""

    def __init__(self, versions: dict[str, str]) -> None:
        self.versions = versions

    async def intercept(self, method: Callable, request: Any, context: aio.ServicerContext,
                        method_name: str) -> Any:
        if method_name != MODEL_INFER:
            return await method(request, context)
        started = time.perf_counter()
        status = "OK"
        try:
            return await method(request, context)
        except BaseException:
            code = context.code()
            status = code.name if isinstance(code, StatusCode) else "UNKNOWN"
            raise
        finally:
            name = getattr(request, "model_name", "")
            model = name if name in self.versions else "unknown"
            version = self.versions.get(name, "")
            seconds = time.perf_counter() - started
            metrics.REQUESTS.labels(model, version, "grpc", status).inc()
            metrics.REQUEST_SECONDS.labels(model, "grpc").observe(seconds)
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("request protocol=grpc model=%s version=%s status=%s seconds=%.6f",
                             model, version, status, seconds)


class PillarsGRPCServer(GRPCServer):
    """KServe's gRPC server with auth, request metrics and a message-size limit."""

    def __init__(self, *args: Any, versions: dict[str, str], max_message_bytes: int,
                 auth: TokenAuth | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._versions = versions
        self._max_message_bytes = max_message_bytes
        self._auth = auth

    async def start(self, max_workers: int) -> None:
        interceptors: list[aio.ServerInterceptor] = [MetricsInterceptor(self._versions)]
        if self._auth is not None:
            interceptors.append(AuthInterceptor(self._auth))
        interceptors.append(ExceptionToStatusInterceptor())
        self._server = aio.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            interceptors=interceptors,
            options=[
                ("grpc.max_send_message_length", self._kwargs.get("grpc_max_send_message_length", -1)),
                ("grpc.max_receive_message_length", self._max_message_bytes),
            ],
        )
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(self._data_plane, self._model_repository_extension), self._server)
        self._server.add_insecure_port(f"[::]:{self._port}")
        logger.info("gRPC server listening on port %d", self._port)
        await self._server.start()
        await self._server.wait_for_termination()
