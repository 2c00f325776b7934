"""Errors the platform raises for bad input, each naming what is wrong."""

from __future__ import annotations


class PillarsError(Exception):
    """Base class of the platform's user-facing errors; ``str(err)`` is the one-line message."""


class DataError(PillarsError, ValueError):
    """The input data cannot be used: empty, missing a column, non-numeric, one class only."""


class ConfigError(PillarsError, ValueError):
    """A parameter, task name or setting is invalid."""


class RegistryError(PillarsError, LookupError):
    """A model, version or alias is missing from the MLflow registry."""
