"""V2 inference (REST and gRPC) without KServe's per-request machinery: the same checks, answers and metrics.

KServe runs each inference through FastAPI's routing and parameter resolution, a timing middleware that
reads the CPU clock twice per request (its output is only logged at DEBUG), ``DataPlane.infer`` and
``Model.__call__`` (three Prometheus label look-ups, ``inspect`` calls, wall-clock arithmetic), then builds an
``InferResponse`` that is turned into a dict and dumped again. Under load that was most of a one-row
request's server CPU (docs/benchmarks.md, "Where a request's CPU goes"). Here:

- :class:`FastV2App`, an ASGI layer inside :class:`pillars.serving.access.middleware.ServingMiddleware` (so the
  host, origin, auth, body-size checks and the request metrics apply unchanged), answers
  ``POST /v2/models/NAME[/versions/V]/infer`` itself, JSON bodies and the binary tensor extension alike. The
  body goes through the same :mod:`pillars.serving.protocol.codec` checks in the same order as
  :meth:`pillars.serving.protocol.rest.V2Routes.infer` (the lengths before the body is read; the binary
  extension's JSON header, by :func:`codec.read_binary_request`, before its tensors are read, which are then
  viewed in the body with ``np.frombuffer``), then :func:`infer`. CloudEvents, latency logging on and
  every other path go on to the FastAPI app as before.
- :func:`infer` runs the model's ``preprocess`` (the contract check) and ``predict`` (the micro-batcher)
  and observes KServe's own ``request_preprocess_seconds`` / ``request_predict_seconds`` (and
  ``request_postprocess_seconds`` around the encoding) as ``Model.__call__`` does, through cached series.
  The result then goes through :meth:`PillarsModel.prepare_response`, as in ``postprocess``: per-response
  bookkeeping written there holds on every path.
- :func:`encode_rest` writes a V2 REST response in one pass, byte for byte what KServe's
  ``InferResponse.to_rest`` gives: JSON in one ``orjson`` call (numbers through ``tolist``, same keys in
  the same order), or the binary extension (outputs asked for in binary as their bytes after the JSON
  part); ``FP16`` outputs are still encoded by KServe's ``InferResponse``. :func:`encode_grpc` builds the
  gRPC response in the same way.

Errors are answered by the FastAPI app's own exception handlers (same status and body as the routed
path); an error with no handler of its own propagates, as it would from a route (the middleware makes a
client's decode error 400, Starlette a server error 500).
"""

from __future__ import annotations

import inspect
import re
import struct
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import numpy as np
import orjson
from kserve.errors import ModelNotReady
from kserve.metrics import POST_HIST_TIME, PRE_HIST_TIME, PREDICT_HIST_TIME
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from pillars.components.task.contract import Signature, numpy_dtype
from pillars.serving.model import PillarsModel, served_model
from pillars.serving.protocol import codec

V2_INFER = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")

_timers: dict[str, tuple[Any, Any, Any]] = {}
_LENGTH = struct.Struct("<I")
"""A ``BYTES`` element's length prefix (4 bytes, little-endian)."""


def kserve_timers(model_name: str) -> tuple[Any, Any, Any]:
    """KServe's preprocess, predict and postprocess histograms of ``model_name`` (series cached)."""
    timers = _timers.get(model_name)
    if timers is None:
        timers = _timers[model_name] = tuple(h.labels(model_name=model_name) for h in  # type: ignore[assignment]
                                             (PRE_HIST_TIME, PREDICT_HIST_TIME, POST_HIST_TIME))
    return timers


async def infer(model: PillarsModel, batch: codec.Batch) -> tuple[dict[str, np.ndarray], codec.Batch]:
    """``preprocess`` then ``predict``, timed into KServe's histograms as ``Model.__call__`` times them.

    Raises:
        whatever ``preprocess`` and ``predict`` raise (bad input, overloaded, model failure).
    """
    pre, predict, _ = kserve_timers(model.name)
    started = time.perf_counter()
    try:
        batch = await model.preprocess(batch)
    finally:
        pre.observe(time.perf_counter() - started)
    model.validate(batch)
    started = time.perf_counter()
    try:
        return await model.predict(batch)
    finally:
        predict.observe(time.perf_counter() - started)


def _plain(output: np.ndarray, datatype: str) -> tuple[list[int], list[Any]]:
    """An output's shape and flat values as KServe's ``InferOutput`` gives them (strings decoded as UTF-8,
    invalid bytes replaced; numbers in the datatype's dtype, through ``tolist``)."""
    if datatype == "BYTES":
        data = np.asarray(output)
        return list(data.shape), codec.plain_strings(data)
    data = np.ascontiguousarray(output, dtype=numpy_dtype(datatype))
    return list(data.shape), data.reshape(-1).tolist()


def encode_rest(batch: codec.Batch, outputs: Mapping[str, np.ndarray], signature: Signature, model_name: str,
                version: str) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The V2 REST response body and its headers, byte for byte what KServe's ``InferResponse.to_rest`` and
    ``DataPlane.encode`` give, in one pass: JSON (one ``orjson`` call, numbers through ``tolist``), or the
    binary extension (the JSON part, then each binary output's bytes; ``inference-header-content-length``).

    An output is binary as KServe decides: when the request listed its outputs, by that output's
    ``binary_data`` parameter; else by the request's ``binary_data_output``. Numbers are the output's bytes in
    its datatype (``tobytes``: no JSON, no per-value Python objects), strings 4-byte little-endian length
    prefixed UTF-8. ``FP16`` outputs go through KServe's ``InferResponse`` (which refuses them in JSON).
    ``batch.request_id`` is the one :meth:`PillarsModel.prepare_response` set (every answered request has one).
    """
    specs = {s.name: s for s in signature.outputs}
    if any(specs[name].datatype == "FP16" for name in batch.outputs):
        return _kserve_rest(batch, outputs, signature, model_name, version)
    requested = batch.output_parameters
    tensors, raw, binary = [], [], False
    for name in batch.outputs:
        datatype = specs[name].datatype
        as_binary = (requested.get(name) or {}).get("binary_data") if requested else batch.binary_outputs
        if as_binary:
            data = _raw(outputs[name], datatype)
            raw.append(data)
            binary = True
            tensors.append({"name": name, "shape": list(np.shape(outputs[name])), "datatype": datatype,
                            "parameters": {"binary_data_size": len(data)}})
        else:
            shape, values = _plain(outputs[name], datatype)
            tensors.append({"name": name, "shape": shape, "datatype": datatype, "data": values})
    body = orjson.dumps({"id": batch.request_id, "model_name": model_name, "model_version": version,
                         "outputs": tensors})
    if not binary:
        return body, [(b"content-type", b"application/json")]
    return b"".join([body, *raw]), [(b"content-type", b"application/octet-stream"),
                                    (b"inference-header-content-length", str(len(body)).encode())]


def _raw(output: np.ndarray, datatype: str) -> bytes:
    """One output's bytes in the binary extension (and raw gRPC contents)."""
    if datatype == "BYTES":
        pack, strings = _LENGTH.pack, codec.plain_strings(np.asarray(output))
        return b"".join([pack(len(v)) + v for v in [s.encode("utf-8") for s in strings]])
    return np.ascontiguousarray(output, dtype=numpy_dtype(datatype)).tobytes()


def _kserve_rest(batch: codec.Batch, outputs: Mapping[str, np.ndarray], signature: Signature, model_name: str,
                 version: str) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    encoded, json_size = codec.encode_v2(batch, dict(outputs), signature, model_name, version).to_rest()
    if isinstance(encoded, bytes):
        return encoded, [(b"content-type", b"application/octet-stream"),
                         (b"inference-header-content-length", str(json_size).encode())]
    return orjson.dumps(encoded), [(b"content-type", b"application/json")]


def encode_grpc(batch: codec.Batch, outputs: Mapping[str, np.ndarray], signature: Signature, model_name: str,
                version: str) -> pb.ModelInferResponse:
    """The gRPC response as ``InferResponse.to_grpc`` builds it: typed ``contents``, or (when the inputs came
    raw) ``raw_output_contents`` with each output's ``binary_data_size``; ``FP16`` outputs through KServe's
    ``InferResponse``. ``batch.request_id`` is the one :meth:`PillarsModel.prepare_response` set.

    The message is filled in place (``outputs.add()``, repeated fields extended): building each output
    tensor and its contents as messages of their own and passing them to the constructor copies each
    one again, which was most of the encoding's CPU."""
    specs = {s.name: s for s in signature.outputs}
    if any(specs[n].datatype == "FP16" for n in batch.outputs):
        return codec.encode_v2(batch, dict(outputs), signature, model_name, version).to_grpc()
    response = pb.ModelInferResponse(id=batch.request_id, model_name=model_name, model_version=version)
    tensors, raw = response.outputs, response.raw_output_contents
    for name in batch.outputs:
        datatype = specs[name].datatype
        tensor = tensors.add()
        tensor.name, tensor.datatype = name, datatype
        if not batch.binary_outputs:
            shape, values = _plain(outputs[name], datatype)
            tensor.shape.extend(shape)
            getattr(tensor.contents, codec.GRPC_CONTENTS[datatype]).extend(
                [v.encode("utf-8") for v in values] if datatype == "BYTES" else values)
            continue
        tensor.shape.extend(np.shape(outputs[name]))
        data = _raw(outputs[name], datatype)
        raw.append(data)
        tensor.parameters["binary_data_size"].int64_param = len(data)
    return response


class FastV2App:
    """ASGI: answers V2 REST inference (JSON or the binary extension) itself, passes everything else to ``app``.

    Args:
        app: the FastAPI app (and whatever middleware sits between).
        dataplane: KServe's data plane (the model registry).
        handlers: the FastAPI app's exception handlers, by exception class (read at each error, so the
            ones KServe registers when it builds the app count).
    """

    def __init__(self, app: ASGIApp, dataplane: DataPlane,
                 handlers: Mapping[Any, Callable[..., Any]]) -> None:
        self.app = app
        self.dataplane = dataplane
        self.handlers = handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        match = V2_INFER.match(scope["path"])
        if match is None:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", ()))  # uvicorn gives lower-case names
        if (headers.get(b"content-type", b"").startswith(b"application/cloudevents")
                or any(name.startswith(b"ce-") for name in headers)):
            await self.app(scope, receive, send)  # CloudEvents: the routed path
            return
        model = self.dataplane.model_registry.get_models().get(match.group(1))
        if not isinstance(model, PillarsModel) or model.enable_latency_logging:
            await self.app(scope, receive, send)  # an unknown name is answered 404 there
            return
        try:
            body, response_headers = await self._answer(model, match.group(2), headers, receive)
        except Exception as exc:
            handler = self._handler(exc)
            if handler is None:
                raise
            response = handler(Request(scope, receive), exc)
            if inspect.isawaitable(response):
                response = await response
            await response(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode()), *response_headers]})
        await send({"type": "http.response.body", "body": body})

    async def _answer(self, model: PillarsModel, version: str | None, headers: dict[bytes, bytes],
                      receive: Receive) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        """What :meth:`pillars.serving.protocol.rest.V2Routes.infer` does, in the same order: the lengths
        checked before the body is read, the (binary extension's) JSON header checked before the tensors."""
        if version is not None:
            served_model(self.dataplane, model.name, version)  # VersionNotFound
        if not await model.healthy():
            raise ModelNotReady(model.name)
        signature, max_rows = model.signature, model.settings.max_rows
        json_length = codec.json_part_length(_text(headers.get(b"inference-header-content-length")),
                                             _text(headers.get(b"content-length")), signature, max_rows)
        binary: bytes | memoryview = b""
        if json_length is None:  # all JSON, whatever the Content-Type says (Triton's rule)
            header = codec.check_v2_header(codec.parse_json(await _body(receive), signature, max_rows), signature,
                                           max_rows)
        else:
            header, binary = await codec.read_binary_request(_chunks(receive), json_length, signature, max_rows)
        batch = codec.decode_v2_data(header, binary)
        outputs, batch = await infer(model, batch)
        post = kserve_timers(model.name)[2]
        started = time.perf_counter()
        try:
            outputs, batch = model.prepare_response((outputs, batch))
            return encode_rest(batch, outputs, model.signature, model.name, model.version)
        finally:
            post.observe(time.perf_counter() - started)

    def _handler(self, exc: Exception) -> Callable[..., Any] | None:
        """The app's handler of ``exc``'s class or a base class, short of the catch-all ``Exception`` one."""
        for cls in type(exc).__mro__:
            if cls is Exception:
                return None
            handler = self.handlers.get(cls)
            if handler is not None:
                return handler
        return None


def _text(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None


async def _chunks(receive: Receive) -> AsyncIterator[bytes]:
    """The request body as it arrives (its size already bounded by the middleware); ends early when the
    client disconnects."""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


async def _body(receive: Receive) -> bytes:
    """The whole request body."""
    parts = [chunk async for chunk in _chunks(receive)]
    return parts[0] if len(parts) == 1 else b"".join(parts)
