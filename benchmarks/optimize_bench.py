"""Optimisation benchmark (issue 11): fp32 PyTorch vs ONNX fp32 vs ONNX int8 (dynamic, static) vs pruned vs
distilled, side by side in one run on one machine.

    python benchmarks/optimize_bench.py [--task digits] [--epochs 15] [--repeats 50] [--out results.json]

The task (an entry point or ``package.module:attribute``; default ``digits``, the 1x8x8 CNN) is trained
in-process through the task API (tests/tasks/conftest.py ``train_in_process``), saved in the v2 format
and optimised with :func:`pillars.components.optimize.variants.optimize_model`: every variant is loaded through
``load_predictor`` (the server's loader) and judged on the same test split. Reported per model: the
primary test metric and its delta, parameters, nonzero parameters, file size (and zlib-compressed),
size relative to fp32, and the in-process latency of the served path (check, encode, forward, decode)
at batch 1 and 64, timed round-robin so load on a shared machine hits every model alike.

Served throughput at concurrency 64 is not measured here: the model server is being moved onto the
task API at the same time; once ``load_predictor`` is its loader it serves these folders unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pillars.components.optimize.variants import FitParams, OptimizeParams, optimize_model  # noqa: E402
from pillars.components.model.predictor import save_model  # noqa: E402
from pillars.components.task import load_task, task_reference  # noqa: E402
from tests.tasks.conftest import train_in_process  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="digits", help="task name or package.module:attribute")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--distill-epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    started = time.perf_counter()
    task = load_task(args.task)
    trained = train_in_process(task, epochs=args.epochs)
    params = OptimizeParams(distill_fit=FitParams(epochs=args.distill_epochs, learning_rate=2e-3),
                            timing_repeats=args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = save_model(task, task_reference(args.task), trained.prep, trained.model, Path(tmp) / "model")
        report = optimize_model(model_dir, trained.data, Path(tmp) / "variants", params, parent=f"{args.task}/1")
    fp32 = report.original.footprint
    assert fp32 is not None
    print(f"task {args.task}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{os.cpu_count()} CPUs; {time.perf_counter() - started:.0f} s")
    header = (f"{'model':<17} {report.original.metric:>9} {'delta':>7} {'params':>8} {'nonzero':>8} "
              f"{'bytes':>8} {'x fp32':>6} {'zlib':>8} {'b1 ms':>7} {'b64 ms':>7} {'rows/s b64':>10}  guard")
    print(header)
    rows = []
    for v in [report.original, *report.variants]:
        if v.skipped or v.failed:
            print(f"{v.variant:<17} {v.state}: {v.reason}")
            continue
        assert v.footprint is not None and v.speed is not None
        verdict = "-" if v.variant == "original" else ("pass" if v.passed else "FAIL")
        print(f"{v.variant:<17} {v.metrics[v.metric]:>9.4f} {v.metric_delta:>+7.4f} {v.footprint.parameters:>8} "
              f"{v.footprint.nonzero:>8} {v.footprint.size_bytes:>8} {v.footprint.size_bytes / fp32.size_bytes:>6.2f} "
              f"{v.footprint.compressed_bytes:>8} {v.speed.latency_ms_b1:>7.3f} {v.speed.latency_ms_b64:>7.3f} "
              f"{v.speed.throughput_b64:>10.0f}  {verdict}")
        rows.append(v.to_dict())
    edge = report.edge()
    print(f"edge: {edge.variant if edge else 'none within the guard'}")
    if args.out:
        args.out.write_text(json.dumps({"task": args.task, "rows": rows, "edge": edge.variant if edge else None},
                                       indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
