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
(a champion's successor does): one whose input signature differs is refused, not swapped in. A version that
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
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from kserve import Model
from kserve.errors import InferenceError, ModelNotFound
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.infer_type import InferResponse

from pillars.components.devices import pick_device
from pillars.components.task.contract import InputError, Signature, TensorSpec, numpy_dtype
from pillars.components.errors import ConfigError
from pillars.components.model.predictor import Predictor, load_predictor, load_profile
from pillars.serving.protocol import codec
from pillars.serving.monitoring import metrics
from pillars.serving.batching import Batcher, Outputs
from pillars.serving.monitoring import feedback as ground_truth
from pillars.serving.monitoring import performance
from pillars.serving.monitoring.drift import DriftConfig, DriftMonitor
from pillars.serving.monitoring.performance import AccuracyEstimator
from pillars.serving.monitoring.shadow import SHADOW, ShadowRunner, predictions_of
from pillars.serving.errors import NonFiniteOutput, ServingError, VersionNotFound
from pillars.serving.settings import ServingSettings
from pillars.serving.storage import (
    ModelSource,
    discard,
    is_alias_uri,
    registry_version,
    remove_stale_downloads,
    resolve_model,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Active:
    """What answers requests now; replaced as a whole when a new version is swapped in."""

    predictor: Predictor
    drift: DriftMonitor | None
    estimator: AccuracyEstimator | None = None


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
        self.drift_config = DriftConfig(
            method=settings.drift_method, threshold=settings.drift_threshold, share=settings.drift_share,
            window=settings.drift_window, min_rows=min(settings.drift_min_rows, settings.drift_window),
            interval_s=settings.drift_interval_s)
        self.version_listeners: list[Callable[[str, str], None]] = []
        """Called with (model name, new version) after a hot reload (the server's metric labels)."""
        self._active: _Active | None = None
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
        self._active = _Active(self.predictor, self._drift_monitor(self.source, self.predictor),
                               self._estimator(self.version, self.predictor))
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
                    self.predictor.config.task, self.predictor.task.kind, describe_inputs(self.signature.inputs),
                    f"by {self.drift.method}" if self.drift else "off")
        self._follow_alias()
        return self.ready

    def _start_shadow(self) -> None:
        """Load ``--shadow_uri`` (same inputs as the served model) and start running it in shadow.

        Raises:
            pillars.components.errors.ConfigError: it cannot be loaded, or takes other inputs.
        """
        assert self.predictor is not None
        source = resolve_model(self.settings.shadow_uri)
        try:
            predictor = load_predictor(source.directory, device=self.device, onnx_threads=self._onnx_threads())
            _check_same_inputs(self.predictor.signature, predictor.signature, f"{source.version} (shadow)")
        except BaseException:
            discard(source)
            raise
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
        self.predictor = load_predictor(self.source.directory, device=device, onnx_threads=self._onnx_threads())
        self._active = _Active(self.predictor, None)
        self.batcher = Batcher(self._forward, self.settings.max_batch_size, self.settings.max_latency_ms,
                               on_batch=self._observe_batch, max_queued_rows=self.settings.max_queued_rows,
                               isolate=(InputError,), max_queue_wait_ms=self.settings.max_queue_wait_ms)
        try:  # before the drift monitor exists: not traffic
            self._warm_up(self.predictor, self.batcher.run_sync)
        except Exception as e:
            self.batcher.close()
            raise ConfigError(f"model {self.name} version {self.version} loads but cannot run a batch of "
                              f"placeholder inputs ({describe_inputs(self.signature.inputs)}; -1 dimensions "
                              f"{WARM_UP_LENGTH} long): {type(e).__name__}: {whole_message(e)}; check that the "
                              "task's signature matches what its network takes (export an optimised variant "
                              "again, or serve the PyTorch version)") from e

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
            predictor = self._load_candidate(source)
        except ConfigError:
            discard(source)
            self._refused_version = source.version
            raise
        drift = self._drift_monitor(source, predictor)
        old_source, old_version, old_drift = self.source, self.version, self.drift
        estimator = self._estimator(source.version, predictor)
        self._active = _Active(predictor, drift, estimator)  # the swap: the next forward pass uses the new version
        self.predictor, self.source, self.version = predictor, source, source.version
        self._refused_version = None
        metrics.DRIFT.register_model(self.name, self.version, drift)
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

    def _load_candidate(self, source: ModelSource) -> Predictor:
        """Load and warm up a new version; refuse one whose input schema differs from the served one.

        Raises:
            ConfigError: the version cannot be loaded or run, or takes other inputs (counted by reason).
        """
        assert self.predictor is not None
        reason = "load"
        try:
            predictor = load_predictor(source.directory, device=self.device, onnx_threads=self._onnx_threads())
            reason = "schema"
            _check_same_inputs(self.predictor.signature, predictor.signature, source.version)
            reason = "warm_up"
            self._warm_up(predictor, predictor.predict_checked)
        except Exception as e:  # any failure of the candidate: the served version stays
            metrics.RELOAD_FAILURES.labels(self.name, reason).inc()
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(f"version {source.version} cannot be served ({reason}): "
                              f"{type(e).__name__}: {e}") from e
        return predictor

    def _onnx_threads(self) -> int | None:
        """``--cpu_threads`` for an ONNX session too (None, when unset: the ``PILLARS_ONNX_THREADS`` setting)."""
        return self.settings.cpu_threads or None

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
        _check_outputs(outputs, self.signature, payload.rows)
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

    def _estimator(self, version: str, predictor: Predictor) -> AccuracyEstimator | None:
        """The version's CBPE estimator (None, said in the log and the metrics, when it cannot estimate)."""
        estimator, status = performance.estimator_for(
            predictor.task.kind, predictor.config.extra, self.settings.performance_window,
            min(self.settings.performance_min_rows, self.settings.performance_window))
        threshold = predictor.task.thresholds.get("accuracy")
        performance.PERFORMANCE.register_model(self.name, version, estimator, status,
                                               None if threshold is None else float(threshold))
        if estimator is None:
            logger.info("model %s version %s: estimated accuracy %s", self.name, version, status)
        return estimator

    def _drift_monitor(self, source: ModelSource, predictor: Predictor) -> DriftMonitor | None:
        if not self.settings.drift:
            return None
        profile = load_profile(source.directory)
        if profile is None:
            logger.warning("model %s version %s has no data profile: drift is not measured", self.name,
                           source.version)
            return None
        try:
            monitor = DriftMonitor(profile, list(profile["features"]), predictor.task.kind,
                                   predictor.prep.get("classes"), self.drift_config,
                                   predictor.config.extra.get("feature_importance"))
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

    def _warm_up(self, predictor: Predictor, forward: Callable[[dict[str, np.ndarray]], Outputs]) -> None:
        """One small batch through ``forward``: placeholder values of every required input (zeros, short
        strings). A task that refuses placeholders (an unknown id) is not warmed up; nothing else fails."""
        inputs = placeholder_inputs(predictor.signature, min(self.settings.max_batch_size, 8))
        try:
            forward(inputs)
        except InputError as e:
            logger.info("model %s: no warm-up, the task refuses placeholder inputs: %s", self.name, e)

    def _observe_batch(self, rows: int, outputs: dict[str, np.ndarray], n_requests: int, seconds: float) -> None:
        metrics.BATCH_SIZE.labels(self.name).observe(rows)
        metrics.BATCH_REQUESTS.labels(self.name).observe(n_requests)
        metrics.INFERENCE_SECONDS.labels(self.name).observe(seconds)


WARM_UP_LENGTH = 16
"""How long the ``-1`` dimensions of the warm-up batch are (at most each input's ``max_length``)."""


def whole_message(error: BaseException) -> str:
    """Every line of an error's message on one line (ONNX Runtime puts the reason on its second line)."""
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__


def placeholder_inputs(signature: Signature, rows: int) -> dict[str, np.ndarray]:
    """Zeros (numbers) or ``"warm-up"`` (strings) for every required input; ``-1`` dimensions
    :data:`WARM_UP_LENGTH` long."""
    inputs = {}
    for spec in signature.inputs:
        if spec.optional:
            continue
        shape = (rows, *(min(spec.max_length, WARM_UP_LENGTH) if d == -1 else d for d in spec.shape))
        inputs[spec.name] = (np.full(shape, "warm-up") if spec.datatype == "BYTES"
                             else np.zeros(shape, dtype=numpy_dtype(spec.datatype)))
    return inputs


def describe_inputs(specs: tuple[TensorSpec, ...]) -> str:
    """``text BYTES [N], k INT64 [N] (optional)``: inputs for a log line or an error message."""
    return ", ".join(f"{s.name} {s.datatype} [{', '.join(['N', *map(str, s.shape)])}]"
                     f"{' (optional)' if s.optional else ''}" for s in specs)


def _input_contract(spec: TensorSpec) -> dict[str, Any]:
    """What a client relies on in an input: everything but its description."""
    return {k: v for k, v in dataclasses.asdict(spec).items() if k != "description"}


def _check_same_inputs(served: Signature, candidate: Signature, version: str) -> None:
    """Refuse a new version that takes other inputs than the served one (clients send the old schema)."""
    if [_input_contract(s) for s in served.inputs] != [_input_contract(s) for s in candidate.inputs]:
        raise ConfigError(f"version {version} takes other inputs ({describe_inputs(candidate.inputs)}; "
                          f"features {list(candidate.inputs[0].labels[:5])}) than the served one "
                          f"({describe_inputs(served.inputs)}; features {list(served.inputs[0].labels[:5])}); "
                          "refused")


def _check_outputs(outputs: Outputs, signature: Signature, rows: int) -> None:
    """Every output of the signature with one row per instance, and finite.

    Raises:
        InferenceError: the task's decode returned other outputs (the model's fault: 500).
        NonFiniteOutput: finite inputs gave NaN or Inf outputs, naming the rows (422).
    """
    wrong = [s.name for s in signature.outputs if s.name not in outputs or len(outputs[s.name]) != rows]
    if wrong:
        raise InferenceError(f"the model's outputs {wrong} are missing or have the wrong number of rows")
    floats = [array for array in outputs.values() if array.dtype.kind == "f"]
    if all(np.isfinite(array).all() for array in floats):  # the usual case: one check per output
        return
    bad = np.zeros(rows, dtype=bool)
    for array in floats:
        bad |= ~np.isfinite(array.reshape(len(array), -1)).all(axis=1)
    if bad.any():
        raise NonFiniteOutput(f"row(s) {np.flatnonzero(bad)[:5].tolist()} give NaN or Inf outputs: "
                              "their values are too large for the model")


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
