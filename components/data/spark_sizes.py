"""The sizes of the data step's SparkApplication: the run's ``spark_*`` parameters, checked where they are
given (:class:`pillars.components.data.prepare.PrepareParams`, the pipeline's argument check) with errors
naming the parameter, and used by :mod:`pillars.components.data.spark_application`."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from pillars.components.errors import ConfigError

SIZE = re.compile(r"^[0-9]+[kmgt]?$")
"""A Spark memory size: digits and an optional unit (``2g``, ``512m``)."""


def check_size(name: str, value: str) -> None:
    """Refuse a Spark memory size other than digits and an optional unit (``2g``, ``512m``), naming it."""
    if not SIZE.match(str(value)):
        raise ConfigError(f"{name} must be a size like 2g or 512m, got {value!r}")


@dataclasses.dataclass(frozen=True)
class SparkSizes:
    """The driver's and executors' sizes: the run's ``spark_*`` parameters (each check names its parameter)."""

    driver_cores: int = 1
    driver_memory: str = "2g"
    executors: int = 2
    executor_cores: int = 1
    executor_memory: str = "2g"

    def __post_init__(self) -> None:
        for name in ("driver_memory", "executor_memory"):
            check_size(f"spark_{name}", getattr(self, name))
        for name in ("driver_cores", "executors", "executor_cores"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"spark_{name} must be a whole number >= 1, got {value!r}")

    @classmethod
    def from_parameters(cls, values: Mapping[str, Any]) -> SparkSizes:
        """The sizes among run parameters (``spark_driver_cores`` ...; any other key is ignored), checked."""
        given = {f.name: f"spark_{f.name}" for f in dataclasses.fields(cls)}
        return cls(**{name: values[key] for name, key in given.items() if key in values})


PARAMETERS = tuple(f"spark_{f.name}" for f in dataclasses.fields(SparkSizes))
"""The run parameters that size the SparkApplication (``spark_driver_cores`` ...)."""
