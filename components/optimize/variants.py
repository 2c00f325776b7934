"""Inference optimisation of a saved model: ONNX export, int8 quantization, pruning and distillation,
each variant proved against the original on the same test split before anyone may register it.

The variants are made by :mod:`pillars.components.optimize.onnx_export` (export, int8) and
:mod:`pillars.components.optimize.shrink` (pruning, distillation); this module judges them. Plain functions on
the task API: any :class:`~pillars.components.task.Task` whose model loads as a
:class:`~pillars.components.model.predictor.TorchPredictor`. Every variant is saved in the v2 format
(``config.json`` names its framework; ``extra`` says which variant and which parent) and evaluated
through :func:`~pillars.components.model.predictor.load_predictor`, the path the server runs, with the task's
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
answers (:mod:`pillars.components.optimize.lengths`): a variant that refuses a length, or scores worse on it,
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pillars.components.errors import ConfigError, DataError, PillarsError, one_line
from pillars.components.task.examples import input_columns, row_count, take
from pillars.components.optimize.lengths import with_length
from pillars.components.optimize.onnx_export import (ExportError, Tolerance, answered_lengths, export_onnx,
                                            has_convolutions, quantize_int8_dynamic, quantize_int8_static)
from pillars.components.model.predictor import (ONNX_FILE, PROFILE_FILE, Predictor, TorchPredictor, load_predictor,
                                                locate_model_dir, save_model, save_onnx_model)
from pillars.components.optimize.report import (ORIGINAL, STATES, Footprint, Guard, OptimizeReport, Speed,
                                                VariantResult, footprint, measure_speeds)
from pillars.components.optimize.shrink import FitParams, count_parameters, distill, prune_model
from pillars.components.task import Dataset, Examples, Outputs, Task
from pillars.components.deploy.triton import write_repository

__all__ = ["ExportError", "FitParams", "Footprint", "Guard", "ORIGINAL", "OptimizeParams", "OptimizeReport", "STATES",
           "Speed", "Tolerance", "VARIANTS", "VariantResult", "footprint", "measure_speeds", "optimize_model"]

logger = logging.getLogger(__name__)

VARIANTS = ("onnx", "onnx-int8", "onnx-int8-static", "pruned", "distilled")
"""Every variant :func:`optimize_model` can make, in the order it makes them."""
TRITON_FOLDER = "triton"
"""Subfolder of an ONNX variant holding its Triton model repository (:mod:`pillars.components.deploy.triton`)."""


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


class _Optimization:
    """One call of :func:`optimize_model`: the original, loaded once, and what judging a variant needs."""

    def __init__(self, model_dir: Path, data: Dataset, out_dir: Path, params: OptimizeParams, parent: str) -> None:
        self.predictor = load_predictor(model_dir)
        if not isinstance(self.predictor, TorchPredictor):
            raise ConfigError(f"{parent or model_dir} is a {self.predictor.config.framework} model (variant "
                              f"{self.predictor.config.extra.get('variant', '?')!r}); optimise its PyTorch parent "
                              "instead")
        self.model_dir, self.data, self.out_dir, self.params, self.parent = model_dir, data, out_dir, params, parent
        self.task, self.prep, self.config = self.predictor.task, self.predictor.prep, self.predictor.config
        self.test_inputs = input_columns(self.predictor.signature, data.test)
        if row_count(self.test_inputs) == 0:
            raise DataError("the test split is empty: the variants cannot be judged")
        self.metric = self.task.primary_metric
        self.loaded: dict[str, Predictor] = {}
        # The test split at each length of a variable input the original answers: the guard scores there too.
        self.lengths = {n: with_length(self.predictor.signature, data.test, n)
                        for n in answered_lengths(self.predictor, self.test_inputs)}
        self.exported: list[Path | ExportError] = []
        self.original = self._judge_original()
        self.extra_base = {"parent": parent, "metric": self.metric,
                           "original_metric": self.original.metrics[self.metric]}

    @property
    def label(self) -> str:
        return self.parent or str(self.model_dir)

    def _measured(self, result: VariantResult, loaded: Predictor) -> VariantResult:
        result.metrics = evaluate_predictor(loaded, self.data.test)
        result.metric = self.metric
        result.footprint = footprint(result.directory)
        self.loaded[result.variant] = loaded
        return result

    def _judge_original(self) -> VariantResult:
        result = self._measured(VariantResult(ORIGINAL, "torch", str(self.model_dir)), self.predictor)
        for n, rows in self.lengths.items():
            try:
                result.length_metrics[n] = evaluate_predictor(self.predictor, rows)[self.metric]
            except Exception as e:  # the task's evaluate may refuse a length its predict answers
                logger.info("%s: not judged at length %d: %s", self.label, n, one_line(e))
        return result

    def judge(self, result: VariantResult, loaded: Predictor) -> VariantResult:
        """Measure a variant and decide it against the original: the guard on the whole test split, and at
        every length the original answers."""
        result = self._measured(result, loaded)
        metric, guard, lower = self.metric, self.params.guard, self.task.lower_is_better
        ok, why = guard.judge(metric, lower, self.original.metrics[metric], result.metrics[metric])
        result.metric_delta = result.metrics[metric] - self.original.metrics[metric]
        for n, before in self.original.length_metrics.items():
            try:
                result.length_metrics[n] = after = evaluate_predictor(loaded, self.lengths[n])[metric]
            except Exception as e:  # a graph that cannot take this length: refused, naming it
                ok, why = False, f"answers no input of length {n} (the original does): {one_line(e)}"
                break
            ok_n, why_n = guard.judge(metric, lower, before, after)
            if ok and not ok_n:
                ok, why = False, f"at length {n}: {why_n}"
        if ok and result.length_metrics:
            why += f"; within the guard at lengths {', '.join(map(str, result.length_metrics))}"
        result.passed, result.reason = ok, why
        logger.info("%s: %s %s", self.label, result.variant, why)
        return result

    def onnx_graph(self) -> Path:
        """The fp32 graph, exported once for every ONNX variant (its failure: each one skipped)."""
        if not self.exported:
            try:
                self.exported.append(export_onnx(self.predictor, self.test_inputs,
                                                 self.out_dir / ".export" / ONNX_FILE, self.params.tolerance))
            except ExportError as e:
                self.exported.append(e)
        if isinstance(self.exported[0], ExportError):
            raise self.exported[0]
        return self.exported[0]

    def save_onnx(self, variant: str, graph: Path, **extra: Any) -> VariantResult:
        target = save_onnx_model(self.task, self.config.task, self.prep, graph, self.out_dir / variant,
                                 {**self.extra_base, "variant": variant, **extra})
        _copy_profile(self.model_dir, target)
        write_repository(target / TRITON_FOLDER, triton_name(self.parent), target / ONNX_FILE)
        return self.judge(VariantResult(variant, "onnx", str(target)), load_predictor(target))

    def save_torch(self, variant: str, task: Task, model: Any, **extra: Any) -> VariantResult:
        target = save_model(task, self.config.task, self.prep, model, self.out_dir / variant,
                            {**self.extra_base, "variant": variant, **extra})
        _copy_profile(self.model_dir, target)
        return self.judge(VariantResult(variant, "torch", str(target)), load_predictor(target))

    def make_onnx_int8_static(self) -> VariantResult:
        variant, source = "onnx-int8-static", self.onnx_graph()
        if not has_convolutions(source):
            return VariantResult(variant, skipped=True, reason="the graph has no convolution; dynamic int8 "
                                 "(onnx-int8) covers its MatMul/Gemm layers")
        rows = take(input_columns(self.predictor.signature, self.data.train), slice(0, self.params.calibration_rows))
        calibration = {"train rows": rows, **{f"train rows at length {n}": r for n, r in
                                              answered_lengths(self.predictor, rows).items()}}
        graph = _quantized(variant, self.config.task, lambda: quantize_int8_static(
            source, self.out_dir / ".int8-static" / ONNX_FILE, self.task, self.prep, calibration))
        return self.save_onnx(variant, graph, quantization="static QDQ int8, per-channel weights, "
                              f"MinMax calibration on {row_count(rows)} train rows")

    def make_distilled(self) -> VariantResult:
        params, student_task = self.params, self.task.student()
        if student_task is None:
            return VariantResult("distilled", skipped=True, reason=f"task {self.config.task} defines no student "
                                 "(Task.student returns None): cannot distill")
        student = distill(self.task, student_task, self.prep, self.predictor.model, self.data.train,
                          params.temperature, params.alpha, params.distill_fit)
        return self.save_torch("distilled", student_task, student,
                               teacher_parameters=count_parameters(self.predictor.model),
                               temperature=params.temperature, alpha=params.alpha, epochs=params.distill_fit.epochs)

    def make(self, variant: str) -> VariantResult:
        params = self.params
        if variant == "onnx":
            return self.save_onnx(variant, self.onnx_graph(), tolerance=dataclasses.asdict(params.tolerance))
        if variant == "onnx-int8":
            source = self.onnx_graph()
            graph = _quantized(variant, self.config.task,
                               lambda: quantize_int8_dynamic(source, self.out_dir / ".int8" / ONNX_FILE))
            return self.save_onnx(variant, graph, quantization="dynamic int8 weights (onnxruntime)")
        if variant == "onnx-int8-static":
            return self.make_onnx_int8_static()
        if variant == "pruned":
            model = prune_model(self.task, self.prep, self.predictor.model, self.data.train, params.sparsity,
                                params.prune_fit)
            return self.save_torch(variant, self.task, model, sparsity=params.sparsity,
                                   fine_tune_epochs=params.prune_fit.epochs)
        return self.make_distilled()

    def attempt(self, variant: str) -> VariantResult:
        """Make and judge one variant; a tool that cannot make it skips it, a crash fails it, and either
        way the others go on."""
        try:
            result = self.make(variant)
        except PillarsError as e:  # a tool cannot make it (exporter, quantizer, calibration set): skipped
            result = VariantResult(variant, skipped=True, reason=one_line(e))
        except Exception as e:  # making it crashed: this variant failed, the others go on
            logger.exception("%s: making %s failed", self.label, variant)
            result = VariantResult(variant, failed=True, reason=f"{type(e).__name__}: {one_line(e)}")
        if result.skipped or result.failed:
            self.loaded.pop(variant, None)
            shutil.rmtree(self.out_dir / variant, ignore_errors=True)
            logger.info("%s: %s %s: %s", self.label, variant, result.state, result.reason)
        return result


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
    out_dir = Path(out_dir)
    run = _Optimization(locate_model_dir(model_dir), data, out_dir, params, parent)
    results = [run.attempt(variant) for variant in VARIANTS if variant in params.variants]
    for scratch in (".export", ".int8", ".int8-static"):
        shutil.rmtree(out_dir / scratch, ignore_errors=True)
    speeds = measure_speeds(run.loaded, run.test_inputs, repeats=params.timing_repeats)
    for result in [run.original, *results]:
        result.speed = speeds.get(result.variant)
    return OptimizeReport(run.original, results)


def step_defaults() -> dict[str, Any]:
    """The optimize step's parameters at their defaults (all but the model and the tracking URI), for a
    pipeline that runs the step with no settings of its own (training's ``optimize=True``)."""
    params = OptimizeParams()
    return {"variants": ",".join(params.variants), "max_drop_points": params.guard.max_drop_points,
            "max_relative_worsening": params.guard.max_relative_worsening, "sparsity": params.sparsity,
            "prune_epochs": params.prune_fit.epochs, "distill_epochs": params.distill_fit.epochs,
            "temperature": params.temperature, "data_args": ""}
