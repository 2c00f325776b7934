"""The Pillars predictor as a KServe model: load by URI, warm up, then serve V1, V2 and gRPC.

``PillarsModel`` is a :class:`kserve.Model`; KServe's ``ModelServer`` runs it, so the same code runs
in an InferenceService pod and on a laptop. The hooks:

- ``load``: resolve the model (:mod:`serving.storage`), build the :class:`components.models.Predictor`,
  run one warm-up batch, and only then set ``ready``.
- ``preprocess``: decode the protocol payload into a checked float32 batch (:mod:`serving.codec`).
- ``predict``: submit the batch to the micro-batcher (:mod:`serving.batching`).
- ``postprocess``: encode outputs as the protocol the request came in.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from kserve import Model
from kserve.errors import InferenceError, InvalidInput
from kserve.protocol.infer_type import InferRequest, InferResponse

from components.models import InputError, ModelConfig, Predictor
from serving import codec, metrics
from serving.batching import Batcher
from serving.settings import ServingSettings
from serving.storage import ModelSource, resolve_model

logger = logging.getLogger("serving")


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
        settings: where the model is and how to batch it.
    """

    def __init__(self, name: str, settings: ServingSettings) -> None:
        super().__init__(name)
        self.settings = settings
        self.version = "1"
        self.source: ModelSource | None = None
        self.predictor: Predictor | None = None
        self.batcher: Batcher | None = None

    @property
    def config(self) -> ModelConfig:
        if self.predictor is None:
            raise InferenceError(f"model {self.name} is not loaded")
        return self.predictor.config

    def load(self) -> bool:
        """Download and load the model, run a warm-up batch, then mark the model ready.

        Raises:
            components.errors.ConfigError: the model cannot be found or read.
        """
        started = time.perf_counter()
        device = pick_device(self.settings.device)
        if self.settings.cpu_threads and device.type == "cpu":
            torch.set_num_threads(self.settings.cpu_threads)
        model_dir = str(self.settings.model_dir) if self.settings.model_dir else None
        self.source = resolve_model(self.settings.model_uri, model_dir)
        self.version = self.source.version
        self.predictor = Predictor.load(self.source.directory, device=device)
        self.batcher = Batcher(self.predictor.predict, self.settings.max_batch_size,
                               self.settings.max_latency_ms, on_batch=self._observe_batch)
        metrics.FEATURES.register_model(self.name, self.config.feature_names)
        self._warm_up()
        self.ready = True
        logger.info("model %s version %s loaded from %s on %s in %.2fs (kind=%s, features=%d)",
                    self.name, self.version, self.source.uri, device, time.perf_counter() - started,
                    self.config.kind, self.config.n_features)
        return self.ready

    def stop(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        super().stop()

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

