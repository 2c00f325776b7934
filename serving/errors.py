"""The serving errors that KServe has no class for, each carrying its HTTP status and gRPC code.

One handler maps them (REST: :func:`pillars.serving.rest.serving_error_handler`; gRPC:
:class:`pillars.serving.grpc_server.StatusInterceptor`). Plain bad input stays KServe's
:class:`kserve.errors.InvalidInput` (400 / INVALID_ARGUMENT).
"""

from __future__ import annotations

from http import HTTPStatus

from grpc import StatusCode


class ServingError(Exception):
    """Base class: ``str(err)`` is the one-line message the client gets."""

    status: HTTPStatus = HTTPStatus.BAD_REQUEST
    grpc_code: StatusCode = StatusCode.INVALID_ARGUMENT


class TooManyRows(ServingError):
    """The request declares more rows than one request may carry (``--max_rows``)."""

    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    grpc_code = StatusCode.RESOURCE_EXHAUSTED


class Overloaded(ServingError):
    """The batcher's queue is full: the client should retry later (or another replica)."""

    status = HTTPStatus.SERVICE_UNAVAILABLE
    grpc_code = StatusCode.RESOURCE_EXHAUSTED


class NonFiniteOutput(ServingError):
    """Finite inputs gave NaN or Inf outputs (values too large for the model)."""

    status = HTTPStatus.UNPROCESSABLE_ENTITY
    grpc_code = StatusCode.OUT_OF_RANGE


class VersionNotFound(ServingError):
    """The request names a model version other than the one served."""

    status = HTTPStatus.NOT_FOUND
    grpc_code = StatusCode.NOT_FOUND


class NotServed(ServingError):
    """A call this server deliberately does not serve (KServe's model-repository extension)."""

    status = HTTPStatus.NOT_FOUND
    grpc_code = StatusCode.UNIMPLEMENTED
