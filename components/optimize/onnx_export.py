"""ONNX export of a task's PyTorch model, checked against PyTorch, and int8 quantization of the graph.

- :func:`export_onnx`: ``torch.onnx.export`` (the dynamo exporter) with the task's encoded tensors as
  keyword arguments; the batch axis and every axis that varies between encodings stay dynamic. The
  encodings compared include rows at several lengths of every ``-1`` dimension of the signature
  (:mod:`pillars.components.optimize.lengths`), so a test split padded to one length does not fix that length in
  the graph. The graph's output must equal PyTorch's within :class:`Tolerance` on other batch sizes and
  on every probed length the PyTorch model answers; a graph that cannot take a length is refused.
- :func:`quantize_int8_dynamic`: ``onnxruntime.quantization.quantize_dynamic`` (int8 weights,
  activations quantized at run time); no calibration.
- :func:`quantize_int8_static`: ``quantize_static`` in QDQ format, per-channel int8 weights, activation
  ranges calibrated on rows of the train split (:class:`EncodedReader`); pays for convolutions.

``torch.ao.quantization`` is not used (deprecated in torch 2.13); the exporter's own Future/Deprecation
warnings are silenced around the export so a ``-W error`` run still exports.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_dynamic, quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process

from pillars.components.errors import DataError, PillarsError
from pillars.components.task.examples import row_count, take
from pillars.components.optimize.lengths import length_probes
from pillars.components.model.predictor import ORT_ERRORS, OnnxPredictor, TorchPredictor, onnx_session
from pillars.components.task import Examples, Task

EXPORT_ROWS = 8
"""Test rows whose encoding is the exporter's example input (and shows which axes vary)."""


class ExportError(PillarsError, RuntimeError):
    """A model cannot be exported to ONNX, or its graph does not compute what the module computes."""


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """How close the exported graph's output must be to PyTorch's: ``|onnx - torch| <= atol + rtol*|torch|``."""

    atol: float = 1e-4
    rtol: float = 1e-3


def answered_lengths(predictor: TorchPredictor, inputs: Examples) -> dict[int, Examples]:
    """:func:`~pillars.components.optimize.lengths.length_probes` of ``inputs`` that the PyTorch model answers
    (a length its own ``encode`` or module refuses is not one a variant must answer)."""
    answered = {}
    for length, rows in length_probes(predictor.signature, inputs).items():
        try:
            predictor.predict_checked(rows)
        except Exception:  # any refusal (InputError, a shape error in the module) rules the length out
            continue
        answered[length] = rows
    return answered


def _varying_axes(task: Task, prep: Mapping[str, Any], batches: Sequence[Examples]) -> dict[str, set[int]]:
    """Per encoded tensor, the axes whose length changes between encodings of ``batches`` and of single
    rows of the first (the batch axis, sequence lengths): those stay dynamic in the exported graph."""
    inputs = batches[0]
    n = row_count(inputs)
    encodings = [task.encode(rows, prep) for rows in batches] + [
        task.encode(take(inputs, slice(i, i + 1)), prep) for i in range(min(n, EXPORT_ROWS))]
    axes: dict[str, set[int]] = {}
    for name, tensor in encodings[0].items():
        shapes = {tuple(e[name].shape) for e in encodings if name in e}
        axes[name] = {d for d in range(tensor.dim()) if len({s[d] for s in shapes if len(s) > d}) > 1}
    return axes


def _exporter_reason(error: BaseException) -> str:
    """The exporter's own one-line reason (its messages are pages long, the cause under a summary)."""
    text = str(error)
    if "## Exception summary" in text:
        after = text.split("## Exception summary", 1)[1]
        lines = [line.strip() for line in after.splitlines() if line.strip()]
        if lines:
            return lines[0][:300]
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
    return first[:300]


def export_onnx(predictor: TorchPredictor, inputs: Examples, path: str | Path,
                tolerance: Tolerance = Tolerance()) -> Path:
    """Export the predictor's module to ONNX at ``path`` and prove it computes the same head.

    The example input is ``task.encode`` of the first :data:`EXPORT_ROWS` rows of ``inputs``; the graph
    takes the encoded tensors by name. An axis is dynamic when it varies between encodings of those
    rows, of single rows and of the rows at each length the PyTorch model answers
    (:func:`answered_lengths`). Afterwards the graph runs on every row of ``inputs``, one by one, as one
    batch and at each of those lengths, and must match PyTorch within ``tolerance``.

    Raises:
        ExportError: the exporter cannot trace the module (naming the task, the module and the
            exporter's reason), or the graph's output differs from PyTorch's beyond ``tolerance``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    task, prep = predictor.task, predictor.prep
    what = f"{predictor.config.task} ({type(predictor.model).__name__})"
    if row_count(inputs) < 2:
        raise DataError(f"exporting {what} needs at least 2 example rows, got {row_count(inputs)}")
    example = take(inputs, slice(0, EXPORT_ROWS))
    encoded = {k: v.cpu() for k, v in task.encode(example, prep).items()}
    axes = _varying_axes(task, prep, [example, *answered_lengths(predictor, example).values()])
    dynamic = {name: {d: torch.export.Dim.DYNAMIC for d in sorted(axes.get(name, ()))} or None
               for name in encoded}
    model = copy.deepcopy(predictor.model).cpu().eval()
    try:
        with warnings.catch_warnings():
            # torch.export and onnxscript warn about their own internals (FutureWarning/DeprecationWarning):
            # not our code's, and they must not break a `-W error` run.
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            torch.onnx.export(model, (), str(path), kwargs=encoded, dynamo=True, dynamic_shapes=dynamic,
                              input_names=list(encoded), output_names=["head"], optimize=True,
                              external_data=False, verbose=False)
    except Exception as e:  # the exporter raises many types (ConversionError, dynamo's UserError, TypeError...)
        raise ExportError(f"cannot export {what} to ONNX: {_exporter_reason(e)}") from e
    check_onnx(predictor, path, inputs, tolerance)
    return path


def check_onnx(predictor: TorchPredictor, path: str | Path, inputs: Examples,
               tolerance: Tolerance = Tolerance()) -> float:
    """Run the graph at ``path`` on ``inputs`` (row by row, up to 16 rows, as one batch, and the first 16
    rows at every length of the signature's ``-1`` dimensions the module answers) beside the module;
    returns the largest absolute difference of their heads.

    Raises:
        ExportError: a head differs beyond ``tolerance``, or the graph does not run on a batch size or a
            length other than the export's (naming it).
    """
    session = onnx_session(path, threads=torch.get_num_threads())
    onnx_predictor = OnnxPredictor(predictor.task, predictor.prep, predictor.config, session)
    worst = 0.0
    first = take(inputs, slice(0, 16))
    batches = [(f"a batch of {row_count(inputs)}", inputs)] + [
        ("a batch of 1", take(inputs, slice(i, i + 1))) for i in range(min(row_count(inputs), 16))] + [
        (f"inputs of length {length}", rows) for length, rows in answered_lengths(predictor, first).items()]
    for what, rows in batches:
        encoded = predictor.task.encode(rows, predictor.prep)
        with torch.inference_mode():
            expected = predictor.forward(encoded).float().cpu().numpy()
        try:
            got = onnx_predictor.forward(encoded).float().numpy()
        except ORT_ERRORS as e:
            raise ExportError(f"the ONNX graph of {predictor.config.task} fails on {what}: "
                              f"{_exporter_reason(e)}") from e
        if got.shape != expected.shape:
            raise ExportError(f"the ONNX graph of {predictor.config.task} returns shape {list(got.shape)}, "
                              f"PyTorch {list(expected.shape)}")
        diff = np.abs(got - expected)
        worst = max(worst, float(diff.max(initial=0.0)))
        if not np.all(diff <= tolerance.atol + tolerance.rtol * np.abs(expected)):
            raise ExportError(f"the ONNX graph of {predictor.config.task} differs from PyTorch by up to "
                              f"{float(diff.max()):.3g} (tolerance: atol {tolerance.atol:g}, rtol "
                              f"{tolerance.rtol:g})")
    return worst


# ---- int8 --------------------------------------------------------------------------------------------------------

def has_convolutions(path: str | Path) -> bool:
    """Whether the graph at ``path`` has a ``Conv`` node (where static quantization pays)."""
    return any(node.op_type == "Conv" for node in onnx.load(str(path)).graph.node)


def _preprocessed(source: Path, work: Path) -> Path:
    """The graph with shapes inferred and folded, as onnxruntime's quantizer wants it."""
    target = work / "preprocessed.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        quant_pre_process(str(source), str(target), skip_symbolic_shape=False)
    return target


def quantize_int8_dynamic(source: str | Path, target: str | Path) -> Path:
    """int8 weights (per tensor), activations quantized at run time: ``quantize_dynamic``."""
    source, target = Path(source), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = target.parent / ".work"
    work.mkdir(exist_ok=True)
    try:
        quantize_dynamic(_preprocessed(source, work), target, weight_type=QuantType.QInt8)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


class EncodedReader(CalibrationDataReader):
    """Feeds the quantizer's calibration the task's encoded tensors of some sets of rows (one set per
    length of a variable input), batch by batch."""

    def __init__(self, task: Task, prep: Mapping[str, Any], sets: Sequence[Examples], names: Sequence[str],
                 batch_size: int = 32) -> None:
        self.batches: Iterator[dict[str, np.ndarray]] = iter([
            {k: v.cpu().numpy() for k, v in task.encode(take(rows, slice(i, i + batch_size)), prep).items()
             if k in names}
            for rows in sets for i in range(0, row_count(rows), batch_size)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def quantize_int8_static(source: str | Path, target: str | Path, task: Task, prep: Mapping[str, Any],
                         calibration: Mapping[str, Examples]) -> Path:
    """QDQ int8 with per-channel weights and activation ranges calibrated (min/max) on ``calibration``:
    named sets of rows (the train rows, and the train rows at each length of a variable input), so the
    ranges cover every length the graph will see.

    Raises:
        DataError: there is no calibration set, or one is empty (naming it).
    """
    empty = [name for name, rows in calibration.items() if row_count(rows) == 0]
    if empty or not calibration:
        raise DataError(f"the calibration set for static int8 quantization has no rows "
                        f"({', '.join(empty) or 'no set given'})")
    source, target = Path(source), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = target.parent / ".work"
    work.mkdir(exist_ok=True)
    try:
        model = _preprocessed(source, work)
        names = [i.name for i in onnx.load(str(model)).graph.input]
        quantize_static(model, target, EncodedReader(task, prep, list(calibration.values()), names),
                        quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target
