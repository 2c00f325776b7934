"""A pipeline's form, generated from its signature, and the form's values checked as the CLI checks them.

Fields come from the compiled pipeline's inputs (``component_spec.inputs``: type, default and the
description KFP reads from the pipeline's docstring). Submitted values go through the CLI's own
:func:`~pillars.pipelines.compile.parse_params` (types) and :func:`~pillars.pipelines.training.check_arguments`
(meaning), so a form accepts exactly what ``pillars run --param`` accepts; each error is placed at the
field it names.

Two inputs are narrowed further, because the console runs them on its own machine for whoever can
reach it (:class:`InputPolicy`): ``source`` must be under the console's data root or an ``s3://`` URI
(nothing is read or even looked up here: whether the file exists is the run's business), and ``task``
must name an installed task (``pillars.tasks`` entry point, read from package metadata without
importing it) unless ``package.module:attribute`` references are allowed. Nothing is imported in the
console process: the run's worker resolves the task.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pillars.components.errors import ConfigError, PillarsError
from pillars.components.task import known_tasks
from pillars.pipelines.compile import parse_params
from pillars.pipelines.training import check_arguments

FORM_ERROR = "__form__"
"""Key of an error that names no single field."""

HIDDEN = ("tracking_uri", "checkpoint_root")
"""Inputs the console sets itself (the registry it reads, the home's checkpoint folder)."""

MAX_VALUE_CHARS = 4000


@dataclasses.dataclass
class Field:
    """One input of a pipeline as a form field."""

    name: str
    kind: str  # String, Integer, Float, Boolean
    default: Any
    help: str
    required: bool

    @property
    def input_type(self) -> str:
        return {"Integer": "number", "Float": "text", "Boolean": "checkbox"}.get(self.kind, "text")

    @property
    def default_text(self) -> str:
        if self.default is None:
            return ""
        if isinstance(self.default, bool):
            return "true" if self.default else "false"
        return str(self.default)


def fields(pipeline: Any) -> list[Field]:
    """The form fields of ``pipeline``, in signature order."""
    result = []
    for name, spec in (pipeline.component_spec.inputs or {}).items():
        if name in HIDDEN:
            continue
        result.append(Field(name, spec.type, spec.default, (spec.description or "").strip(), spec.default is None))
    return result


@dataclasses.dataclass(frozen=True)
class InputPolicy:
    """What a console run may read: files under ``data_root`` (or s3://), installed tasks (or any module)."""

    data_root: Path
    allow_task_modules: bool = False

    def source(self, source: str) -> str:
        """``source`` as the run will read it: an ``s3://`` URI as it is, a path resolved under the data root.

        Raises:
            ConfigError: another URI scheme, or a path (after ``..`` and links) outside the data root.
        """
        source = source.strip()
        if not source or source.startswith("s3://"):
            return source
        root = self.data_root.resolve()
        if "://" in source:
            raise ConfigError(f"source {source!r}: the console reads only files under its data root or s3:// URIs")
        path = (root / source).resolve()  # absolute sources replace the root; links and '..' are followed
        if path != root and root not in path.parents:
            raise ConfigError(f"source {source!r} is outside the console's data root {root}; "
                              "give a path under it or an s3:// URI")
        return str(path)

    def task(self, task: str) -> None:
        """Check ``task`` names a task this console may run (nothing is imported).

        Raises:
            ConfigError: an unknown name, or a module reference while those are not allowed.
        """
        task = task.strip()
        if not task:
            return  # retraining: the champion's task
        installed = known_tasks()
        if ":" not in task:
            if task not in installed:
                raise ConfigError(f"unknown task {task!r}; installed tasks: {', '.join(sorted(installed))}")
            return
        if not self.allow_task_modules:
            raise ConfigError(f"task {task!r} is a module reference; this console runs installed tasks only "
                              f"({', '.join(sorted(installed))}): set PILLARS_CONSOLE_ALLOW_TASK_MODULES=true "
                              "to allow package.module:attribute")
        module, _, attribute = task.partition(":")
        if not all(part.isidentifier() for part in [*module.split("."), *attribute.split(".")]):
            raise ConfigError(f"task reference {task!r} must look like package.module:attribute")


def check_form(pipeline: Any, form: Mapping[str, str],
               policy: InputPolicy | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """The typed arguments a submitted form asks for, and the errors by field name.

    Only values that differ from a field's default become arguments (as if typed with ``--param``);
    a field not in the form keeps its default; an unchecked checkbox (absent, as browsers send it) is ``false``.

    Returns:
        ``(arguments, errors)``: errors is empty when the run may start; an error naming no field is
        under :data:`FORM_ERROR`.
    """
    policy = policy or InputPolicy(Path.cwd())
    errors: dict[str, str] = {}
    arguments: dict[str, Any] = {}
    for field in fields(pipeline):
        if field.kind == "Boolean":
            raw = "true" if form.get(field.name) in ("true", "on") else "false"
        elif field.name not in form:
            continue
        else:
            raw = str(form[field.name]).strip()
        if len(raw) > MAX_VALUE_CHARS:
            errors[field.name] = f"{field.name} is longer than {MAX_VALUE_CHARS} characters"
            continue
        if raw == "" and field.required:
            errors[field.name] = f"{field.name} is required"
            continue
        if raw == field.default_text or (raw == "" and field.kind != "String"):
            continue
        try:
            arguments.update(parse_params([f"{field.name}={raw}"], pipeline))
        except PillarsError as e:
            errors[field.name] = str(e)
    if errors:
        return arguments, errors
    try:
        check_arguments(pipeline, dict(arguments), load=False)  # imports no task: the worker does
    except (PillarsError, ValueError) as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        errors[field_named(message, [f.name for f in fields(pipeline)])] = message
    defaults = {f.name: f.default for f in fields(pipeline)}
    for name, check in (("source", policy.source), ("task", policy.task)):
        if name not in defaults or name in errors:
            continue
        try:
            checked = check(str(arguments.get(name, defaults[name]) or ""))
        except ConfigError as e:
            errors[name] = str(e)
            continue
        if checked and name in arguments:
            arguments[name] = checked
    return arguments, errors


def field_named(message: str, names: list[str]) -> str:
    """The field an error message is about: the input name it mentions first (the longest at a tie)."""
    best: tuple[int, int, str] | None = None
    for name in names:
        m = re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", message)
        if m and (best is None or (m.start(), -len(name)) < best[:2]):
            best = (m.start(), -len(name), name)
    return best[2] if best else FORM_ERROR
