"""Errors the platform raises for bad input, each naming what is wrong.

One base, :class:`PillarsError`, for every error a user or client sees. Each class carries the HTTP status
and the gRPC status code (a :class:`grpc.StatusCode` member's name: no gRPC import here) that the model
server and the console answer with; the command line prints ``str(err)`` after ``error:``.
"""

from __future__ import annotations

import re
from http import HTTPStatus


class PillarsError(Exception):
    """Base class of the platform's user-facing errors; ``str(err)`` is the one-line message."""

    status: HTTPStatus = HTTPStatus.BAD_REQUEST
    grpc_code: str = "INVALID_ARGUMENT"


class DataError(PillarsError, ValueError):
    """The input data cannot be used: empty, missing a column, non-numeric, one class only."""


class ConfigError(PillarsError, ValueError):
    """A parameter, task name or setting is invalid."""


class RegistryError(PillarsError, LookupError):
    """A model, version or alias is missing from the MLflow registry."""

    status = HTTPStatus.NOT_FOUND
    grpc_code = "NOT_FOUND"


def one_line(error: BaseException) -> str:
    """The first line of an error's message (colour codes removed, at most 300 characters): what a
    command prints after ``error:``."""
    message = re.sub(r"\x1b\[[0-9;]*m", "", str(getattr(error, "message", None) or error)).strip()
    first = message.splitlines()[0] if message else type(error).__name__
    return first if len(first) < 300 else first[:300] + "..."
