"""64-row requests (issue 20): served rows/s against the model's batched forward in this process, same run.

    python benchmarks/serving_bulk_bench.py [--rows 64] [--requests 1500] [--concurrency 8] [--rounds 2]
        [--seconds 3] [--baseline PATH] [--only rest_binary,...] [--out results.json]

The 30-feature MLP classifier of :mod:`benchmarks.serving_cpu_bench` (``models:/bench/1`` in a local MLflow
store), the same 64-row batch everywhere, rounds alternating so the shared machine's load hits every
figure alike:

- **in process**: the server's loader (``load_predictor``) and one torch thread (the server's default
  ``--cpu_threads``); ``predict_checked`` (the task's encode, the forward pass, decode: what the server's
  batcher runs per batch) and ``predict`` (the contract check as well), back to back on the batch for
  ``--seconds``: rows/s and CPU µs per row (this process's CPU time).
- **served**: ``python -m pillars.serving`` (defaults: drift on, batches of up to 64 rows, so each 64-row
  request is one forward pass) driven by tritonclient's asyncio clients at ``--concurrency``: V2 gRPC (raw
  input contents), V2 REST with the binary tensor extension (inputs and outputs), V2 REST JSON; rows/s and
  server CPU µs per row (user + system time of the server's process group over the rows answered).

With ``--baseline PATH`` (another Pillars checkout, e.g. ``git archive`` of the commit before a change) each
round also serves the same model from that tree, right after this one's (``baseline_*`` figures);
``--only`` keeps the named served measurements (``grpc_raw``, ``rest_binary``, ``rest_json``).

Read: served rows/s ÷ in-process forward rows/s (the issue's target: ≥ 0.9), and the server's CPU per row
÷ the forward's CPU per row. The client runs on the same cores as the server, so the rows/s ratio is
a floor; the CPU ratio is what the server itself spends per row.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.serving_bench import NAME, N_FEATURES, build_and_register  # noqa: E402
from benchmarks.serving_cpu_bench import group_cpu_seconds, import_root, triton  # noqa: E402
from tests.processes import ServerProcess, free_port  # noqa: E402


def in_process(model_dir: Path, batch: np.ndarray, seconds: float) -> dict:
    """Rows/s and CPU µs per row of ``predict_checked`` and ``predict`` on ``batch``, one torch thread."""
    import torch

    from pillars.components.model.predictor import load_predictor

    torch.set_num_threads(1)
    predictor = load_predictor(model_dir)
    inputs = {"input-0": batch}
    results = {}
    for name, call in (("forward", lambda: predictor.predict_checked(inputs)),
                       ("checked_forward", lambda: predictor.predict(inputs))):
        for _ in range(50):
            call()
        n, cpu, started = 0, time.process_time(), time.perf_counter()
        while time.perf_counter() - started < seconds:
            call()
            n += len(batch)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        results[name] = {"rows_per_s": n / elapsed, "cpu_us_per_row": 1e6 * cpu / n}
    return results


def served(tracking_uri: str, scratch: Path, batch: np.ndarray, args: argparse.Namespace, label: str,
           tree: Path = ROOT) -> dict:
    """Rows/s and server CPU µs per row for ``batch`` per request: gRPC, REST binary, REST JSON (the
    server's ``pillars`` imported from ``tree``)."""
    port, grpc_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "pillars.serving", "--model_uri", f"models:/{NAME}/1", "--http_port", str(port),
           "--grpc_port", str(grpc_port), "--log_level", "WARNING"]
    env = {"MLFLOW_TRACKING_URI": tracking_uri, "PYTHONPATH": f"{import_root(tree, scratch)}:{ROOT}"}
    server = ServerProcess(cmd, log_path=scratch / f"{label}.log", env=env, cwd=tree)
    results = {}
    try:
        server.wait_http(f"http://127.0.0.1:{port}/v2/models/{NAME}/ready", timeout=300)
        for name, protocol, url, binary in (("grpc_raw", "grpc", f"127.0.0.1:{grpc_port}", False),
                                            ("rest_binary", "rest", f"127.0.0.1:{port}", True),
                                            ("rest_json", "rest", f"127.0.0.1:{port}", False)):
            if args.only and name not in args.only:
                continue
            cpu = group_cpu_seconds(server.pgid)
            result = asyncio.run(triton(protocol, url, batch, args.concurrency, args.requests, binary=binary))
            rows = result["requests"] * len(batch)
            cpu = group_cpu_seconds(server.pgid) - cpu
            results[name] = {"rows_per_s": result["rps"] * len(batch), "cpu_us_per_row": 1e6 * cpu / max(1, rows),
                             "p50_ms": result["p50_ms"], "p99_ms": result["p99_ms"], "errors": result["errors"]}
            print(label, name, json.dumps(results[name]), flush=True)
    finally:
        server.stop()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=64, help="rows per request (and per in-process batch)")
    parser.add_argument("--requests", type=int, default=1500, help="requests per served measurement")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each in-process measurement")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--baseline", type=Path, help="another Pillars checkout, served after this one each round")
    parser.add_argument("--only", type=lambda text: text.split(","), default=[],
                        help="comma-separated served measurements to run (default: all)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="pillars-bulk-bench-"))
    tracking_uri, model_dir = build_and_register(scratch)
    batch = np.random.default_rng(2).normal(5, 2, size=(args.rows, N_FEATURES)).astype(np.float32)
    rounds: list[dict] = []
    for i in range(args.rounds):
        local = in_process(model_dir, batch, args.seconds)
        print(f"in_process{i}", json.dumps(local), flush=True)
        figures = local | served(tracking_uri, scratch, batch, args, f"served{i}")
        if args.baseline:
            figures |= {f"baseline_{kind}": value for kind, value in
                        served(tracking_uri, scratch, batch, args, f"baseline{i}", args.baseline.resolve()).items()}
        rounds.append(figures)
    median = {kind: {key: float(np.median([r[kind][key] for r in rounds])) for key in rounds[0][kind]}
              for kind in rounds[0]}
    forward = median["forward"]
    ratios = {kind: {"rows_per_s_over_forward": m["rows_per_s"] / forward["rows_per_s"],
                     "cpu_per_row_over_forward": m["cpu_us_per_row"] / forward["cpu_us_per_row"]}
              for kind, m in median.items() if kind != "forward"}
    results = {"rows_per_request": args.rows, "concurrency": args.concurrency, "median_of_rounds": median,
               "ratios": ratios, "rounds": rounds}
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
