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


class TooManyRows(ServingError, status=HTTPStatus.REQUEST_ENTITY_TOO_LARGE, grpc_code="RESOURCE_EXHAUSTED"):
    """The request declares more rows than one request may carry (``--max_rows``)."""


class Overloaded(ServingError, status=HTTPStatus.SERVICE_UNAVAILABLE, grpc_code="RESOURCE_EXHAUSTED"):
    """The batcher's queue is full: the client should retry later (or another replica)."""


class NonFiniteOutput(ServingError, status=HTTPStatus.UNPROCESSABLE_ENTITY, grpc_code="OUT_OF_RANGE"):
    """Finite inputs gave NaN or Inf outputs (values too large for the model)."""


class VersionNotFound(ServingError, status=HTTPStatus.NOT_FOUND, grpc_code="NOT_FOUND"):
    """The request names a model version other than the one served."""


class NotServed(ServingError, status=HTTPStatus.NOT_FOUND, grpc_code="UNIMPLEMENTED"):
    """A call this server deliberately does not serve (KServe's model-repository extension)."""


class BadFeedback(ServingError, status=HTTPStatus.UNPROCESSABLE_ENTITY, grpc_code="INVALID_ARGUMENT"):
    """A feedback batch is malformed or a label does not fit the model (its type, an unknown class)."""


class TooMuchFeedback(ServingError, status=HTTPStatus.REQUEST_ENTITY_TOO_LARGE, grpc_code="RESOURCE_EXHAUSTED"):
    """A feedback batch carries more labels than one batch may, or the label store is full."""


class FeedbackNotStored(ServingError, status=HTTPStatus.SERVICE_UNAVAILABLE, grpc_code="UNAVAILABLE"):
    """The feedback store cannot be written (a read-only or full disk): nothing of the batch was acknowledged."""
