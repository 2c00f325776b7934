"""How a variant is judged and what it costs: the accuracy guard, the footprint, the in-process speed, and
the report of one optimisation (:func:`pillars.components.optimize.variants.optimize_model` makes it)."""

from __future__ import annotations

import dataclasses
import statistics
import time
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper
from safetensors.numpy import load_file

from pillars.components.errors import ConfigError, DataError
from pillars.components.model.predictor import ONNX_FILE, WEIGHTS_FILE, Predictor, locate_model_dir
from pillars.components.task import Examples
from pillars.components.task.examples import row_count

ORIGINAL = "original"
"""The name the original model has among its variants in a report."""


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
