"""Drift tracking overhead (issue 5): serving throughput with drift tracking on vs off, same model, same client.

    python benchmarks/serving_drift_bench.py [--rounds 5] [--seconds 4] [--out drift.json]

One run, one machine: a 30-feature MLP classifier (the pipeline's default size) with the data profile
of its train split is saved to a folder and served by two ``python -m pillars.serving`` processes, one with the
default drift settings and one with ``--no_drift``. Both stay up; only one is under load at a time.
Rounds alternate which goes first; each cell drives V2 REST at concurrency 64 with
:mod:`serving_bench`'s load client for ``--seconds`` seconds. The overhead is
``1 - median(on) / median(off)`` for one-row and 64-row requests (and, less sensitive to the load of a
shared machine drifting during the run, ``1 - median(on_i / off_i)`` over the adjacent cells of each round),
and the server process's CPU time per request (``/proc``), which contention from other jobs moves less
than throughput. Also measured in-process: the hot-path
cost of :meth:`DriftMonitor.observe` per batch and of one background :meth:`DriftMonitor.compute`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from serving_bench import N_FEATURES, raw_http_target  # noqa: E402

from tests.processes import ServerProcess, free_port  # noqa: E402

NAME = "bench"
CONCURRENCY = 64
BULK_ROWS = 64


def build_profiled_model(root: Path) -> tuple[Path, np.ndarray]:
    """Save the breast-cancer-sized classifier with ``data_profile.json``; return the folder and its train split."""

    from pillars.components.model.predictor import save_model
    from pillars.components.data.profile import build_profile
    from pillars.tasks.tabular import classifier_of

    names = [f"x{i}" for i in range(N_FEATURES)]
    x = np.random.default_rng(0).normal(5, 2, size=(5000, N_FEATURES)).astype(np.float32)
    y = (x[:, 0] > 5).astype(np.int64)
    model_dir = save_model(*classifier_of(names, ["benign", "malignant"], x.mean(axis=0), x.std(axis=0)),
                           root / "model")
    profile = build_profile(x, y, names, "classification", ["benign", "malignant"])
    (model_dir / "data_profile.json").write_text(json.dumps(profile))
    return model_dir, x


def in_process_costs(model_dir: Path, x: np.ndarray) -> dict:
    """Median seconds of the drift features and ``observe`` of a 64-row batch (what the request path pays),
    and of one ``compute`` over a full 1000-row window."""
    from pillars.components.model.predictor import load_predictor, load_profile
    from pillars.serving.monitoring.drift import DriftConfig, DriftMonitor

    predictor = load_predictor(model_dir)
    profile = load_profile(model_dir)
    monitor = DriftMonitor(profile, list(profile["features"]), predictor.task.kind, predictor.prep.get("classes"),
                           DriftConfig())
    batch = {"input-0": x[:BULK_ROWS]}
    outputs = predictor.predict_checked(batch)
    observe, forward = [], []
    for _ in range(2000):
        started = time.perf_counter()
        monitor.observe_named(*predictor.drift_rows(batch), outputs)
        observe.append(time.perf_counter() - started)
        started = time.perf_counter()
        predictor.predict_checked(batch)
        forward.append(time.perf_counter() - started)
    compute = []
    for _ in range(20):
        started = time.perf_counter()
        monitor.compute()
        compute.append(time.perf_counter() - started)
    return {"observe_64_rows_us": 1e6 * statistics.median(observe),
            "forward_64_rows_us": 1e6 * statistics.median(forward),
            "compute_window_ms": 1e3 * statistics.median(compute)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def v2_body(rows: np.ndarray) -> bytes:
    return json.dumps({"inputs": [{"name": "input-0", "shape": list(rows.shape), "datatype": "FP32",
                                   "data": rows.ravel().tolist()}]}).encode()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternated on/off rounds per workload")
    parser.add_argument("--seconds", type=float, default=4.0, help="load time per cell")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--off_first", action="store_true",
                        help="start the server without drift tracking first (checks for a start-order bias)")
    parser.add_argument("--aa", action="store_true",
                        help="an A/A run: both servers without drift tracking (the noise floor of this machine)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="pillars-drift-bench-"))
    model_dir, x = build_profiled_model(root)
    results: dict = {"model": f"MLP {N_FEATURES}-128-64-2", "cpus": os.cpu_count(), "concurrency": CONCURRENCY,
                     "rounds": args.rounds, "seconds_per_cell": args.seconds, "a_a": args.aa, "off_started_first": args.off_first,
                     "in_process": in_process_costs(model_dir, x)}
    servers: dict[str, tuple[ServerProcess, int]] = {}
    try:
        modes = [("on", ["--no_drift"] if args.aa else []), ("off", ["--no_drift"])]
        for mode, flags in modes[::-1] if args.off_first else modes:
            port = free_port()
            process = ServerProcess(
                [sys.executable, "-m", "pillars.serving", "--model_dir", str(model_dir), "--model_name", NAME,
                 "--http_port", str(port), "--grpc_port", str(free_port()), *flags],
                log_path=root / f"drift-{mode}.log", env={"PYTHONPATH": str(ROOT)}, cwd=ROOT)
            servers[mode] = (process, port)
            process.wait_http(f"http://127.0.0.1:{port}/v2/health/ready", timeout=180)
        rng = np.random.default_rng(1)
        workloads = {"1_row": v2_body(x[rng.integers(len(x))][None]),
                     f"{BULK_ROWS}_rows": v2_body(x[rng.choice(len(x), BULK_ROWS)])}
        for workload, body in workloads.items():
            cells: dict[str, list[dict]] = {"on": [], "off": []}
            for i in range(args.rounds):
                for mode in (("on", "off") if i % 2 == 0 else ("off", "on")):
                    process, port = servers[mode]
                    url = f"http://127.0.0.1:{port}/v2/models/{NAME}/infer"
                    cpu = cpu_seconds(process.proc.pid)
                    cell = asyncio.run(raw_http_target(url, body, CONCURRENCY, 10**9, args.seconds))
                    warm_up = 50  # serving_bench.drive sends these before it starts the clock
                    cell["server_cpu_us_per_request"] = 1e6 * (cpu_seconds(process.proc.pid) - cpu) / (
                        cell["requests"] + warm_up)
                    cells[mode].append(cell)
                    print(f"{workload} round {i} drift {mode}: {cell['rps']:.0f} req/s, "
                          f"{cell['server_cpu_us_per_request']:.0f} us CPU/request", file=sys.stderr)
            on = statistics.median(c["rps"] for c in cells["on"])
            off = statistics.median(c["rps"] for c in cells["off"])
            results[workload] = {"rps_on": [c["rps"] for c in cells["on"]], "rps_off": [c["rps"] for c in cells["off"]],
                                 "errors": sum(c["errors"] for c in cells["on"] + cells["off"]),
                                 "median_rps_on": on, "median_rps_off": off, "overhead": 1 - on / off,
                                 "paired_overhead": 1 - statistics.median(
                                     a["rps"] / b["rps"] for a, b in zip(cells["on"], cells["off"], strict=True)),
                                 "server_cpu_us_per_request_on": statistics.median(
                                     c["server_cpu_us_per_request"] for c in cells["on"]),
                                 "server_cpu_us_per_request_off": statistics.median(
                                     c["server_cpu_us_per_request"] for c in cells["off"]),
                                 "p99_ms_on": statistics.median(c["p99_ms"] for c in cells["on"]),
                                 "p99_ms_off": statistics.median(c["p99_ms"] for c in cells["off"])}
        import httpx

        metrics = httpx.get(f"http://127.0.0.1:{servers['on'][1]}/metrics").text
        results["drift_on_exported"] = "pillars_drift_share{" in metrics
    finally:
        for process, _ in servers.values():
            process.stop()
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
