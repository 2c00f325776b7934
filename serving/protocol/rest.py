"""The REST app: KServe's V1 routes, our V2 routes and ``/metrics``, served by uvicorn on ``--host``.

Compared with KServe's own REST server:

- no model-repository extension (``/v2/repository/...`` load, unload, index): one request must not be
  able to take the model down, and nothing administrative is reachable; those paths are 404;
- V2 inference decodes the body itself (:mod:`pillars.serving.protocol.codec`): the declared names, shapes,
  datatypes and row counts are checked against the model's signature before any tensor data is decoded,
  binary tensors are viewed with numpy, and a body without ``inference-header-content-length`` is JSON whatever its
  ``Content-Type`` (Triton's rule);
- a request naming a version (``/v2/models/NAME/versions/N/...``) is answered for the registry version
  served and is 404 for any other (KServe answers 501);
- readiness (``/v2/health/ready``, ``/v2/models/NAME/ready``) is true only while the model is loaded and
  its batcher answering.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import fastapi
import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER
from kserve.errors import ModelNotReady, ServerNotReady
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.rest.server import RESTServer
from prometheus_client import exposition
from timing_asgi import TimingMiddleware
from kserve.protocol.rest.v1_endpoints import register_v1_endpoints
from kserve.protocol.rest.v2_endpoints import V2Endpoints

from pillars.components.errors import PillarsError
from pillars.serving.protocol import codec
from pillars.serving.errors import Overloaded
from pillars.serving.protocol.feedback import FeedbackRoutes
from pillars.serving.model import PillarsModel, served_model
from pillars.serving.monitoring import multiprocess

logger = logging.getLogger(__name__)

_TENSOR = {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
    "name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer"}},
    "datatype": {"type": "string"}, "parameters": {"type": "object"}, "data": {"type": "array"}}}
INFER_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"}, "parameters": {"type": "object"},
        "inputs": {"type": "array", "items": _TENSOR},
        "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string"}, "parameters": {"type": "object"}}}}}}
"""The Open Inference Protocol's inference request, for the OpenAPI document (the body is parsed by
:mod:`pillars.serving.protocol.codec`, not by FastAPI, so it can be checked before its tensors are decoded)."""


async def serving_error_handler(_: Request, exc: Exception) -> JSONResponse:
    """Any :class:`PillarsError` (bad input, too many rows, overloaded ...) as its HTTP status and
    ``{"error": message}`` (no traceback logged): the one handler of our errors."""
    assert isinstance(exc, PillarsError)
    headers = {"retry-after": "1"} if isinstance(exc, Overloaded) else None
    return JSONResponse(status_code=exc.status, content={"error": str(exc)}, headers=headers)


async def metrics_handler(request: Request) -> Response:
    """``/metrics``: this process's registry, or every worker's metrics merged
    (:func:`pillars.serving.monitoring.multiprocess.scrape_registry`)."""
    encoder, content_type = exposition.choose_encoder(request.headers.get("accept"))
    return Response(content=encoder(multiprocess.scrape_registry()), headers={"content-type": content_type})


class V2Routes:
    """The Open Inference Protocol REST routes, on top of KServe's data plane."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane
        self.kserve = V2Endpoints(dataplane)

    async def server_ready(self) -> dict[str, bool]:
        """200 while every served model is loaded and answering, else 503."""
        models = self.dataplane.model_registry.get_models().values()
        if not models or not all([isinstance(m, PillarsModel) and await m.healthy() for m in models]):
            raise ServerNotReady()
        return {"ready": True}

    async def model_ready(self, model_name: str, model_version: str | None = None) -> dict[str, Any]:
        if not await served_model(self.dataplane, model_name, model_version).healthy():
            raise ModelNotReady(model_name)
        return {"name": model_name, "ready": True}

    async def model_metadata(self, model_name: str, model_version: str | None = None) -> dict[str, Any]:
        model = served_model(self.dataplane, model_name, model_version)
        return await self.dataplane.model_metadata(model.name) | {"versions": [model.version]}

    async def infer(self, request: Request, model_name: str, model_version: str | None = None) -> Response:
        """Parse the body at the edge (its header checked before its tensors), run it, answer JSON or the
        binary extension."""
        model = served_model(self.dataplane, model_name, model_version)
        if not await model.healthy():
            raise ModelNotReady(model_name)
        signature, max_rows = model.signature, model.settings.max_rows
        json_length = codec.json_part_length(request.headers.get(INFERENCE_CONTENT_LENGTH_HEADER),
                                             request.headers.get("content-length"), signature, max_rows)
        binary: bytes | memoryview = b""
        if json_length is None:  # all JSON, whatever the Content-Type says (Triton's rule)
            header = codec.check_v2_header(codec.parse_json(await request.body(), signature, max_rows), signature,
                                           max_rows)
        else:
            header, binary = await codec.read_binary_request(request.stream(), json_length, signature, max_rows)
        batch = codec.decode_v2_data(header, binary)
        headers = dict(request.headers)
        result, response_headers = await self.dataplane.infer(model_name, batch, headers)
        body, encoded_headers = self.dataplane.encode(model_name, result, headers, req_attributes={})
        response_headers = {**response_headers, **encoded_headers}
        response_headers.pop("content-length", None)
        if isinstance(body, bytes):
            response_headers.pop("content-type", None)
            return Response(content=body, headers=response_headers, media_type="application/octet-stream")
        response_headers.pop("content-type", None)
        return Response(content=orjson.dumps(body), headers=response_headers, media_type="application/json")

    def router(self) -> APIRouter:
        router = APIRouter(prefix="/v2", tags=["V2"])
        router.add_api_route("", self.kserve.metadata, methods=["GET"])
        router.add_api_route("/health/live", self.kserve.live, methods=["GET"])
        router.add_api_route("/health/ready", self.server_ready, methods=["GET"])
        router.add_api_route("/models", self.kserve.models, methods=["GET"])
        infer_body = {"requestBody": {"required": True,
                                      "content": {"application/json": {"schema": INFER_REQUEST_SCHEMA}}}}
        for prefix in ("/models/{model_name}", "/models/{model_name}/versions/{model_version}"):
            router.add_api_route(prefix, self.model_metadata, methods=["GET"])
            router.add_api_route(f"{prefix}/ready", self.model_ready, methods=["GET"])
            router.add_api_route(f"{prefix}/infer", self.infer, methods=["POST"], response_model=None,
                                 openapi_extra=infer_body)
        return router


class PillarsRESTServer(RESTServer):
    """KServe's REST server with our routes, bound to ``host``.

    Args:
        host: the address to listen on (``127.0.0.1`` by default, ``0.0.0.0`` in the container image).
        protocol: uvicorn's HTTP protocol class to use (one that bounds connections), else uvicorn's choice.
        backlog: the listen backlog (also the most connections asyncio accepts in one go).
        reuse_port: bind with ``SO_REUSEPORT``, sharing the port with the other workers of ``--workers N``.
        **kwargs: passed to :class:`kserve.protocol.rest.server.RESTServer`.
    """

    def __init__(self, *args: Any, host: str, protocol: type[asyncio.Protocol] | None = None,
                 backlog: int | None = None, reuse_port: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reuse_port = reuse_port
        self.config.host = host
        if protocol is not None:  # bounded connections (pillars.serving.access.connections)
            self.config.http = protocol
        if backlog is not None:
            self.config.backlog = backlog

    async def start(self) -> None:
        """Serve until stopped; with ``reuse_port`` on a socket bound here with ``SO_REUSEPORT`` (uvicorn binds
        without it)."""
        if not self._reuse_port:
            await super().start()
            return
        self.create_application()
        sock = socket.socket(socket.AF_INET6 if ":" in self.config.host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((self.config.host, self.config.port))
        await self._server.serve(sockets=[sock])

    def _register_endpoints(self, app: fastapi.FastAPI) -> None:
        root = APIRouter()
        root.add_api_route("/", self.dataplane.live, methods=["GET"])
        root.add_api_route("/metrics", metrics_handler, methods=["GET"])
        app.include_router(root)
        register_v1_endpoints(app, self.dataplane, None)
        app.include_router(V2Routes(self.dataplane).router())
        app.include_router(FeedbackRoutes(self.dataplane).router())

    def _add_middlewares(self, app: fastapi.FastAPI) -> None:
        """KServe's, without its timing middleware unless ``kserve.trace`` logs (it reads the CPU clock twice
        per request only to log the timings at DEBUG)."""
        if logging.getLogger("kserve.trace").isEnabledFor(logging.INFO):
            super()._add_middlewares(app)
            return
        access_log_format, self.access_log_format = self.access_log_format, None
        try:
            super()._add_middlewares(app)  # with no access log format: only the timing middleware
        finally:
            self.access_log_format = access_log_format
        app.user_middleware = [m for m in app.user_middleware if m.cls is not TimingMiddleware]
        if access_log_format:
            from asgi_logger import AccessLoggerMiddleware

            logging.getLogger("uvicorn.access").handlers = []
            app.add_middleware(AccessLoggerMiddleware, format=access_log_format)
            logging.getLogger("access").propagate = False

    def _add_exception_handlers(self, app: fastapi.FastAPI) -> None:
        super()._add_exception_handlers(app)
        app.add_exception_handler(PillarsError, serving_error_handler)

