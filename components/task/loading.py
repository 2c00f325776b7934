"""Finding a task by reference: ``package.module:attribute`` or an entry point in ``pillars.tasks``.

Task code is only ever imported from installed packages, never from a model artifact. Re-exported by
:mod:`pillars.components.task`.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
from collections.abc import Mapping
from typing import Any

from pillars.components.errors import ConfigError
from pillars.components.registry.references import ENTRY_POINT_GROUP, known_tasks
from pillars.components.task.base import Task


class TaskNotFound(ConfigError):
    """The task reference names nothing installed (the message names the package to install)."""


def load_task(reference: str, args: Mapping[str, Any] | None = None) -> Task:
    """The task named by ``reference``: ``package.module:attribute`` or an entry point in ``pillars.tasks``.

    The attribute is a :class:`Task` instance (used as it is, or rebuilt with ``args`` when it is a
    dataclass and ``args`` are given) or a :class:`Task` subclass (constructed with ``**args``).
    Task code is only ever imported from installed packages, never from a model artifact.

    Raises:
        TaskNotFound: the module or attribute does not exist; the message names the package to install.
        ConfigError: the attribute is not a task, or the arguments do not fit it.
    """
    args = dict(args or {})
    target = _resolve(reference)
    if isinstance(target, type) and issubclass(target, Task):
        try:
            return target(**args)
        except TypeError as e:
            raise ConfigError(f"task {reference!r} does not take these arguments: {e}") from e
    if isinstance(target, Task):
        if not args:
            return target
        if dataclasses.is_dataclass(target):
            try:
                return dataclasses.replace(target, **args)
            except TypeError as e:
                raise ConfigError(f"task {reference!r} does not take these arguments: {e}") from e
        raise ConfigError(f"task {reference!r} is an instance that takes no arguments; got {sorted(args)}")
    raise ConfigError(f"{reference!r} is a {type(target).__name__}, not a pillars Task (subclass or instance)")


def task_reference(reference: str) -> str:
    """The ``module:attribute`` form of a reference (entry-point names are resolved), as saved in models."""
    if ":" in reference:
        return reference
    return _entry_point(reference).value


def _entry_point(name: str) -> importlib.metadata.EntryPoint:
    found = [ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not found:
        raise TaskNotFound(f"unknown task {name!r}; installed tasks: {', '.join(sorted(known_tasks()))} "
                           "(or give your own as package.module:attribute)")
    return found[0]


def _resolve(reference: str) -> Any:
    if not isinstance(reference, str) or not reference.strip():
        raise ConfigError("a task reference is needed: a task name or package.module:attribute")
    value = reference if ":" in reference else _entry_point(reference).value
    module_name, _, attribute = value.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"task reference {reference!r} must look like package.module:attribute")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        missing = (e.name or module_name).split(".")[0]
        raise TaskNotFound(f"task {value!r} needs the Python package that provides {e.name or module_name!r}, "
                           f"which is not installed here: install {missing!r} (pip install, or build the "
                           "image FROM pillars with it)") from e
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise TaskNotFound(f"module {module_name!r} has no attribute {attribute!r} "
                               f"(task reference {value!r}); is the installed version the right one?") from None
    return target
