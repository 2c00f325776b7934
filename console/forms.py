"""A pipeline's form, generated from its signature, and the form's values checked as the CLI checks them.

Fields come from the compiled pipeline's inputs (``component_spec.inputs``: type, default and the
description KFP reads from the pipeline's docstring). Submitted values go through the CLI's own
:func:`~pillars.pipelines.compile.parse_params` (types) and :func:`~pillars.pipelines.training.check_arguments`
(meaning), so a form accepts exactly what ``pillars run --param`` accepts; each error is placed at the
field it names.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from pillars.components.errors import PillarsError
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


def check_form(pipeline: Any, form: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The typed arguments a submitted form asks for, and the errors by field name.

    Only values that differ from a field's default become arguments (as if typed with ``--param``);
    a field not in the form keeps its default; an unchecked checkbox (absent, as browsers send it) is ``false``.

    Returns:
        ``(arguments, errors)``: errors is empty when the run may start; an error naming no field is
        under :data:`FORM_ERROR`.
    """
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
        check_arguments(pipeline, dict(arguments))
    except (PillarsError, ValueError) as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        errors[field_named(message, [f.name for f in fields(pipeline)])] = message
    return arguments, errors


def field_named(message: str, names: list[str]) -> str:
    """The field an error message is about: the input name it mentions first (the longest at a tie)."""
    best: tuple[int, int, str] | None = None
    for name in names:
        m = re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", message)
        if m and (best is None or (m.start(), -len(name)) < best[:2]):
            best = (m.start(), -len(name), name)
    return best[2] if best else FORM_ERROR
