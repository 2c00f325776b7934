"""The trigger's settings: ``PILLARS_TRIGGER_*`` variables (the command line overrides them)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from pydantic_settings import BaseSettings, SettingsConfigDict

from pillars.pipelines.parameters import flag_fields


class TriggerSettings(BaseSettings):
    """The trigger's settings, from ``PILLARS_TRIGGER_*`` variables (flags override them)."""

    model_config = SettingsConfigDict(env_prefix="PILLARS_TRIGGER_", extra="ignore")

    cooldown: float = 3600.0
    """Seconds between two runs for one model."""

    max_runs_per_call: int = 5
    """Runs one webhook call may start; the rest are answered 503 (Alertmanager re-sends them)."""

    max_active_runs: int = 2
    """Runs started by this trigger that may be running at once, across all calls (a local run takes
    about 540 MB); alerts over it are answered 503 (``busy``) and start when re-sent after one ends."""

    registry_timeout: float = 10.0
    """Seconds the registry look-up of a model's champion may take before the alert is answered 503."""

    command: str = ""
    """Local command line to run instead of ``pillars run retraining`` (``--param`` arguments appended)."""

    token: str = ""
    """The bearer token webhook calls must carry (``--token-file`` overrides it); empty: no token."""

    start_workers: int = 2
    """Threads that start runs (compile and submit, or spawn), off the event loop."""

    memory: int = 10_000
    """Alerts and models remembered for de-duplication and cool-down (oldest forgotten first)."""

    @staticmethod
    def cluster_flag_defaults() -> dict[str, Any]:
        """Defaults of the cluster flags (``pillars compile``'s) from ``PILLARS_TRIGGER_<FIELD>`` variables, of
        the field's type."""
        defaults = {}
        for field in flag_fields():
            variable = f"PILLARS_TRIGGER_{field.name.upper()}"
            env = os.environ.get(variable)
            kind = type(field.default) if field.default is not dataclasses.MISSING else str
            try:
                if env:
                    defaults[field.name] = kind(env)
            except ValueError as e:
                raise ValueError(f"{variable} must be {kind.__name__}, got {env!r}") from e
        return defaults


def read_token(token_file: str | None, token: str = "") -> str:
    """The bearer token from ``token_file``, else ``token`` (``PILLARS_TRIGGER_TOKEN``)."""
    if token_file:
        try:
            return Path(token_file).read_text().strip()
        except OSError as e:
            raise ValueError(f"cannot read the token file {token_file}: {e.strerror}") from e
    return token.strip()
