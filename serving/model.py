"""The Pillars predictor as a KServe model: load by URI, warm up, then serve V1, V2 and gRPC.

``PillarsModel`` is a :class:`kserve.Model`; KServe's ``ModelServer`` runs it, so the same code runs
in an InferenceService pod and on a laptop. The hooks:

- ``load``: resolve the model (:mod:`pillars.serving.storage`), build the :class:`pillars.components.models.Predictor`,
  run one warm-up batch, start drift monitoring against the model's data profile (:mod:`pillars.serving.drift`),
  and only then set ``ready``.
- ``preprocess``: decode the protocol payload into a checked float32 batch (:mod:`pillars.serving.codec`).
- ``predict``: submit the batch to the micro-batcher (:mod:`pillars.serving.batching`).
- ``postprocess``: encode outputs as the protocol the request came in.

With ``reload_interval_s`` and a ``models:/NAME@ALIAS`` URI, a background thread follows the alias:
when it moves, the new version is downloaded, loaded and warmed up off the request path, then swapped
in with one attribute assignment (batches already running finish on the old weights; no request fails),
with a fresh drift window against the new version's profile. The new version must take the same inputs
(a champion's successor does): a request checked against the old schema while the swap happens would
otherwise be answered 400.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from kserve import Model
from kserve.errors import InferenceError, InvalidInput
from kserve.protocol.infer_type import InferRequest, InferResponse

from pillars.components.models import InputError, ModelConfig, Predictor, load_profile
from pillars.serving import codec, metrics
from pillars.serving.batching import Batcher, Outputs
from pillars.serving.drift import DriftConfig, DriftMonitor
from pillars.serving.settings import ServingSettings
from pillars.serving.storage import ModelSource, discard, is_alias_uri, registry_version, resolve_model

logger = logging.getLogger("pillars.serving")


@dataclass(frozen=True)
class _Active:
    """What answers requests now; replaced as a whole when a new version is swapped in."""

    predictor: Predictor
    drift: DriftMonitor | None


@dataclass
class _Decoded:
    """What ``preprocess`` hands to ``predict``: the checked batch and how to answer."""

    rows: np.ndarray
    request: InferRequest | None  # None for V1
    outputs: list[str]


def pick_device(name: str = "auto") -> torch.device:
    """The GPU when torch sees one (``auto``), else the CPU; or the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class PillarsModel(Model):
    """A registered Pillars model served through KServe's data plane.

    Args:
        name: the model name on the endpoint paths (``/v2/models/NAME/infer``).
        settings: where the model is, how to batch it, how to measure drift and whether to follow an alias.

    Raises:
        ValueError: the drift settings contradict each other.
    """

    def __init__(self, name: str, settings: ServingSettings) -> None:
        super().__init__(name)
        self.settings = settings
        self.version = "1"
        self.source: ModelSource | None = None
        self.predictor: Predictor | None = None
        self.batcher: Batcher | None = None
        self.drift_config = DriftConfig(
            method=settings.drift_method, threshold=settings.drift_threshold, share=settings.drift_share,
            window=settings.drift_window, min_rows=min(settings.drift_min_rows, settings.drift_window),
            interval_s=settings.drift_interval_s)
        self.version_listeners: list[Callable[[str, str], None]] = []
        """Called with (model name, new version) after a hot reload (the server's metric labels)."""
        self._active: _Active | None = None
        self._stop_reloading = threading.Event()

    @property
    def drift(self) -> DriftMonitor | None:
        """The drift monitor of the version being served (None: off, or the model has no profile)."""
        return self._active.drift if self._active else None

    @property
    def config(self) -> ModelConfig:
        if self.predictor is None:
            raise InferenceError(f"model {self.name} is not loaded")
        return self.predictor.config

    def load(self) -> bool:
        """Download and load the model, run a warm-up batch, then mark the model ready.

        Raises:
            pillars.components.errors.ConfigError: the model cannot be found or read.
        """
        started = time.perf_counter()
        device = pick_device(self.settings.device)
        if self.settings.cpu_threads and device.type == "cpu":
            torch.set_num_threads(self.settings.cpu_threads)
        model_dir = str(self.settings.model_dir) if self.settings.model_dir else None
        self.source = resolve_model(self.settings.model_uri, model_dir)
        self.version = self.source.version
        self.predictor = Predictor.load(self.source.directory, device=device)
        self._active = _Active(self.predictor, None)
        self.batcher = Batcher(self._forward, self.settings.max_batch_size,
                               self.settings.max_latency_ms, on_batch=self._observe_batch)
        metrics.FEATURES.register_model(self.name, self.config.feature_names)
        self._warm_up()  # before the drift monitor exists: zeros are not traffic
        self._active = _Active(self.predictor, self._drift_monitor(self.source, self.predictor.config))
        metrics.DRIFT.register_model(self.name, self.version, self.drift)
        self.ready = True
        logger.info("model %s version %s loaded from %s on %s in %.2fs (kind=%s, features=%d, drift %s)",
                    self.name, self.version, self.source.uri, device, time.perf_counter() - started,
                    self.config.kind, self.config.n_features,
                    f"by {self.drift.method}" if self.drift else "off")
        self._follow_alias()
        return self.ready

    def stop(self) -> None:
        self._stop_reloading.set()
        if self.drift is not None:
            self.drift.stop()
        if self.batcher is not None:
            self.batcher.close()
        super().stop()

    def reload_if_moved(self) -> bool:
        """Load and swap in the version the alias points to now, if it is not the one served.

        Everything slow (registry lookup, download, load, warm-up) happens before the swap, in the
        caller's thread; the swap itself is one assignment read once per forward pass.

        Returns:
            True when a new version was swapped in.

        Raises:
            pillars.components.errors.ConfigError: the registry or the new version cannot be read (the old
                version keeps serving).
        """
        assert self.predictor is not None and self.source is not None
        if registry_version(self.settings.model_uri) == self.version:
            return False
        started = time.perf_counter()
        source = resolve_model(self.settings.model_uri)
        try:
            predictor = Predictor.load(source.directory, device=self.predictor.device)
            predictor.predict(np.zeros((min(self.settings.max_batch_size, 8), predictor.config.n_features),
                                       dtype=np.float32))
        except Exception:
            discard(source)
            raise
        drift = self._drift_monitor(source, predictor.config)
        old_source, old_version, old_drift = self.source, self.version, self.drift
        old_features = self.predictor.config.feature_names
        self._active = _Active(predictor, drift)  # the swap: the next forward pass uses the new version
        self.predictor, self.source, self.version = predictor, source, source.version
        if predictor.config.feature_names != old_features:  # else keep the running sums going
            metrics.FEATURES.register_model(self.name, predictor.config.feature_names)
        metrics.DRIFT.register_model(self.name, self.version, drift)
        for listener in self.version_listeners:
            listener(self.name, self.version)
        if old_drift is not None:
            old_drift.stop()
        discard(old_source)
        logger.info("model %s: %s now points to version %s (was %s); loaded and swapped in %.2fs",
                    self.name, self.settings.model_uri, self.version, old_version, time.perf_counter() - started)
        return True

    def get_input_types(self) -> list[dict[str, Any]]:
        return codec.input_metadata(self.config)

    def get_output_types(self) -> list[dict[str, Any]]:
        return codec.output_metadata(self.config)

    async def preprocess(self, payload: dict[str, Any] | InferRequest,
                         headers: dict[str, str] | None = None) -> _Decoded:
        """Decode a V1 body (dict) or V2 request (REST or gRPC) into a checked ``[N, n_features]`` batch.

        Raises:
            InvalidInput: wrong shape, feature count, datatype, NaN/Inf, empty batch, unknown output.
        """
        if isinstance(payload, InferRequest):
            rows = codec.decode_v2(payload)
            return _Decoded(self._check(rows), payload, codec.requested_names(payload, self.config))
        return _Decoded(self._check(codec.decode_v1(payload, self.config)), None, [])

    def validate(self, payload: Any) -> Any:
        return payload  # preprocess has checked everything

    async def predict(self, payload: _Decoded, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> tuple[dict[str, np.ndarray], _Decoded]:
        """Run the batch through the micro-batcher; returns the outputs and what ``postprocess`` needs.

        Raises:
            InferenceError: the forward pass failed (a server error, 500 / INTERNAL).
        """
        assert self.batcher is not None
        try:
            return await self.batcher.submit(payload.rows), payload
        except InputError as e:
            raise InvalidInput(str(e)) from e
        except (RuntimeError, ValueError) as e:  # a model failure is ours, not the client's
            logger.exception("forward pass failed")
            raise InferenceError(f"inference failed: {type(e).__name__}") from e

    async def postprocess(self, result: Any, headers: dict[str, str] | None = None,
                          response_headers: dict[str, str] | None = None) -> dict[str, Any] | InferResponse:
        """Encode the outputs in the protocol of the request (V1 dict, or V2 ``InferResponse``)."""
        outputs, decoded = result
        if decoded.request is None:
            return codec.encode_v1(outputs)
        return codec.encode_v2(decoded.request, outputs, decoded.outputs, self.name, self.version)

    def _check(self, rows: np.ndarray) -> np.ndarray:
        try:
            return self.predictor.check_input(rows) if self.predictor else rows
        except InputError as e:
            raise InvalidInput(str(e)) from e

    def _forward(self, rows: np.ndarray) -> Outputs:
        active = self._active  # read once: a swap between these lines cannot mix two versions
        assert active is not None
        outputs = active.predictor.predict(rows)
        if active.drift is not None:
            active.drift.observe(rows, outputs)
        return outputs

    def _drift_monitor(self, source: ModelSource, config: ModelConfig) -> DriftMonitor | None:
        if not self.settings.drift:
            return None
        profile = load_profile(source.directory)
        if profile is None:
            logger.warning("model %s version %s has no data profile: drift is not measured", self.name,
                           source.version)
            return None
        try:
            monitor = DriftMonitor(profile, config.feature_names, config.kind, config.classes, self.drift_config)
        except (ValueError, KeyError, TypeError) as e:
            logger.warning("model %s version %s: drift is not measured, unusable data profile: %s",
                           self.name, source.version, e)
            return None
        monitor.start()
        return monitor

    def _follow_alias(self) -> None:
        interval = self.settings.reload_interval_s
        if not interval:
            return
        if not is_alias_uri(self.settings.model_uri):
            logger.warning("reload_interval_s needs a models:/NAME@ALIAS URI; %s is served as it is",
                           self.settings.model_uri or self.settings.model_dir)
            return
        threading.Thread(target=self._reload_loop, args=(interval,), name="pillars-reload", daemon=True).start()
        logger.info("following %s every %gs", self.settings.model_uri, interval)

    def _reload_loop(self, interval: float) -> None:
        while not self._stop_reloading.wait(interval):
            try:
                self.reload_if_moved()
            except Exception as e:  # the registry may be down for a while: keep serving, retry next time
                logger.error("model %s: reloading %s failed, still serving version %s: %s",
                             self.name, self.settings.model_uri, self.version, e)

    def _warm_up(self) -> None:
        assert self.predictor is not None and self.batcher is not None
        rows = np.zeros((min(self.settings.max_batch_size, 8), self.config.n_features), dtype=np.float32)
        self.batcher.run_sync(rows)

    def _observe_batch(self, rows: np.ndarray, outputs: dict[str, np.ndarray], n_requests: int,
                       seconds: float) -> None:
        metrics.BATCH_SIZE.labels(self.name).observe(len(rows))
        metrics.BATCH_REQUESTS.labels(self.name).observe(n_requests)
        metrics.INFERENCE_SECONDS.labels(self.name).observe(seconds)
        metrics.FEATURES.observe(self.name, rows)
        metrics.observe_predictions(self.name, outputs)

