"""The serving errors that the tensor contract has no class for, each carrying its HTTP status and gRPC code.

Every error a client sees is a :class:`pillars.components.errors.PillarsError` (bad input is
:class:`pillars.components.task.contract.InputError`, 400 / INVALID_ARGUMENT); one handler per app maps them:
REST :func:`pillars.serving.protocol.rest.serving_error_handler`, gRPC :class:`pillars.serving.protocol.grpc_server.StatusInterceptor`.
``grpc_code`` is the name of a :class:`grpc.StatusCode` member, as on the base.
"""

from __future__ import annotations

from http import HTTPStatus

from pillars.components.errors import PillarsError


class ServingError(PillarsError):
    """Base class of the errors only the model server raises: ``str(err)`` is the one-line message."""


class TooManyRows(ServingError):
    """The request declares more rows than one request may carry (``--max_rows``)."""

    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    grpc_code = "RESOURCE_EXHAUSTED"


class Overloaded(ServingError):
    """The batcher's queue is full: the client should retry later (or another replica)."""

    status = HTTPStatus.SERVICE_UNAVAILABLE
    grpc_code = "RESOURCE_EXHAUSTED"


class NonFiniteOutput(ServingError):
    """Finite inputs gave NaN or Inf outputs (values too large for the model)."""

    status = HTTPStatus.UNPROCESSABLE_ENTITY
    grpc_code = "OUT_OF_RANGE"


class VersionNotFound(ServingError):
    """The request names a model version other than the one served."""

    status = HTTPStatus.NOT_FOUND
    grpc_code = "NOT_FOUND"


class NotServed(ServingError):
    """A call this server deliberately does not serve (KServe's model-repository extension)."""

    status = HTTPStatus.NOT_FOUND
    grpc_code = "UNIMPLEMENTED"


class BadFeedback(ServingError):
    """A feedback batch is malformed or a label does not fit the model (its type, an unknown class)."""

    status = HTTPStatus.UNPROCESSABLE_ENTITY
    grpc_code = "INVALID_ARGUMENT"


class TooMuchFeedback(ServingError):
    """A feedback batch carries more labels than one batch may, or the label store is full."""

    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    grpc_code = "RESOURCE_EXHAUSTED"


class FeedbackNotStored(ServingError):
    """The feedback store cannot be written (a read-only or full disk): nothing of the batch was acknowledged."""

    status = HTTPStatus.SERVICE_UNAVAILABLE
    grpc_code = "UNAVAILABLE"
