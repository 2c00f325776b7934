"""Errors the platform raises for bad input, each naming what is wrong.

One base, :class:`PillarsError`, for every error a user or client sees. Each class carries the HTTP status
and the gRPC status code (a :class:`grpc.StatusCode` member's name: no gRPC import here) that the model
server and the console answer with; the command line prints ``str(err)`` after ``error:``.
"""

from __future__ import annotations

import re
from http import HTTPStatus


class PillarsError(Exception):
    """Base class of the platform's user-facing errors; ``str(err)`` is the one-line message.

    A subclass states its answer in its header, as one row of a table:
    ``class Overloaded(ServingError, status=HTTPStatus.SERVICE_UNAVAILABLE, grpc_code="RESOURCE_EXHAUSTED")``;
    what it leaves out it inherits.
    """

    status: HTTPStatus = HTTPStatus.BAD_REQUEST
    grpc_code: str = "INVALID_ARGUMENT"

    def __init_subclass__(cls, status: HTTPStatus | None = None, grpc_code: str | None = None,
                          **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if status is not None:
            cls.status = status
        if grpc_code is not None:
            cls.grpc_code = grpc_code


class DataError(PillarsError, ValueError):
    """The input data cannot be used: empty, missing a column, non-numeric, one class only."""


class ConfigError(PillarsError, ValueError):
    """A parameter, task name or setting is invalid."""


class RegistryError(PillarsError, LookupError, status=HTTPStatus.NOT_FOUND, grpc_code="NOT_FOUND"):
    """A model, version or alias is missing from the MLflow registry."""


def one_line(error: BaseException) -> str:
    """The first line of an error's message (colour codes removed, at most 300 characters): what a
    command prints after ``error:``."""
    message = re.sub(r"\x1b\[[0-9;]*m", "", str(getattr(error, "message", None) or error)).strip()
    first = message.splitlines()[0] if message else type(error).__name__
    return first if len(first) < 300 else first[:300] + "..."
