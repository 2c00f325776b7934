"""Inference optimisation of a saved model: ONNX export, int8 quantization, pruning and distillation,
each variant proved against the original on the same test split before anyone may register it.

The variants are made by :mod:`pillars.components.onnx_export` (export, int8) and
:mod:`pillars.components.shrink` (pruning, distillation); this module judges them. Plain functions on
the task API: any :class:`~pillars.components.task.Task` whose model loads as a
:class:`~pillars.components.predictor.TorchPredictor`. Every variant is saved in the v2 format
(``config.json`` names its framework; ``extra`` says which variant and which parent) and evaluated
through :func:`~pillars.components.predictor.load_predictor`, the path the server runs, with the task's
own :meth:`~pillars.components.task.Task.evaluate`.

Variants (:data:`VARIANTS`):

- ``onnx``: ``torch.onnx.export`` (the dynamo exporter) with the task's encoded tensors as keyword
  arguments; the batch axis and every axis that varies between encodings (token lengths) stay dynamic;
  the graph's output must equal PyTorch's within :class:`Tolerance` or the export fails.
- ``onnx-int8``: ``onnxruntime.quantization.quantize_dynamic`` (int8 weights, activations quantized
  at run time); no calibration needed.
- ``onnx-int8-static``: ``quantize_static`` in QDQ format, per-channel int8 weights, activations
  calibrated on rows of the train split; only for graphs with convolutions, where static activation
  scales pay (a graph without ``Conv`` skips it, saying so).
- ``pruned``: global L1 magnitude pruning (``torch.nn.utils.prune``) of every Linear/Conv weight to
  ``sparsity``, a short fine-tune on the task's own targets and loss with the masks on, then
  ``prune.remove``. The weights file stays dense: its zeros show in ``nonzero`` and ``compressed_bytes``.
- ``distilled``: the task's :meth:`~pillars.components.task.Task.student` trained on the original's soft
  targets (temperature ``T``: KL divergence of the softened distributions times ``T**2`` for
  classification, MSE to the teacher's head otherwise) mixed with the labels' own loss.

The accuracy guard (:class:`Guard`): a variant passes when its primary metric on the test split is at
most ``max_drop_points`` points (0.01 of a fraction metric) below the original's, or, for a
lower-is-better metric (RMSE, MASE), at most ``max_relative_worsening`` above it, relatively. Where the
signature has ``-1`` dimensions, the same holds on the test split cut to each probed length the original
answers (:mod:`pillars.components.lengths`): a variant that refuses a length, or scores worse on it,
is refused.

Each variant ends in one of four states (:attr:`VariantResult.state`): ``passed`` (within the guard),
``refused`` (outside it, with the delta), ``skipped`` (a tool could not make it: the exporter, the
quantizer, no student, an empty calibration set; with the tool's one-line reason) or ``failed`` (its
making crashed; the variant and the cause). One variant's failure never discards the others.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
import statistics
import time
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper
from safetensors.numpy import load_file

from pillars.components.errors import ConfigError, DataError, PillarsError, one_line
from pillars.components.examples import input_columns, row_count, take
from pillars.components.lengths import with_length
from pillars.components.onnx_export import (ExportError, Tolerance, answered_lengths, export_onnx,
                                            has_convolutions, quantize_int8_dynamic, quantize_int8_static)
from pillars.components.predictor import (ONNX_FILE, PROFILE_FILE, WEIGHTS_FILE, Predictor, TorchPredictor,
                                          load_predictor, locate_model_dir, save_model, save_onnx_model)
from pillars.components.shrink import FitParams, count_parameters, distill, prune_model
from pillars.components.task import Dataset, Examples, Outputs
from pillars.components.triton import write_repository

__all__ = ["ExportError", "FitParams", "Footprint", "Guard", "OptimizeParams", "OptimizeReport", "Speed",
           "Tolerance", "VARIANTS", "VariantResult", "footprint", "measure_speeds", "optimize_model"]

logger = logging.getLogger(__name__)

ORIGINAL = "original"
VARIANTS = ("onnx", "onnx-int8", "onnx-int8-static", "pruned", "distilled")
"""Every variant :func:`optimize_model` can make, in the order it makes them."""
TRITON_FOLDER = "triton"
"""Subfolder of an ONNX variant holding its Triton model repository (:mod:`pillars.components.triton`)."""


# ---- the guard ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Guard:
    """How much worse than the original a variant's primary test metric may be and still be registered.

    Attributes:
        max_drop_points: for a higher-is-better metric (a fraction: accuracy, F1, recall@k), the largest
            drop in points (1 point = 0.01).
        max_relative_worsening: for a lower-is-better metric (RMSE, MAE, MASE), the largest increase
            as a share of the original's value (0.05: at most 5% higher).
    """

    max_drop_points: float = 1.0
    max_relative_worsening: float = 0.05

    def __post_init__(self) -> None:
        if self.max_drop_points < 0 or self.max_relative_worsening < 0:
            raise ConfigError(f"guard bounds must be >= 0, got {self.max_drop_points} points and "
                              f"{self.max_relative_worsening} relative")

    def judge(self, metric: str, lower_is_better: bool, original: float, variant: float) -> tuple[bool, str]:
        """Whether ``variant`` is within the guard of ``original``, and a one-line reason."""
        delta = variant - original
        if not np.isfinite(variant):
            return False, f"{metric} is {variant}"
        if lower_is_better:
            bound = abs(original) * self.max_relative_worsening
            ok = delta <= bound + 1e-12
            share = delta / abs(original) if original else float("inf") if delta > 0 else 0.0
            return ok, (f"{metric} {original:.4f} -> {variant:.4f} ({share:+.1%}; guard: at most "
                        f"+{self.max_relative_worsening:.0%})")
        points = -delta * 100
        ok = points <= self.max_drop_points + 1e-9
        return ok, (f"{metric} {original:.4f} -> {variant:.4f} ({-points:+.2f} points; guard: at most "
                    f"-{self.max_drop_points:g})")


# ---- what a variant costs ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Footprint:
    """Size of a saved model.

    Attributes:
        parameters: weights (elements of the module's parameters, or of the graph's initializers).
        nonzero: of those, the ones that are not zero (pruning zeroes weights without removing them).
        size_bytes: the weights or graph file as saved (``model.safetensors`` or ``model.onnx``).
        compressed_bytes: that file zlib-compressed: what it costs to ship, where pruning's zeros pay.
    """

    parameters: int
    nonzero: int
    size_bytes: int
    compressed_bytes: int


def _file_bytes(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    return len(data), len(zlib.compress(data, 6))


def footprint(directory: str | Path) -> Footprint:
    """The :class:`Footprint` of a saved model (either framework)."""
    directory = locate_model_dir(directory)
    onnx_file = directory / ONNX_FILE
    if onnx_file.is_file():
        graph = onnx.load(str(onnx_file)).graph
        arrays = [numpy_helper.to_array(t) for t in graph.initializer]
        weights_file = onnx_file
    else:
        weights_file = directory / WEIGHTS_FILE
        arrays = list(load_file(str(weights_file)).values())
    size, compressed = _file_bytes(weights_file)
    return Footprint(parameters=int(sum(a.size for a in arrays)),
                     nonzero=int(sum(np.count_nonzero(a) for a in arrays)),
                     size_bytes=size, compressed_bytes=compressed)


@dataclasses.dataclass(frozen=True)
class Speed:
    """In-process speed of the served path (check, encode, forward, decode), median of repeats.

    Attributes:
        latency_ms_b1: milliseconds per request of one row.
        latency_ms_b64: milliseconds per request of 64 rows.
        throughput_b64: rows per second at batch 64.
    """

    latency_ms_b1: float
    latency_ms_b64: float
    throughput_b64: float


def measure_speeds(predictors: Mapping[str, Predictor], inputs: Examples, repeats: int = 30,
                   warmup: int = 3) -> dict[str, Speed]:
    """Time ``predict_checked`` of each predictor on 1 and on 64 rows drawn (cycled) from ``inputs``.

    The predictors take turns, one request each per round, so a load spike on a shared machine hits
    them all alike instead of whichever was being timed; each gets the median of ``repeats`` rounds.
    """
    n = row_count(inputs)
    if n == 0:
        raise DataError("no rows to time the model on")
    batches = {size: {k: v[np.arange(size) % n] for k, v in inputs.items()} for size in (1, 64)}
    times: dict[tuple[str, int], list[float]] = {(name, size): [] for name in predictors for size in batches}
    for round_ in range(warmup + repeats):
        for size, rows in batches.items():
            for name, predictor in predictors.items():
                start = time.perf_counter()
                predictor.predict_checked(rows)
                if round_ >= warmup:
                    times[(name, size)].append(time.perf_counter() - start)
    result = {}
    for name in predictors:
        b1, b64 = (statistics.median(times[(name, size)]) * 1000 for size in (1, 64))
        result[name] = Speed(latency_ms_b1=b1, latency_ms_b64=b64, throughput_b64=64_000.0 / b64)
    return result


# ---- the whole step ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class OptimizeParams:
    """What :func:`optimize_model` makes and how it judges it.

    Attributes:
        variants: which of :data:`VARIANTS` to make.
        guard: the accuracy guard.
        sparsity: share of Linear/Conv weights pruning zeroes.
        prune_fit: the fine-tune after pruning.
        distill_fit: the student's training.
        temperature: of the soft targets.
        alpha: weight of the soft targets against the labels' loss.
        calibration_rows: train rows static quantization calibrates on.
        tolerance: ONNX vs PyTorch.
        timing_repeats: requests timed per batch size (median).
    """

    variants: tuple[str, ...] = VARIANTS
    guard: Guard = Guard()
    sparsity: float = 0.5
    prune_fit: FitParams = FitParams(epochs=2, learning_rate=1e-4)
    distill_fit: FitParams = FitParams(epochs=15, learning_rate=2e-3)
    temperature: float = 2.0
    alpha: float = 0.5
    calibration_rows: int = 256
    tolerance: Tolerance = Tolerance()
    timing_repeats: int = 30

    def __post_init__(self) -> None:
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or not self.variants:
            raise ConfigError(f"unknown variant(s) {unknown or '(none given)'}; choose from {', '.join(VARIANTS)}")
        if not 0.0 < self.sparsity < 1.0:
            raise ConfigError(f"sparsity must be in (0, 1), got {self.sparsity}")
        if self.calibration_rows < 1:
            raise ConfigError(f"calibration_rows must be >= 1, got {self.calibration_rows}")


STATES = ("passed", "refused", "skipped", "failed")


@dataclasses.dataclass
class VariantResult:
    """One model judged on the test split: the original or a variant.

    ``skipped`` variants (a tool cannot make it: the exporter or the quantizer fails, a task without a
    student, static int8 of a graph without convolutions) and ``failed`` ones (making it crashed) carry
    only ``reason``; others carry their metrics, guard decision, footprint and speed.
    ``length_metrics`` holds the primary metric on the test split cut to each probed length of a
    variable input (empty when the signature has none).
    """

    variant: str
    framework: str = ""
    directory: str = ""
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    metric: str = ""
    metric_delta: float = 0.0
    passed: bool = False
    skipped: bool = False
    failed: bool = False
    reason: str = ""
    footprint: Footprint | None = None
    speed: Speed | None = None
    length_metrics: dict[int, float] = dataclasses.field(default_factory=dict)

    @property
    def state(self) -> str:
        """One of :data:`STATES`."""
        return ("failed" if self.failed else "skipped" if self.skipped else "passed" if self.passed
                else "refused")

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "state": self.state}


@dataclasses.dataclass
class OptimizeReport:
    """The original and its variants, judged on the same test split."""

    original: VariantResult
    variants: list[VariantResult]

    def passing(self) -> list[VariantResult]:
        return [v for v in self.variants if v.passed]

    def edge(self) -> VariantResult | None:
        """The variant the ``edge`` alias goes to: the lowest latency at batch 1 among those within the
        guard (ties: the smaller file); None when none passed."""
        ranked = [((v.speed.latency_ms_b1, v.footprint.size_bytes), i, v) for i, v in enumerate(self.passing())
                  if v.speed is not None and v.footprint is not None]
        return min(ranked)[2] if ranked else None

    def to_dict(self) -> dict[str, Any]:
        edge = self.edge()
        return {"original": self.original.to_dict(), "variants": [v.to_dict() for v in self.variants],
                "edge": edge.variant if edge else None}

    def summary(self) -> str:
        """One line per model: what it is, its metric delta, size and speed, and the decision."""
        lines = []
        for v in [self.original, *self.variants]:
            if v.skipped or v.failed:
                lines.append(f"{v.variant:<17} {v.state}: {v.reason}")
                continue
            assert v.footprint is not None and v.speed is not None
            verdict = "" if v.variant == ORIGINAL else ("  PASS" if v.passed else "  FAIL") + f" {v.reason}"
            lines.append(f"{v.variant:<17} {v.metric}={v.metrics.get(v.metric, float('nan')):.4f} "
                         f"size={v.footprint.size_bytes}B params={v.footprint.parameters} "
                         f"nonzero={v.footprint.nonzero} b1={v.speed.latency_ms_b1:.3f}ms "
                         f"b64={v.speed.throughput_b64:.0f}rows/s{verdict}")
        return "\n".join(lines)


def evaluate_predictor(predictor: Predictor, test: Examples) -> dict[str, float]:
    """The task's test metrics through the served path (``predict_checked``)."""

    def predict(examples: Examples) -> Outputs:
        return predictor.predict_checked(input_columns(predictor.signature, examples))

    return predictor.task.evaluate(predict, test, predictor.prep)


def _copy_profile(source: Path, target: Path) -> None:
    profile = source / PROFILE_FILE
    if profile.is_file():
        shutil.copyfile(profile, target / PROFILE_FILE)


def _quantized(variant: str, task: str, quantize: Callable[[], Path]) -> Path:
    """Run ``quantize``; a failure of onnxruntime's quantizer is an :class:`ExportError` naming the variant."""
    try:
        return quantize()
    except DataError:
        raise
    except Exception as e:  # the quantizer raises ValueError, KeyError, onnx and onnxruntime errors alike
        raise ExportError(f"cannot make {variant} of {task}: onnxruntime's quantizer failed: "
                          f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}") from e


def triton_name(parent: str) -> str:
    """The model's name in a Triton repository: the registered name of ``NAME/VERSION`` made folder-safe."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", parent.rpartition("/")[0] or parent).strip("-.")
    return name[:128] or "model"


def optimize_model(model_dir: str | Path, data: Dataset, out_dir: str | Path, params: OptimizeParams = OptimizeParams(),
                   parent: str = "") -> OptimizeReport:
    """Make the requested variants of the saved model in ``model_dir``, each in ``out_dir/<variant>``, and
    judge each against the original on ``data.test`` (the same split, the same ``task.evaluate``).

    Each ONNX variant's folder also holds a Triton model repository (``triton/<name>/config.pbtxt``,
    ``triton/<name>/1/model.onnx``) for KServe's stock Triton runtime.

    Args:
        data: the splits the original was trained and tested on (train: fine-tuning, distillation and
            calibration; test: the guard).
        parent: ``NAME/VERSION`` of the original, saved in each variant's ``config.json`` ``extra``.

    Returns:
        The report: every variant asked for, ``passed``, ``refused`` (outside the guard, with its delta),
        ``skipped`` (the tool's one-line reason: an export or quantization that fails, an empty
        calibration set) or ``failed`` (the crash's one line); a variant that is not passed leaves no folder.

    Raises:
        ConfigError: the model is not a PyTorch model (already a variant), or a parameter is invalid.
        DataError: the test split is empty.
    """
    model_dir = locate_model_dir(model_dir)
    out_dir = Path(out_dir)
    predictor = load_predictor(model_dir)
    if not isinstance(predictor, TorchPredictor):
        raise ConfigError(f"{parent or model_dir} is a {predictor.config.framework} model (variant "
                          f"{predictor.config.extra.get('variant', '?')!r}); optimise its PyTorch parent instead")
    task, prep, config = predictor.task, predictor.prep, predictor.config
    test_inputs = input_columns(predictor.signature, data.test)
    if row_count(test_inputs) == 0:
        raise DataError("the test split is empty: the variants cannot be judged")
    metric = task.primary_metric
    loaded_predictors: dict[str, Predictor] = {}

    # The test split at each length of a variable input the original answers: the guard scores there too.
    lengths = {n: with_length(predictor.signature, data.test, n) for n in answered_lengths(predictor, test_inputs)}

    def judge(result: VariantResult, loaded: Predictor) -> VariantResult:
        result.metrics = evaluate_predictor(loaded, data.test)
        result.metric = metric
        result.footprint = footprint(result.directory)
        if result.variant == ORIGINAL:
            for n, rows in lengths.items():
                try:
                    result.length_metrics[n] = evaluate_predictor(loaded, rows)[metric]
                except Exception as e:  # the task's evaluate may refuse a length its predict answers
                    logger.info("%s: not judged at length %d: %s", parent or model_dir, n, one_line(e))
            loaded_predictors[result.variant] = loaded
            return result
        ok, why = params.guard.judge(metric, task.lower_is_better, original.metrics[metric], result.metrics[metric])
        result.metric_delta = result.metrics[metric] - original.metrics[metric]
        for n, before in original.length_metrics.items():
            try:
                result.length_metrics[n] = after = evaluate_predictor(loaded, lengths[n])[metric]
            except Exception as e:  # a graph that cannot take this length: refused, naming it
                ok, why = False, f"answers no input of length {n} (the original does): {one_line(e)}"
                break
            ok_n, why_n = params.guard.judge(metric, task.lower_is_better, before, after)
            if ok and not ok_n:
                ok, why = False, f"at length {n}: {why_n}"
        if ok and result.length_metrics:
            why += f"; within the guard at lengths {', '.join(map(str, result.length_metrics))}"
        result.passed, result.reason = ok, why
        loaded_predictors[result.variant] = loaded
        logger.info("%s: %s %s", parent or model_dir, result.variant, why)
        return result

    original = judge(VariantResult(ORIGINAL, "torch", str(model_dir)), predictor)
    extra_base = {"parent": parent, "metric": metric, "original_metric": original.metrics[metric]}
    results: list[VariantResult] = []
    exported: list[Path | ExportError] = []

    def onnx_graph() -> Path:
        """The fp32 graph, exported once for every ONNX variant (its failure: each one skipped)."""
        if not exported:
            try:
                exported.append(export_onnx(predictor, test_inputs, out_dir / ".export" / ONNX_FILE,
                                            params.tolerance))
            except ExportError as e:
                exported.append(e)
        if isinstance(exported[0], ExportError):
            raise exported[0]
        return exported[0]

    def save_onnx(variant: str, graph: Path, **extra: Any) -> VariantResult:
        target = save_onnx_model(task, config.task, prep, graph, out_dir / variant,
                                 {**extra_base, "variant": variant, **extra})
        _copy_profile(model_dir, target)
        write_repository(target / TRITON_FOLDER, triton_name(parent), target / ONNX_FILE)
        return judge(VariantResult(variant, "onnx", str(target)), load_predictor(target))

    def make(variant: str) -> VariantResult:
        if variant == "onnx":
            return save_onnx(variant, onnx_graph(), tolerance=dataclasses.asdict(params.tolerance))
        if variant == "onnx-int8":
            source = onnx_graph()
            graph = _quantized(variant, config.task, lambda: quantize_int8_dynamic(source, out_dir / ".int8" / ONNX_FILE))
            return save_onnx(variant, graph, quantization="dynamic int8 weights (onnxruntime)")
        if variant == "onnx-int8-static":
            source = onnx_graph()
            if not has_convolutions(source):
                return VariantResult(variant, skipped=True, reason="the graph has no convolution; dynamic int8 "
                                     "(onnx-int8) covers its MatMul/Gemm layers")
            rows = take(input_columns(predictor.signature, data.train), slice(0, params.calibration_rows))
            calibration = {"train rows": rows, **{f"train rows at length {n}": r for n, r in
                                                  answered_lengths(predictor, rows).items()}}
            graph = _quantized(variant, config.task, lambda: quantize_int8_static(
                source, out_dir / ".int8-static" / ONNX_FILE, task, prep, calibration))
            return save_onnx(variant, graph, quantization="static QDQ int8, per-channel weights, "
                             f"MinMax calibration on {row_count(rows)} train rows")
        if variant == "pruned":
            model = prune_model(task, prep, predictor.model, data.train, params.sparsity, params.prune_fit)
            target = save_model(task, config.task, prep, model, out_dir / variant,
                                {**extra_base, "variant": variant, "sparsity": params.sparsity,
                                 "fine_tune_epochs": params.prune_fit.epochs})
            _copy_profile(model_dir, target)
            return judge(VariantResult(variant, "torch", str(target)), load_predictor(target))
        student_task = task.student()
        if student_task is None:
            return VariantResult(variant, skipped=True, reason=f"task {config.task} defines no student "
                                 "(Task.student returns None): cannot distill")
        student = distill(task, student_task, prep, predictor.model, data.train, params.temperature,
                          params.alpha, params.distill_fit)
        target = save_model(student_task, config.task, prep, student, out_dir / variant,
                            {**extra_base, "variant": variant, "teacher_parameters":
                             count_parameters(predictor.model), "temperature": params.temperature,
                             "alpha": params.alpha, "epochs": params.distill_fit.epochs})
        _copy_profile(model_dir, target)
        return judge(VariantResult(variant, "torch", str(target)), load_predictor(target))

    for variant in (v for v in VARIANTS if v in params.variants):
        try:
            result = make(variant)
        except PillarsError as e:  # a tool cannot make it (exporter, quantizer, calibration set): skipped
            result = VariantResult(variant, skipped=True, reason=one_line(e))
        except Exception as e:  # making it crashed: this variant failed, the others go on
            logger.exception("%s: making %s failed", parent or model_dir, variant)
            result = VariantResult(variant, failed=True, reason=f"{type(e).__name__}: {one_line(e)}")
        if result.skipped or result.failed:
            loaded_predictors.pop(variant, None)
            shutil.rmtree(out_dir / variant, ignore_errors=True)
            logger.info("%s: %s %s: %s", parent or model_dir, variant, result.state, result.reason)
        results.append(result)
    shutil.rmtree(out_dir / ".export", ignore_errors=True)
    for scratch in (".int8", ".int8-static"):
        shutil.rmtree(out_dir / scratch, ignore_errors=True)
    speeds = measure_speeds(loaded_predictors, test_inputs, repeats=params.timing_repeats)
    for result in [original, *results]:
        result.speed = speeds.get(result.variant)
    return OptimizeReport(original, results)


def step_defaults() -> dict[str, Any]:
    """The optimize step's parameters at their defaults (all but the model and the tracking URI), for a
    pipeline that runs the step with no settings of its own (training's ``optimize=True``)."""
    params = OptimizeParams()
    return {"variants": ",".join(params.variants), "max_drop_points": params.guard.max_drop_points,
            "max_relative_worsening": params.guard.max_relative_worsening, "sparsity": params.sparsity,
            "prune_epochs": params.prune_fit.epochs, "distill_epochs": params.distill_fit.epochs,
            "temperature": params.temperature, "data_args": ""}
