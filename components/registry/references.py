"""Registered-model names and ``models:/`` references, checked and parsed once.

:func:`check_model_name` applies MLflow's own registered-model name rules plus the rule that the
name is safe as one folder name (training checkpoints live under ``<root>/<model name>/``).
:class:`ModelRef` is a parsed ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``: the CLI, the
deployer and the model server read the reference through it instead of splitting strings.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import re

from pillars.components.errors import ConfigError

ENTRY_POINT_GROUP = "pillars.tasks"
"""The entry-point group installed tasks are named in (``pillars tasks`` lists it)."""


def known_tasks() -> dict[str, str]:
    """Entry-point name -> ``module:attribute`` of every installed task, read from package metadata
    (nothing imported)."""
    return {ep.name: ep.value for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}

SCHEME = "models:/"
MAX_NAME_BYTES = 200
"""Longest name, in UTF-8 bytes, that stays one folder name on every filesystem we write to."""
_UNSAFE = re.compile(r"[\\@%\x00-\x1f\x7f]")


def default_model_name(task: str) -> str:
    """The registered-model name a run of ``task`` gets when none is given: the task's name for an
    installed task (``breast_cancer``), the attribute's name for ``package.module:attribute``
    (``my_package.tasks:churn`` -> ``churn``)."""
    return task.rpartition(":")[2].rpartition(".")[2] if ":" in task else task


def check_model_name(name: str) -> str:
    """``name`` when it is a valid registered-model name that is also safe as one folder name.

    MLflow's rules (``mlflow.utils.validation._validate_model_name``): not blank, no ``/`` or ``:``,
    and nothing a path normalisation would change (``..``, ``./x``). Ours on top: no ``\\``, ``@``
    (it separates the alias in ``models:/NAME@ALIAS``), ``%`` or control characters, no leading or
    trailing space, at most :data:`MAX_NAME_BYTES` bytes.

    Raises:
        ConfigError: naming the bad name and the rule it breaks.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import _validate_model_name

    if not isinstance(name, str):
        raise ConfigError(f"model name must be a string, got {name!r}")
    try:
        _validate_model_name(name)
    except MlflowException as e:
        raise ConfigError(f"invalid model name {name!r}: {e.message}") from e
    if _UNSAFE.search(name) or name != name.strip():
        raise ConfigError(f"invalid model name {name!r}: no '\\', '@', '%', control characters "
                          "or surrounding spaces")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise ConfigError(f"invalid model name {name[:40]!r}...: longer than {MAX_NAME_BYTES} bytes")
    return name


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """A registered model with either an alias (which can move) or a fixed version."""

    name: str
    alias: str | None = None
    version: str | None = None

    def __post_init__(self) -> None:
        if (self.alias is None) == (self.version is None):
            raise ConfigError(f"a model reference needs an alias or a version, not both: {self!r}")

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        """``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` (the ``models:/`` prefix may be left out).

        Raises:
            ConfigError: naming the text that is not such a reference.
        """
        from mlflow.exceptions import MlflowException
        from mlflow.utils.validation import _validate_model_alias_name

        body = text[len(SCHEME):] if text.startswith(SCHEME) else text
        name, at, alias = body.partition("@")
        try:
            if at:
                _validate_model_alias_name(alias)
                return cls(check_model_name(name), alias=alias)
            name, slash, version = body.partition("/")
            if slash and version.isdigit() and int(version) > 0:
                return cls(check_model_name(name), version=str(int(version)))
        except (ConfigError, MlflowException) as e:
            raise ConfigError(f"bad model reference {text!r}: {getattr(e, 'message', e)}") from e
        raise ConfigError(f"bad model reference {text!r}: use models:/NAME@ALIAS or models:/NAME/VERSION")

    @property
    def is_alias(self) -> bool:
        """True for ``NAME@ALIAS``, whose version can change while it is served."""
        return self.alias is not None

    @property
    def uri(self) -> str:
        """The ``models:/`` URI MLflow reads."""
        return f"{SCHEME}{self.name}@{self.alias}" if self.alias is not None else f"{SCHEME}{self.name}/{self.version}"

    def pinned(self, version: str) -> ModelRef:
        """The same model at a fixed ``version`` (an alias resolved once, so it cannot move mid-download)."""
        return ModelRef(self.name, version=str(version))
