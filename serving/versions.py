"""One version of a model made ready to serve: loaded, checked to take the served inputs, warmed up, the
monitors that follow it (drift against its data profile, its estimated accuracy), and the outputs it must give
(:func:`check_outputs`: every output of the signature, one row per instance, finite).

:class:`pillars.serving.model.PillarsModel` loads its first version, a hot-reloaded successor and a shadow
through these functions; what answers requests is one :class:`ServedVersion`, replaced as a whole.

A successor must take the same inputs as the served version (clients send the old schema): one whose
input signature differs is refused (:func:`check_same_inputs`). A warm-up runs one small batch of
placeholder inputs (:func:`placeholder_inputs`); a task that refuses placeholders (an unknown id) is not
warmed up, and any other failure refuses the version. Monitoring never refuses a version: without a data
profile, or with an unusable one, drift is not measured (said in the log).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from kserve.errors import InferenceError

from pillars.components.errors import ConfigError
from pillars.components.model.predictor import Predictor, load_predictor, load_profile
from pillars.components.task.contract import InputError, Signature, TensorSpec, numpy_dtype
from pillars.serving.batching import Outputs
from pillars.serving.errors import NonFiniteOutput
from pillars.serving.monitoring import metrics, performance
from pillars.serving.monitoring.drift import DriftConfig, DriftMonitor
from pillars.serving.monitoring.performance import AccuracyEstimator
from pillars.serving.settings import ServingSettings
from pillars.serving.storage import ModelSource, discard, resolve_model

logger = logging.getLogger(__name__)

WARM_UP_LENGTH = 16
"""How long the ``-1`` dimensions of the warm-up batch are (at most each input's ``max_length``)."""


@dataclass(frozen=True)
class ServedVersion:
    """What answers requests now; replaced as a whole when a new version is swapped in."""

    predictor: Predictor
    drift: DriftMonitor | None
    estimator: AccuracyEstimator | None = None


def monitored(name: str, source: ModelSource, predictor: Predictor, config: DriftConfig,
              settings: ServingSettings) -> ServedVersion:
    """The version with its monitors started: drift against its data profile, and its accuracy estimator."""
    return ServedVersion(predictor, drift_monitor(name, source, predictor, config, settings),
                         accuracy_estimator(name, source.version, predictor, settings))


def drift_config(settings: ServingSettings) -> DriftConfig:
    """The drift monitors' configuration, from the serving settings.

    Raises:
        ValueError: the drift settings contradict each other.
    """
    return DriftConfig(method=settings.drift_method, threshold=settings.drift_threshold, share=settings.drift_share,
                       window=settings.drift_window, min_rows=min(settings.drift_min_rows, settings.drift_window),
                       interval_s=settings.drift_interval_s)


def load_candidate(name: str, served: Signature, source: ModelSource, device: torch.device,
                   settings: ServingSettings) -> Predictor:
    """Load and warm up a new version of model ``name``; refuse one whose inputs differ from ``served``.

    Raises:
        ConfigError: the version cannot be loaded or run, or takes other inputs (counted by reason in
            ``pillars_model_reload_failures_total``).
    """
    reason = "load"
    try:
        predictor = load_predictor(source.directory, device=device, onnx_threads=onnx_threads(settings))
        reason = "schema"
        check_same_inputs(served, predictor.signature, source.version)
        reason = "warm_up"
        warm_up(name, predictor, predictor.predict_checked, settings.max_batch_size)
    except Exception as e:  # any failure of the candidate: the served version stays
        metrics.RELOAD_FAILURES.labels(name, reason).inc()
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"version {source.version} cannot be served ({reason}): "
                          f"{type(e).__name__}: {e}") from e
    return predictor


def load_shadow(served: Signature, device: torch.device, settings: ServingSettings) -> tuple[ModelSource, Predictor]:
    """``--shadow_uri`` resolved and loaded; it must take the served inputs. Nothing is left behind on failure.

    Raises:
        ConfigError: it cannot be loaded, or takes other inputs.
    """
    source = resolve_model(settings.shadow_uri)
    try:
        predictor = load_predictor(source.directory, device=device, onnx_threads=onnx_threads(settings))
        check_same_inputs(served, predictor.signature, f"{source.version} (shadow)")
    except BaseException:
        discard(source)
        raise
    return source, predictor


def onnx_threads(settings: ServingSettings) -> int | None:
    """``--cpu_threads`` for an ONNX session too (None, when unset: the ``PILLARS_ONNX_THREADS`` setting)."""
    return settings.cpu_threads or None


def warm_up(name: str, predictor: Predictor, forward: Callable[[dict[str, np.ndarray]], Outputs],
            max_batch_size: int) -> None:
    """One small batch through ``forward``: placeholder values of every required input (zeros, short
    strings). A task that refuses placeholders (an unknown id) is not warmed up; nothing else fails."""
    inputs = placeholder_inputs(predictor.signature, min(max_batch_size, 8))
    try:
        forward(inputs)
    except InputError as e:
        logger.info("model %s: no warm-up, the task refuses placeholder inputs: %s", name, e)


def accuracy_estimator(name: str, version: str, predictor: Predictor,
                       settings: ServingSettings) -> AccuracyEstimator | None:
    """The version's CBPE estimator (None, said in the log and the metrics, when it cannot estimate)."""
    estimator, status = performance.estimator_for(
        predictor.task.kind, predictor.config.extra, settings.performance_window,
        min(settings.performance_min_rows, settings.performance_window))
    threshold = predictor.task.thresholds.get("accuracy")
    performance.PERFORMANCE.register_model(name, version, estimator, status,
                                           None if threshold is None else float(threshold))
    if estimator is None:
        logger.info("model %s version %s: estimated accuracy %s", name, version, status)
    return estimator


def drift_monitor(name: str, source: ModelSource, predictor: Predictor, config: DriftConfig,
                  settings: ServingSettings) -> DriftMonitor | None:
    """A started drift monitor of the version against its data profile (None: drift is off, or not measurable)."""
    if not settings.drift:
        return None
    profile = load_profile(source.directory)
    if profile is None:
        logger.warning("model %s version %s has no data profile: drift is not measured", name, source.version)
        return None
    try:
        monitor = DriftMonitor(profile, list(profile["features"]), predictor.task.kind,
                               predictor.prep.get("classes"), config,
                               predictor.config.extra.get("feature_importance"))
    except (ValueError, KeyError, TypeError) as e:
        logger.warning("model %s version %s: drift is not measured, unusable data profile: %s",
                       name, source.version, e)
        return None
    monitor.start()
    return monitor


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


def check_same_inputs(served: Signature, candidate: Signature, version: str) -> None:
    """Refuse a new version that takes other inputs than the served one (clients send the old schema).

    Raises:
        ConfigError: the inputs differ, naming both.
    """
    if [_input_contract(s) for s in served.inputs] != [_input_contract(s) for s in candidate.inputs]:
        raise ConfigError(f"version {version} takes other inputs ({describe_inputs(candidate.inputs)}; "
                          f"features {list(candidate.inputs[0].labels[:5])}) than the served one "
                          f"({describe_inputs(served.inputs)}; features {list(served.inputs[0].labels[:5])}); "
                          "refused")


def check_outputs(outputs: Outputs, signature: Signature, rows: int) -> None:
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
