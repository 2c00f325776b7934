"""The console's configuration, read from ``PILLARS_CONSOLE_*`` environment variables (or CLI flags)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from pillars.components.errors import ConfigError


class ConsoleSettings(BaseSettings):
    """Where the console listens, who may use it, and what it talks to."""

    model_config = SettingsConfigDict(env_prefix="PILLARS_CONSOLE_", extra="ignore")

    host: str = "127.0.0.1"
    """Interface to bind. Anything but loopback requires a token (``token_file``)."""

    port: int = Field(default=8700, ge=1, le=65535)
    """TCP port."""

    token_file: Path | None = None
    """File holding the access token (a bearer token, or typed once into the login form). Required off loopback."""

    kfp_host: str = ""
    """Kubeflow Pipelines API URL: when set, "Submit run" goes to the cluster (``kfp.Client``) instead of kfp.local."""

    kfp_namespace: str | None = None
    """Kubeflow namespace of submitted runs (multi-user installs)."""

    prometheus_url: str = ""
    """Prometheus HTTP API to read endpoint metrics from; empty: the local stack's, else the servers' ``/metrics``."""

    endpoints: str = ""
    """Model server base URLs, comma-separated (``name=url`` or ``url``); added to the local stack's."""

    endpoint_token_file: Path | None = None
    """File holding the model servers' bearer token (the file their ``--auth_token_file`` reads): sent on every
    request the console makes to a server (health, ``/metrics``, the model list, the shadow comparison), never to
    Prometheus. Empty: no token is sent."""

    mlflow_ui_url: str = ""
    """Where people open MLflow runs; empty: the tracking URI when it is a server."""

    sample_interval_s: float = Field(default=5.0, gt=0)
    """Without Prometheus: how often the console scrapes each server's ``/metrics``."""

    data_root: Path = Field(default_factory=Path.cwd)
    """The only folder whose files a run's ``source`` may name (paths are resolved, links followed); other
    sources must be object-store URIs (``s3://``). Default: the folder the console was started in."""

    allow_task_modules: bool = False
    """Whether a run's ``task`` may be any ``package.module:attribute`` (imported by the run's worker, never
    by the console); off: only installed tasks (``pillars.tasks`` entry points) by name."""

    login_attempts: int = Field(default=5, ge=1)
    """Wrong tokens (login form or bearer) one client address may send per ``login_window_s`` before 429."""

    login_window_s: float = Field(default=60.0, gt=0)
    """The rate limit's window, in seconds."""

    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    """Largest request body (a form), counted as it is read; larger requests get 413."""

    def endpoint_token(self) -> str | None:
        """The model servers' token from ``endpoint_token_file`` (None when no file is set).

        Raises:
            ConfigError: the file cannot be read or is empty.
        """
        if self.endpoint_token_file is None:
            return None
        try:
            token = self.endpoint_token_file.read_text().strip()
        except OSError as e:
            raise ConfigError(f"cannot read the model servers' token file {self.endpoint_token_file}: "
                              f"{e.strerror}") from e
        if not token:
            raise ConfigError(f"the model servers' token file {self.endpoint_token_file} is empty")
        return token

    def endpoint_urls(self) -> dict[str, str]:
        """The configured endpoints as ``{name: base URL}``."""
        result: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in self.endpoints.split(","))):
            name, sep, url = item.partition("=")
            if not sep:
                name, url = item, item
            result[name.strip()] = url.strip().rstrip("/")
        return result
