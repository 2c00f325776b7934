"""KServe's Open Inference Protocol gRPC server, with our servicer and one interceptor (metrics, auth, statuses).

KServe's ``GRPCServer`` fixes its interceptors when it builds the server, so :class:`PillarsGRPCServer`
builds the same server with ours in front (:class:`GuardInterceptor`: request metrics, auth, error
statuses, each method's guarded handler built once), listens on ``--host`` (loopback by default), and
caps message size at the largest request ``--max_rows`` allows, never above the body limit (larger
messages get RESOURCE_EXHAUSTED from gRPC itself, before they are parsed).

:class:`PillarsServicer` differs from KServe's in the same ways as the REST routes: the repository
methods (``RepositoryModelLoad``/``Unload``/``Index``) are UNIMPLEMENTED, ``ModelInfer`` checks the declared
tensors against the model's signature and ``--max_rows`` before decoding them, a request naming another
version than the one served is NOT_FOUND, and readiness is true only while the model is answering.
The same server also serves ``pillars.v1.Feedback`` (:mod:`pillars.serving.protocol.feedback_grpc`) behind
the same interceptor.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from concurrent import futures
from typing import Any

import grpc
from grpc import StatusCode, aio
from google.protobuf.message import DecodeError
from kserve.errors import ModelNotReady
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.infer_type import InferResponse
from kserve.utils.utils import to_headers

from pillars.serving.protocol import codec, fast_path, feedback_grpc
from pillars.serving.monitoring import metrics
from pillars.serving.access.auth import TokenAuth, grpc_method_is_open
from pillars.components.errors import PillarsError
from pillars.serving.errors import NotServed
from pillars.serving.model import served_model

logger = logging.getLogger(__name__)

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


class StatusInterceptor(ExceptionToStatusInterceptor):
    """Any :class:`PillarsError` as its gRPC code (no traceback logged): the one handler of our errors;
    KServe's mapping for the rest (its own ``InvalidInput`` stays INVALID_ARGUMENT).

    Used by :class:`GuardInterceptor` through :meth:`handle_exception` (not installed on the server itself)."""

    async def handle_exception(self, ex: Exception, request_or_iterator: Any, context: aio.ServicerContext,
                               method_name: str) -> None:
        if isinstance(ex, PillarsError):
            await context.abort(StatusCode[ex.grpc_code], str(ex))
        await super().handle_exception(ex, request_or_iterator, context, method_name)


class GuardInterceptor(aio.ServerInterceptor):
    """The one interceptor of the gRPC server: request metrics, auth and error statuses, in that order.

    Each call of a known method goes through, outermost first:

    1. ``ModelInfer`` only: counted and timed by model, version and status code (one debug line each);
    2. auth: methods other than the health ones need ``authorization: Bearer <token>`` metadata, else
       UNAUTHENTICATED;
    3. errors: what the method raises becomes its gRPC status (:class:`StatusInterceptor`).

    The guarded handler of a method is built once, on its first call, and reused (gRPC asks every
    interceptor for the handler of every call: three ``grpc_interceptor`` wrappers rebuilt three handlers
    and three closures per call). Unknown methods are not guarded (gRPC answers UNIMPLEMENTED) and not
    remembered. Every method served here is unary-unary.

    Args:
        versions: the served version of each model name (updated by hot reloads).
        auth: the token check, or None for no auth.
    """

    def __init__(self, versions: dict[str, str], auth: TokenAuth | None) -> None:
        self.versions = versions
        self.auth = auth
        self.status = StatusInterceptor()
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
                                handler_call_details: grpc.HandlerCallDetails) -> Any:
        method_name = handler_call_details.method
        handler = self._handlers.get(method_name)
        if handler is not None:
            return handler
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler  # unknown (UNIMPLEMENTED); no streaming method is served
        guarded = grpc.unary_unary_rpc_method_handler(self._guard(handler.unary_unary, method_name),
                                                      request_deserializer=handler.request_deserializer,
                                                      response_serializer=handler.response_serializer)
        self._handlers[method_name] = guarded
        return guarded

    def _guard(self, method: Callable[[Any, Any], Awaitable[Any]], method_name: str) -> Callable[..., Any]:
        checked = self.auth is not None and not grpc_method_is_open(method_name)
        auth, handle_exception = self.auth, self.status.handle_exception

        async def guarded(request: Any, context: aio.ServicerContext) -> Any:
            if checked and not auth.accepts(_authorization(context)):  # type: ignore[union-attr]
                await context.abort(StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")
            try:
                return await method(request, context)
            except Exception as ex:
                await handle_exception(ex, request, context, method_name)

        if method_name != MODEL_INFER:
            return guarded
        versions = self.versions

        async def measured(request: Any, context: aio.ServicerContext) -> Any:
            started = time.perf_counter()
            status = "OK"
            try:
                return await guarded(request, context)
            except BaseException:
                code = context.code()
                status = code.name if isinstance(code, StatusCode) else "UNKNOWN"
                raise
            finally:
                name = request.model_name
                model = name if name in versions else "unknown"
                version = versions.get(name, "")
                seconds = time.perf_counter() - started
                metrics.observe_request(model, version, "grpc", status, seconds)
                if logger.isEnabledFor(logging.DEBUG):
                    logger.debug("request protocol=grpc model=%s version=%s status=%s seconds=%.6f",
                                 model, version, status, seconds)

        return measured


def _authorization(context: aio.ServicerContext) -> str | None:
    """The call's ``authorization`` metadata (the last one given, as a ``dict`` of the pairs would keep)."""
    value = None
    for key, item in context.invocation_metadata() or ():
        if key == "authorization":
            value = item
    return value


class MalformedMessageFilter(logging.Filter):
    """gRPC logs a full traceback for every request it cannot deserialize (before any interceptor, so before
    auth: anyone can fill the log). This filter, on gRPC's own logger, turns each into one warning line."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, DecodeError):
            return True
        logger.warning("malformed gRPC message refused (%s)", str(error).splitlines()[0] if str(error) else
                       type(error).__name__)
        return False


GRPC_LOGGER = "grpc._cython.cygrpc"
"""The logger gRPC's asyncio server reports a request it could not deserialize on."""


class PillarsServicer(InferenceServicer):
    """KServe's servicer without the repository methods, with edge checks, versions and real readiness."""

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        models = self._data_plane.model_registry.get_models().values()
        return pb.ServerReadyResponse(ready=bool(models) and all([await m.healthy() for m in models]))

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        model = served_model(self._data_plane, request.name, request.version or None)
        return pb.ModelReadyResponse(ready=await model.healthy())

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        model = served_model(self._data_plane, request.name, request.version or None)
        metadata = await self._data_plane.model_metadata(model_name=model.name)
        return pb.ModelMetadataResponse(name=metadata["name"], versions=[model.version],
                                        platform=metadata["platform"],
                                        inputs=[codec.grpc_tensor_metadata(t) for t in metadata["inputs"]],
                                        outputs=[codec.grpc_tensor_metadata(t) for t in metadata["outputs"]])

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        model = served_model(self._data_plane, request.model_name, request.model_version or None)
        if not await model.healthy():
            raise ModelNotReady(model.name)
        batch = codec.decode_grpc(request, model.signature, model.settings.max_rows)
        if model.enable_latency_logging:  # KServe's Model.__call__ logs the timings
            response, _ = await self._data_plane.infer(model_name=model.name, request=batch,
                                                       headers=to_headers(context))
            assert isinstance(response, InferResponse)
            return response.to_grpc()
        outputs, batch = await fast_path.infer(model, batch)  # without DataPlane.infer and Model.__call__
        post = fast_path.kserve_timers(model.name)[2]
        started = time.perf_counter()
        try:
            outputs, batch = model.prepare_response((outputs, batch))
            return fast_path.encode_grpc(batch, outputs, model.signature, model.name, model.version)
        finally:
            post.observe(time.perf_counter() - started)

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        raise NotServed("the model repository extension (load, unload) is not served")

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        raise NotServed("the model repository extension (load, unload) is not served")


class PillarsGRPCServer(GRPCServer):
    """KServe's gRPC server with our servicer, auth, request metrics, a message-size limit and a host."""

    def __init__(self, *args: Any, host: str, versions: dict[str, str], max_message_bytes: int,
                 auth: TokenAuth | None = None, connection_options: list[tuple[str, int]] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._connection_options = connection_options or []
        self._host = host
        self._versions = versions
        self._max_message_bytes = max_message_bytes
        self._auth = auth

    async def start(self, max_workers: int) -> None:
        grpc_log = logging.getLogger(GRPC_LOGGER)
        if not any(isinstance(f, MalformedMessageFilter) for f in grpc_log.filters):
            grpc_log.addFilter(MalformedMessageFilter())
        self._server = aio.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            interceptors=[GuardInterceptor(self._versions, self._auth)],
            options=[
                ("grpc.max_send_message_length", self._kwargs.get("grpc_max_send_message_length", -1)),
                ("grpc.max_receive_message_length", self._max_message_bytes),
                *self._connection_options,
            ],
        )
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            PillarsServicer(self._data_plane, None), self._server)
        feedback_grpc.add_to_server(feedback_grpc.FeedbackServicer(self._data_plane), self._server)
        address = f"[{self._host}]:{self._port}" if ":" in self._host else f"{self._host}:{self._port}"
        self._server.add_insecure_port(address)
        logger.info("gRPC server listening on %s", address)
        await self._server.start()
        await self._server.wait_for_termination()
