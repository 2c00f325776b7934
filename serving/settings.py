"""Serving configuration in one place: ``PILLARS_SERVING_*`` environment variables, overridden by flags."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024


class ServingSettings(BaseSettings):
    """Settings of the model server (the KServe flags such as ports live in KServe's own parser)."""

    model_config = SettingsConfigDict(env_prefix="PILLARS_SERVING_", extra="ignore")

    model_uri: str = ""
    """Where the model comes from: ``models:/NAME@alias``, ``models:/NAME/3``, ``runs:/ID/model``,
    ``s3://bucket/key``, ``file://...`` or a local folder. Empty when ``model_dir`` is given."""

    model_dir: Path | None = None
    """A local folder holding the model (what KServe's storage initializer leaves at ``/mnt/models``)."""

    max_batch_size: int = Field(default=64, ge=1)
    """Most rows merged into one forward pass."""

    max_latency_ms: float = Field(default=2.0, ge=0.0)
    """Longest a batch waits for more requests once the server is under load (milliseconds)."""

    auth_token_file: Path | None = None
    """File whose content is the bearer token; auth is off when neither this nor ``auth_token`` is set."""

    auth_token: str = Field(default="", repr=False)
    """The bearer token itself (prefer the file: environment variables leak into process listings)."""

    cpu_threads: int = Field(default=1, ge=0)
    """Torch intra-op threads on CPU; 0 keeps torch's default (one per visible core, which ignores the
    pod's CPU limit). One thread is fastest for the small tabular models; raise it for large CNNs on
    dedicated cores."""

    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1)
    """Largest request body (HTTP) or message (gRPC) accepted; larger ones get 413 / RESOURCE_EXHAUSTED."""

    device: str = "auto"
    """``auto`` (the GPU when torch sees one), ``cpu``, or a torch device such as ``cuda:0``."""
