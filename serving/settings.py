"""Serving configuration in one place: ``PILLARS_SERVING_*`` environment variables, overridden by flags.

Each field is written once, here: ``python -m pillars.serving`` makes one flag of every field but those in
:data:`ENV_ONLY` (``--max_rows``; the flag's type, default, choices and help come from the field, the
help being its docstring's first sentence), so a new setting is a new flag.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
LOOPBACK = "127.0.0.1"
ENV_ONLY = frozenset({"auth_token"})
"""Settings without a flag: a token on the command line would show in process listings."""


class ServingSettings(BaseSettings):
    """Settings of the model server (the KServe flags such as ports live in KServe's own parser)."""

    model_config = SettingsConfigDict(env_prefix="PILLARS_SERVING_", extra="ignore", use_attribute_docstrings=True)

    model_uri: str = ""
    """Where the model comes from: ``models:/NAME@alias``, ``models:/NAME/3``, ``runs:/ID/model``,
    ``s3://bucket/key``, ``file://...`` or a local folder. Empty when ``model_dir`` is given."""

    model_dir: Path | None = None
    """A local folder holding the model (what KServe's storage initializer leaves at ``/mnt/models``)."""

    host: str = LOOPBACK
    """Address the HTTP and gRPC servers listen on. Loopback by default, so a server started on a laptop is
    not reachable from the network; the container image passes ``--host 0.0.0.0``."""

    max_rows: int = Field(default=1024, ge=1)
    """Most rows (instances) one request may carry. Checked on the declared shape before any tensor data
    is decoded; larger requests get 413 / RESOURCE_EXHAUSTED."""

    max_queued_rows: int = Field(default=4096, ge=1)
    """Most rows waiting for or in a forward pass at once; past that, requests get 503 /
    RESOURCE_EXHAUSTED at once (retry, or scale out) instead of queueing without bound."""

    metrics_open: bool = False
    """Serve ``/metrics`` without the bearer token even when auth is on (for a scraper that cannot carry
    one). Off: with auth on, ``/metrics`` needs the token like inference does."""

    max_queue_wait_ms: float = Field(default=0.0, ge=0.0)
    """Refuse requests (503 with Retry-After / RESOURCE_EXHAUSTED) while requests wait longer than this for
    a forward pass (milliseconds; 0: only ``max_queued_rows`` bounds the queue)."""

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

    drift: bool = True
    """Measure input and prediction drift against the model's data profile. Costs the
    request path one copy of each batch into a fixed ring buffer; the statistics run in a background thread."""

    drift_method: Literal["jsd", "psi", "ks"] = "jsd"
    """What decides that a feature drifted: Jensen-Shannon distance (``jsd``, bounded in [0, 1], defined for
    empty bins; NannyML's choice), PSI (``psi``, the credit-risk convention), or the two-sample KS test
    against the profile's reference sample (``ks``, Evidently's choice for small references). All three are
    exported whatever the method."""

    drift_threshold: float | None = Field(default=None, gt=0.0)
    """Threshold of ``drift_method``; unset: 0.1 for ``jsd`` (NannyML's default), 0.25 for ``psi`` (the
    "major shift" band; 0.1-0.25 is "moderate"), 0.05 for ``ks`` (a p-value: drifted below it)."""

    drift_share: float = Field(default=0.5, gt=0.0, le=1.0)
    """The model drifts when at least this share of its features drift (Evidently's default: half, so one
    noisy feature does not raise an alert)."""

    drift_window: int = Field(default=1000, ge=1)
    """Most recent rows compared with the profile (fixed memory: window x features float32). At 1000 rows the
    sampling noise of a 10-bin histogram is a JS distance of ~0.04, well under the 0.1 threshold."""

    drift_min_rows: int = Field(default=500, ge=1)
    """Rows the window must hold before drift is reported (capped at ``drift_window``): below ~500 rows the
    sampling noise of a 10-bin histogram alone approaches the JS threshold."""

    drift_interval_s: float = Field(default=5.0, gt=0.0)
    """Seconds between drift computations (only when new rows arrived); inside any scrape interval."""

    reload_interval_s: float = Field(default=0.0, ge=0.0)
    """For ``models:/NAME@ALIAS``: check every this many seconds which version the alias points to, and load
    and swap in a new one when it moves (0: off, the model is fixed for the life of the process)."""

    max_connections: int = Field(default=1000, ge=1)
    """Most open client connections per server (HTTP, and gRPC), lowered to stay below the soft descriptor
    limit (``ulimit -n``). At the cap, HTTP closes its oldest idle connection to make room, so idle sockets
    cannot lock health probes out."""

    header_timeout_s: float = Field(default=10.0, gt=0.0)
    """Seconds a new connection has to send a whole request head (HTTP) or finish the HTTP/2 handshake (gRPC)
    before it is closed (silent or slow clients). Between requests, HTTP's ``--timeout_keep_alive`` applies."""

    grpc_idle_timeout_s: float = Field(default=300.0, gt=0.0)
    """Seconds a gRPC connection with no call in flight stays open (clients reconnect transparently)."""

    allowed_hosts: list[str] = Field(default_factory=list)
    """Host names a request's ``Host`` header may name (``*``: any). Empty: the loopback names when ``host``
    is loopback (no web page can reach the server through a DNS name of its own), any host otherwise."""

    feedback_dir: str = ".pillars/feedback"
    """Where the durable feedback labels go, read back at start: a folder (one ``MODEL.jsonl`` per served
    model, fsynced per batch) or, on a cluster, ``s3://bucket/prefix`` (one object per batch under
    ``prefix/MODEL/``; endpoint ``AWS_ENDPOINT_URL``, credentials boto3's usual variables)."""

    feedback_memory_rows: int = Field(default=100_000, ge=1)
    """Most recent rows whose predictions (and small inputs) are remembered by request id; labels for ids
    forgotten are kept for retraining but not scored."""

    feedback_max_batch: int = Field(default=1000, ge=1)
    """Most labels one feedback request may carry (more: 413)."""

    feedback_max_labels: int = Field(default=1_000_000, ge=1)
    """Most labels the feedback store of a model keeps; past it, feedback is refused (413) until it is
    moved away (a retraining run takes it)."""

    performance_window: int = Field(default=1000, ge=1)
    """Most recent rows the estimated accuracy (CBPE) is computed over."""

    performance_min_rows: int = Field(default=200, ge=1)
    """Rows the window must hold before an estimated accuracy is exported (capped at ``performance_window``)."""

    shadow_uri: str = ""
    """A challenger to run in shadow beside the served model (same URI forms as ``model_uri``; it must take the
    same inputs): it sees every answered request off the request path and is scored on the same feedback labels;
    ``GET /v2/models/NAME/shadow`` says promote, reject or wait. Empty: no shadow."""

    shadow_min_labels: int = Field(default=200, ge=1)
    """Paired labelled rows the shadow decision needs before it says promote or reject."""
