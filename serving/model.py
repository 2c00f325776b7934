"""The Pillars predictor as a KServe model: load by URI, warm up, then serve V1, V2 and gRPC.

``PillarsModel`` is a :class:`kserve.Model`; KServe's ``ModelServer`` runs it, so the same code runs
in an InferenceService pod and on a laptop. The hooks:

- ``load``: resolve the model (:mod:`pillars.serving.storage`), load it with its task
  (:func:`pillars.components.model.predictor.load_predictor`; a 0.1 model is translated), run one warm-up batch,
  start drift monitoring of the task's drift features against the model's data profile
  (:mod:`pillars.serving.monitoring.drift`), and only then set ``ready``. Everything the server checks and answers
  follows the model's :class:`pillars.components.task.Signature`.
- ``preprocess``: V2 requests (REST and gRPC) arrive parsed at the edge (:mod:`pillars.serving.protocol.rest`,
  :mod:`pillars.serving.protocol.grpc_server`, both through :mod:`pillars.serving.protocol.codec`, which refuses a wrong
  shape or too many rows before decoding); a V1 body is parsed here, by the same codec. Every request's
  arrays are then checked here by :func:`pillars.components.task.contract.check_inputs`, the check
  :meth:`Predictor.predict <pillars.components.model.predictor.Predictor.predict>` makes in MLflow pyfunc.
- ``predict``: submit the inputs to the micro-batcher (:mod:`pillars.serving.batching`), which runs the
  task's encode, the forward pass and decode without checking again; an :class:`InputError` from the
  task's encode (an unknown id, a too-short history) is 400 naming the input; outputs that are not finite
  are refused (422 naming the rows).
- ``postprocess``: encode outputs as the protocol the request came in, with the request's id (the V2 ``id``
  echoed or generated; V1 ``"id"``), remembered with its predictions for the feedback route
  (:mod:`pillars.serving.monitoring.feedback`). Each forward pass also feeds the version's estimated
  accuracy (:mod:`pillars.serving.monitoring.performance`) when the model carries a calibration.

With ``reload_interval_s`` and a ``models:/NAME@ALIAS`` URI, a background thread follows the alias:
when it moves, the new version is downloaded, loaded and warmed up off the request path, then swapped
in with one attribute assignment (batches already running finish on the old weights; no request fails),
with a fresh drift window against the new version's profile. The new version must take the same inputs
(a champion's successor does): one whose input signature differs is refused, not swapped in
(:mod:`pillars.serving.versions` loads, checks and warms up each version). A version that
failed to load or was refused is not tried again until the alias moves; whatever a failed attempt
downloaded is removed at once. Each refusal counts in ``pillars_model_reload_failures_total{reason}``.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from kserve import Model
from kserve.errors import InferenceError, ModelNotFound
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.infer_type import InferResponse

from pillars.components.devices import pick_device
from pillars.components.task.contract import InputError, Signature
from pillars.components.errors import ConfigError
from pillars.components.model.predictor import Predictor, load_predictor
from pillars.serving.protocol import codec
from pillars.serving.monitoring import metrics
from pillars.serving.batching import Batcher, Outputs
from pillars.serving.monitoring import feedback as ground_truth
from pillars.serving.monitoring.drift import DriftMonitor
from pillars.serving.monitoring.shadow import SHADOW, ShadowRunner, predictions_of
from pillars.serving.errors import ServingError, VersionNotFound
from pillars.serving.settings import ServingSettings
from pillars.serving import versions
from pillars.serving.storage import (
    ModelSource,
    discard,
    is_alias_uri,
    registry_version,
    remove_stale_downloads,
    resolve_model,
)

logger = logging.getLogger(__name__)


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
        self.device = torch.device("cpu")
        self.batcher: Batcher | None = None
        self.drift_config = versions.drift_config(settings)
        self.version_listeners: list[Callable[[str, str], None]] = []
        """Called with (model name, new version) after a hot reload (the server's metric labels)."""
        self._active: versions.ServedVersion | None = None
        self._stop_reloading = threading.Event()
        self._refused_version: str | None = None
        """A version that failed to load or was refused: not tried again until the alias moves."""
        self.memory = ground_truth.PredictionMemory(settings.feedback_memory_rows)
        """Recent predictions by request id, joined with the labels of :attr:`feedback`."""
        self.feedback: ground_truth.FeedbackLog | None = None
        self.shadow: ShadowRunner | None = None
        self._shadow_source: ModelSource | None = None

    @property
    def drift(self) -> DriftMonitor | None:
        """The drift monitor of the version being served (None: off, or the model has no profile)."""
        return self._active.drift if self._active else None

    @property
    def signature(self) -> Signature:
        """The served version's inputs and outputs."""
        if self.predictor is None:
            raise InferenceError(f"model {self.name} is not loaded")
        return self.predictor.signature

    def load(self) -> bool:
        """Download and load the model, run a warm-up batch, then mark the model ready.

        Raises:
            pillars.components.errors.ConfigError: the model cannot be found or read.
        """
        started = time.perf_counter()
        device = self.device = pick_device(self.settings.device)
        if self.settings.cpu_threads and device.type == "cpu":
            torch.set_num_threads(self.settings.cpu_threads)
        model_dir = str(self.settings.model_dir) if self.settings.model_dir else None
        remove_stale_downloads()
        self.source = resolve_model(self.settings.model_uri, model_dir)
        self.version = self.source.version
        try:
            self._load_and_warm_up(device)
        except BaseException:
            discard(self.source)  # a model that cannot be served leaves no copy behind
            raise
        self._active = versions.monitored(self.name, self.source, self.predictor, self.drift_config, self.settings)
        metrics.DRIFT.register_model(self.name, self.version, self.drift)
        self.feedback = ground_truth.FeedbackLog(
            self.name, self.settings.feedback_dir, self.predictor.task.kind,
            self.predictor.prep.get("classes"), self.settings.feedback_max_labels, self.settings.feedback_max_batch)
        ground_truth.FEEDBACK.register_model(self.name, self.feedback)
        if self.settings.shadow_uri:
            self._start_shadow()
        self.ready = True
        logger.info("model %s version %s loaded from %s on %s in %.2fs (task %s, kind %s, inputs %s, drift %s)",
                    self.name, self.version, self.source.uri, device, time.perf_counter() - started,
                    self.predictor.config.task, self.predictor.task.kind,
                    versions.describe_inputs(self.signature.inputs),
                    f"by {self.drift.method}" if self.drift else "off")
        self._follow_alias()
        return self.ready

    def _start_shadow(self) -> None:
        """Load ``--shadow_uri`` (same inputs as the served model) and start running it in shadow.

        Raises:
            pillars.components.errors.ConfigError: it cannot be loaded, or takes other inputs.
        """
        assert self.predictor is not None
        source, predictor = versions.load_shadow(self.predictor.signature, self.device, self.settings)
        self._shadow_source = source
        self.shadow = ShadowRunner(self.name, source.version, predictor, self.settings.feedback_memory_rows)
        SHADOW.register_model(self.name, self.shadow)
        logger.info("model %s: version %s from %s runs in shadow", self.name, source.version, source.uri)

    def _load_and_warm_up(self, device: torch.device) -> None:
        """Load the predictor of ``self.source`` and run a warm-up batch through a new batcher.

        Raises:
            ConfigError: the model cannot be read, or cannot run a placeholder batch (its whole message on
                one line, and what to do).
        """
        assert self.source is not None
        # One thread budget for either runtime: --cpu_threads sizes torch and an ONNX variant's session alike.
        self.predictor = load_predictor(self.source.directory, device=device,
                                        onnx_threads=versions.onnx_threads(self.settings))
        self._active = versions.ServedVersion(self.predictor, None)
        self.batcher = Batcher(self._forward, self.settings.max_batch_size, self.settings.max_latency_ms,
                               on_batch=self._observe_batch, max_queued_rows=self.settings.max_queued_rows,
                               isolate=(InputError,), max_queue_wait_ms=self.settings.max_queue_wait_ms)
        try:  # before the drift monitor exists: not traffic
            versions.warm_up(self.name, self.predictor, self.batcher.run_sync, self.settings.max_batch_size)
        except Exception as e:
            self.batcher.close()
            raise ConfigError(f"model {self.name} version {self.version} loads but cannot run a batch of "
                              f"placeholder inputs ({versions.describe_inputs(self.signature.inputs)}; -1 "
                              f"dimensions {versions.WARM_UP_LENGTH} long): {type(e).__name__}: "
                              f"{versions.whole_message(e)}; check that the task's signature matches what its "
                              "network takes (export an optimised variant again, or serve the PyTorch version)") from e

    async def healthy(self) -> bool:
        """Loaded and answering: ready, with a batcher that has not been closed (KServe's readiness hook)."""
        return bool(self.ready) and self.batcher is not None and not self.batcher.closed

    def stop(self) -> None:
        self.ready = False
        self._stop_reloading.set()
        if self.drift is not None:
            self.drift.stop()
        if self.shadow is not None:
            self.shadow.stop()
        if self._shadow_source is not None:
            discard(self._shadow_source)
        if self.batcher is not None:
            self.batcher.close()
        if self.source is not None:
            discard(self.source)  # the downloaded copy, if any
        super().stop()

    def reload_if_moved(self) -> bool:
        """Load and swap in the version the alias points to now, if it is not the one served.

        Everything slow (registry lookup, download, load, warm-up) happens before the swap, in the
        caller's thread; the swap itself is one assignment read once per forward pass. A failed attempt
        removes what it downloaded; a version that cannot be loaded, or whose input schema differs from
        the served one, is refused and not tried again until the alias moves.

        Returns:
            True when a new version was swapped in.

        Raises:
            pillars.components.errors.ConfigError: the registry or the new version cannot be read, or the
                new version was refused (the old version keeps serving).
        """
        assert self.predictor is not None and self.source is not None
        try:
            version = registry_version(self.settings.model_uri)
        except ConfigError:
            metrics.RELOAD_FAILURES.labels(self.name, "registry").inc()
            raise
        if version in (self.version, self._refused_version):
            return False
        started = time.perf_counter()
        try:
            source = resolve_model(self.settings.model_uri)  # removes its download itself when it fails
        except ConfigError:
            metrics.RELOAD_FAILURES.labels(self.name, "download").inc()
            raise
        try:
            predictor = versions.load_candidate(self.name, self.predictor.signature, source, self.device,
                                                self.settings)
        except ConfigError:
            discard(source)
            self._refused_version = source.version
            raise
        old_source, old_version, old_drift = self.source, self.version, self.drift
        new = versions.monitored(self.name, source, predictor, self.drift_config, self.settings)
        self._active = new  # the swap: the next forward pass uses the new version
        self.predictor, self.source, self.version = predictor, source, source.version
        self._refused_version = None
        metrics.DRIFT.register_model(self.name, self.version, new.drift)
        for listener in self.version_listeners:
            listener(self.name, self.version)
        if old_drift is not None:
            old_drift.stop()
        discard(old_source)
        old_source = old_drift = None
        gc.unfreeze()  # the old version's objects may be frozen (pillars.serving.server.freeze_heap)
        gc.collect()
        gc.freeze()
        logger.info("model %s: %s now points to version %s (was %s); loaded and swapped in %.2fs",
                    self.name, self.settings.model_uri, self.version, old_version, time.perf_counter() - started)
        return True

    def get_input_types(self) -> list[dict[str, Any]]:
        return codec.tensor_metadata(self.signature.inputs)

    def get_output_types(self) -> list[dict[str, Any]]:
        return codec.tensor_metadata(self.signature.outputs, inputs=False)

    async def preprocess(self, payload: dict[str, Any] | codec.Batch,
                         headers: dict[str, str] | None = None) -> codec.Batch:
        """The request's inputs checked against the signature (every protocol): a V2 request arrives as a
        :class:`codec.Batch` parsed at the edge, a V1 body is parsed here.

        Raises:
            InputError: the inputs do not fit the signature (names, types, shapes, NaN/Inf, no rows).
            TooManyRows: more than ``max_rows`` instances.
        """
        if not isinstance(payload, codec.Batch):
            if isinstance(payload, bytes):  # KServe leaves a body whose Content-Type is not JSON undecoded
                payload = codec.parse_json(payload, self.signature, self.settings.max_rows)
            payload = codec.decode_v1(payload, self.signature, self.settings.max_rows)
        assert self.predictor is not None
        return dataclasses.replace(payload, inputs=self.predictor.check(payload.inputs))

    def validate(self, payload: Any) -> Any:
        return payload  # checked once, in preprocess

    async def predict(self, payload: codec.Batch, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> tuple[Outputs, codec.Batch]:
        """Run the batch through the micro-batcher; returns the outputs and what ``postprocess`` needs.

        Raises:
            Overloaded: the batcher's queue is full (503 / RESOURCE_EXHAUSTED).
            InputError: the task's encode refused an input (400 / INVALID_ARGUMENT, naming it).
            NonFiniteOutput: finite inputs gave NaN or Inf outputs (422 naming the rows).
            InferenceError: the forward pass failed (a server error, 500 / INTERNAL).
        """
        assert self.batcher is not None
        try:
            outputs = await self.batcher.submit(payload.inputs)
        except (ServingError, InputError):  # the client's: an unknown id, a too-short history ...
            raise
        except Exception as e:  # a model failure is ours, not the client's
            logger.exception("forward pass failed")
            raise InferenceError(f"inference failed: {type(e).__name__}") from e
        versions.check_outputs(outputs, self.signature, payload.rows)
        return outputs, payload

    async def postprocess(self, result: Any, headers: dict[str, str] | None = None,
                          response_headers: dict[str, str] | None = None) -> dict[str, Any] | InferResponse:
        """Encode the outputs in the protocol of the request (V1 dict, or V2 ``InferResponse``)."""
        outputs, batch = self.prepare_response(result)
        if batch.protocol == "v1":
            return codec.encode_v1(outputs, self.signature) | {"id": batch.request_id}
        return codec.encode_v2(batch, outputs, self.signature, self.name, self.version)

    def _remember(self, request_id: str, outputs: Outputs, batch: codec.Batch) -> None:
        """Keep the prediction served for ``request_id`` for the feedback route to score its label."""
        predictions = predictions_of(outputs)
        if predictions is not None:
            self.memory.remember(request_id, self.version, predictions, batch.inputs)
            if self.shadow is not None:
                self.shadow.submit(request_id, batch.inputs, predictions)

    def prepare_response(self, result: tuple[Outputs, codec.Batch]) -> tuple[Outputs, codec.Batch]:
        """What every answered request goes through just before its response is encoded, on every path
        (``postprocess``, and :mod:`pillars.serving.protocol.fast_path`, which encodes V2 itself): the request
        id (the client's, else a new one: every response carries one, the feedback key) and the prediction
        remembered under it."""
        outputs, batch = result
        if not batch.request_id:
            batch = dataclasses.replace(batch, request_id=uuid.uuid4().hex)
        self._remember(batch.request_id, outputs, batch)
        return outputs, batch

    def _forward(self, inputs: dict[str, np.ndarray]) -> Outputs:
        active = self._active  # read once: a swap between these lines cannot mix two versions
        assert active is not None
        outputs = active.predictor.predict_checked(inputs)  # checked in preprocess
        if active.drift is not None and not active.drift.failed:
            try:
                names, rows = active.predictor.drift_rows(inputs)
            except Exception as e:  # monitoring must not fail a request
                active.drift.fail(f"the task's drift features failed: {type(e).__name__}: {e}")
            else:
                active.drift.observe_named(names, rows, outputs)
        if active.estimator is not None:
            active.estimator.observe(outputs)
        return outputs

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

    def _observe_batch(self, rows: int, outputs: dict[str, np.ndarray], n_requests: int, seconds: float) -> None:
        metrics.BATCH_SIZE.labels(self.name).observe(rows)
        metrics.BATCH_REQUESTS.labels(self.name).observe(n_requests)
        metrics.INFERENCE_SECONDS.labels(self.name).observe(seconds)


def served_model(dataplane: DataPlane, name: str, version: str | None = None) -> PillarsModel:
    """The model served as ``name``, checked to be the named ``version`` when one is given.

    Raises:
        ModelNotFound: no model of that name (404).
        VersionNotFound: the model serves another version (404).
    """
    model = dataplane.model_registry.get_model(name)
    if not isinstance(model, PillarsModel):
        raise ModelNotFound(name)
    if version is not None and version != model.version:
        raise VersionNotFound(f"model {name!r} serves version {model.version}, not version {version!r}")
    return model
