"""Served throughput (issue 11): the same model as PyTorch and as its ONNX variants, through our server.

    python benchmarks/onnx_serving_bench.py [--tasks breast_cancer,digits] [--seconds 8] [--rows 1]
        [--out results.json]

For each task: train in-process through the task API (tests/tasks/conftest.py), save the PyTorch model,
export it to ONNX (fp32 and int8: dynamic for MLPs, static QDQ for CNNs, as ``pillars optimize`` picks),
then start ``python -m pillars.serving --model_dir`` for each folder in turn (alone on the machine, same
flags, one CPU thread each) and drive it with the same keep-alive HTTP client at concurrency 64, one row
per V2 JSON request (``--rows N``: N test rows per request, so the forward pass is a larger share of a
request). Reported: requests/s, rows/s, p50/p99, and each variant's ratio to PyTorch in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from pillars.components.optimize.onnx_export import (export_onnx, has_convolutions, quantize_int8_dynamic,  # noqa: E402
                                            quantize_int8_static)
from pillars.components.model.predictor import load_predictor, save_model, save_onnx_model  # noqa: E402
from pillars.components.task import load_task, task_reference  # noqa: E402
from serving_bench import raw_http_target, start  # noqa: E402
from tests.processes import free_port  # noqa: E402
from tests.tasks.conftest import train_in_process  # noqa: E402

CONCURRENCY = 64


def variants(task_name: str, root: Path, epochs: int, rows: int = 1) -> tuple[dict[str, Path], np.ndarray]:
    """PyTorch, ONNX fp32 and ONNX int8 folders of one trained model, and ``rows`` test rows."""
    task = load_task(task_name)
    trained = train_in_process(task, epochs=epochs)
    reference = task_reference(task_name)
    torch_dir = save_model(task, reference, trained.prep, trained.model, root / "pytorch")
    predictor = load_predictor(torch_dir)
    inputs = trained.inputs("train")
    fp32 = export_onnx(predictor, inputs, root / "fp32.onnx")
    if has_convolutions(fp32):
        int8 = quantize_int8_static(fp32, root / "int8.onnx", task, trained.prep, {"train rows": inputs})
        int8_name = "onnx-int8-static"
    else:
        int8 = quantize_int8_dynamic(fp32, root / "int8.onnx")
        int8_name = "onnx-int8"
    folders = {"pytorch": torch_dir,
               "onnx": save_onnx_model(task, reference, trained.prep, fp32, root / "onnx"),
               int8_name: save_onnx_model(task, reference, trained.prep, int8, root / "int8")}
    return folders, np.asarray(trained.inputs("test")["input-0"][:rows], dtype=np.float32)


def serve_and_drive(folder: Path, row: np.ndarray, log: Path, seconds: float) -> dict:
    http = free_port()
    process, cold = start([sys.executable, "-m", "pillars.serving", "--model_dir", str(folder), "--model_name", "m",
                           "--http_port", str(http), "--grpc_port", str(free_port()), "--cpu_threads", "1"],
                          f"http://127.0.0.1:{http}/v2/health/ready", log, env={})
    try:
        body = json.dumps({"inputs": [{"name": "input-0", "datatype": "FP32", "shape": list(row.shape),
                                       "data": row.reshape(-1).tolist()}]}).encode()
        result = asyncio.run(raw_http_target(f"http://127.0.0.1:{http}/v2/models/m/infer", body, CONCURRENCY,
                                             1_000_000, seconds))
    finally:
        process.stop()
    return {**result, "rows_per_s": result["rps"] * len(row), "cold_start_s": cold}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="breast_cancer,digits")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rows", type=int, default=1, help="rows per request (the task's first test rows)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for task_name in args.tasks.split(","):
            root = Path(tmp) / task_name
            folders, row = variants(task_name, root, args.epochs, args.rows)
            results[task_name] = {name: serve_and_drive(folder, row, root / f"{name}.log", args.seconds)
                                  for name, folder in folders.items()}
    print(f"{'task':<14} {'model':<17} {'req/s':>8} {'rows/s':>8} {'x pytorch':>9} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'errors':>6}  ({args.rows} rows per request)")
    for task_name, rows in results.items():
        base = rows["pytorch"]["rps"]
        for name, r in rows.items():
            print(f"{task_name:<14} {name:<17} {r['rps']:>8.0f} {r['rows_per_s']:>8.0f} {r['rps'] / base:>9.2f} "
                  f"{r['p50_ms']:>7.1f} "
                  f"{r['p99_ms']:>7.1f} {r['errors']:>6}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
