"""Serving benchmark (issue 3): this server (V2 REST, gRPC) vs ``mlflow models serve``, same model, same client.

    python benchmarks/serving_bench.py [--seconds 8] [--requests 3000] [--out results.json]

One run, one machine: a 30-feature MLP classifier (the pipeline's default size) is registered in a
local MLflow store; each server is started alone (so they never share the CPU) and driven by the same
asyncio load generator at concurrency 1, 16 and 64, one row per request, bounded by request count
and time. Also: served samples/s at concurrency 64 over the model's in-process batched throughput,
and cold start to ready (process start to ``/v2/health/ready``, with and without the imports).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import drive  # noqa: E402  (serving_bench.drive, as other benchmarks import it)

from tests.processes import ServerProcess, free_port  # noqa: E402

NAME = "bench"
N_FEATURES = 30
CONCURRENCY = (1, 16, 64)
BULK_ROWS = 64
CLIENT = "raw"


def build_and_register(root: Path) -> tuple[str, Path]:
    """Save a breast-cancer-sized classifier, register it as ``bench`` v1; return tracking URI and folder."""
    import mlflow

    from pillars.components.model.mlflow_model import log_pillars_model
    from pillars.components.model.predictor import save_model
    from pillars.tasks.tabular import classifier_of

    model_dir = save_model(*classifier_of([f"x{i}" for i in range(N_FEATURES)], ["benign", "malignant"],
                                          mean=5.0, std=2.0), root / "model")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("bench", artifact_location=(root / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        info = log_pillars_model(model_dir)
    mlflow.register_model(info.model_uri, NAME)
    return uri, model_dir


def in_process_ceiling(model_dir: Path, seconds: float = 3.0, batch: int = 64) -> float:
    """Samples/s of the server's forward path (``predict_checked``: encode, forward, decode) on full
    batches in this process: the ceiling."""
    import torch

    from pillars.components.model.predictor import load_predictor

    torch.set_num_threads(1)  # as the server runs it (--cpu_threads 1, the default)
    predictor = load_predictor(model_dir)
    rows = {"input-0": np.random.default_rng(0).normal(5, 2, size=(batch, N_FEATURES)).astype(np.float32)}
    for _ in range(20):
        predictor.predict_checked(rows)
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        predictor.predict_checked(rows)
        n += batch
    return n / (time.perf_counter() - started)


class RawHTTPConnection:
    """A minimal HTTP/1.1 keep-alive client connection: costs the load generator little CPU."""

    def __init__(self, url: str, body: bytes) -> None:
        parsed = httpx.URL(url)
        self.host, self.port = parsed.host, parsed.port
        self.request = (f"POST {parsed.raw_path.decode()} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self) -> None:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
        await self.reader.readexactly(length)
        if status != 200:
            raise RuntimeError(f"HTTP {status}")

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def raw_http_target(url: str, body: bytes, concurrency: int, requests: int, seconds: float) -> dict:
    pool: asyncio.Queue[RawHTTPConnection] = asyncio.Queue()
    connections = [RawHTTPConnection(url, body) for _ in range(concurrency)]
    for connection in connections:
        pool.put_nowait(connection)

    async def send() -> None:
        connection = await pool.get()
        try:
            await connection.post()
        finally:
            pool.put_nowait(connection)

    try:
        return await drive(send, concurrency, requests, seconds)
    finally:
        for connection in connections:
            await connection.close()


async def http_target(url: str, body: bytes, concurrency: int, requests: int, seconds: float) -> dict:
    if CLIENT == "raw":
        return await raw_http_target(url, body, concurrency, requests, seconds)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        async def send() -> None:
            response = await client.post(url, content=body, headers={"content-type": "application/json"})
            response.raise_for_status()
        return await drive(send, concurrency, requests, seconds)


async def grpc_target(target: str, row: np.ndarray, concurrency: int, requests: int, seconds: float) -> dict:
    from kserve import InferenceGRPCClient
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    request = pb.ModelInferRequest(model_name=NAME, inputs=[pb.ModelInferRequest.InferInputTensor(
        name="input-0", datatype="FP32", shape=[*row.reshape(-1, N_FEATURES).shape],
        contents=pb.InferTensorContents(fp32_contents=row.ravel().tolist()))])
    async with InferenceGRPCClient(target, timeout=60, retries=0) as client:
        async def send() -> None:
            await client._client_stub.ModelInfer(request)
        return await drive(send, concurrency, requests, seconds)


def start(cmd: list[str], ready_url: str, log: Path, env: dict[str, str]) -> tuple[ServerProcess, float]:
    started = time.perf_counter()
    process = ServerProcess(cmd, log_path=log, env=env, cwd=ROOT)
    process.wait_http(ready_url, timeout=180)
    return process, time.perf_counter() - started


def mean_batch_rows(metrics_url: str) -> float:
    """Mean rows per forward pass so far, from the server's batch-size histogram."""
    from prometheus_client.parser import text_string_to_metric_families

    totals = {}
    for family in text_string_to_metric_families(httpx.get(metrics_url).text):
        for sample in family.samples:
            if sample.name in ("pillars_serving_batch_size_sum", "pillars_serving_batch_size_count"):
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals["pillars_serving_batch_size_sum"] / totals["pillars_serving_batch_size_count"]


def after_imports(log: str) -> float:
    """Seconds from the end of the imports to the model being ready, as the server logs it."""
    match = re.search(r"model ready ([0-9.]+) seconds after the imports", log)
    if match is None:
        raise RuntimeError(f"the server did not log its load time:\n{log[-2000:]}")
    return float(match.group(1))


def import_seconds() -> float:
    """Wall time of a process that only imports what the server imports (median of 3)."""
    code = ("import torch, kserve, mlflow, mlflow.artifacts, pillars.serving.__main__, pillars.serving.model, pillars.serving.server, "
            "pillars.serving.storage; from kserve import model_server")
    times = []
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="time bound per measurement")
    parser.add_argument("--requests", type=int, default=3000, help="request bound per measurement")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--client", choices=["raw", "httpx"], default="raw",
                        help="HTTP load generator: a minimal asyncio HTTP/1.1 client (light) or httpx")
    args = parser.parse_args()
    global CLIENT
    CLIENT = args.client
    root = Path(tempfile.mkdtemp(prefix="pillars-serving-bench-"))
    tracking_uri, model_dir = build_and_register(root)
    env = {"MLFLOW_TRACKING_URI": tracking_uri, "PYTHONPATH": str(ROOT)}
    row = np.random.default_rng(1).normal(5, 2, size=N_FEATURES).astype(np.float32)
    results: dict = {"model": f"MLP {N_FEATURES}-128-64-2", "cpus": os.cpu_count(), "http_client": CLIENT,
                     "servers": {}}

    results["in_process_samples_per_s"] = in_process_ceiling(model_dir)
    results["import_seconds"] = import_seconds()

    measure_pillars(results, root, env, row, args.requests, args.seconds)
    measure_mlflow(results, root, env, row, args.requests, args.seconds)

    at64 = {name: rows[-1] for name, rows in results["servers"].items()}
    base = at64["mlflow_models_serve"]
    results["ratios_at_64"] = {
        name: {"throughput_vs_mlflow": r["rps"] / base["rps"], "p99_vs_mlflow": r["p99_ms"] / base["p99_ms"],
               "fraction_of_in_process": r["rps"] / results["in_process_samples_per_s"]}
        for name, r in at64.items()}
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)
    print(markdown(results))
    return 0


def measure_pillars(results: dict, root: Path, env: dict[str, str], row: np.ndarray, requests: int,
                    seconds: float) -> None:
    """Pillars' cold starts, then V2 REST and gRPC load at each concurrency and with whole batches, into ``results``."""
    port, grpc_port = free_port(), free_port()
    cold = []
    for i in range(3):  # cold starts; the last server stays up for the load runs
        cmd = [sys.executable, "-m", "pillars.serving", "--model_uri", f"models:/{NAME}/1", "--http_port", str(port),
               "--grpc_port", str(grpc_port)]
        ours, seconds = start(cmd, f"http://127.0.0.1:{port}/v2/health/ready", root / f"ours{i}.log", env)
        cold.append(seconds)
        if i < 2:
            ours.stop()
    results["cold_start_seconds"] = statistics.median(cold)
    results["cold_start_after_imports_seconds"] = statistics.median(
        after_imports((root / f"ours{i}.log").read_text()) for i in range(3))
    v2_body = json.dumps({"inputs": [{"name": "input-0", "shape": [1, N_FEATURES], "datatype": "FP32",
                                      "data": row.tolist()}]}).encode()
    try:
        for name, run in [
            ("pillars_v2_rest", lambda c: http_target(f"http://127.0.0.1:{port}/v2/models/{NAME}/infer", v2_body,
                                                      c, requests, seconds)),
            ("pillars_grpc", lambda c: grpc_target(f"127.0.0.1:{grpc_port}", row, c, requests, seconds)),
        ]:
            results["servers"][name] = [asyncio.run(run(c)) for c in CONCURRENCY]
        results["mean_rows_per_forward_pass"] = mean_batch_rows(f"http://127.0.0.1:{port}/metrics")
        # Clients that send whole batches: 64 rows per request, 64 concurrent requests.
        bulk = np.random.default_rng(2).normal(5, 2, size=(BULK_ROWS, N_FEATURES)).astype(np.float32)
        bulk_body = json.dumps({"inputs": [{"name": "input-0", "shape": [BULK_ROWS, N_FEATURES], "datatype": "FP32",
                                            "data": bulk.ravel().tolist()}]}).encode()
        for name, run in [
            ("pillars_v2_rest", lambda: http_target(f"http://127.0.0.1:{port}/v2/models/{NAME}/infer", bulk_body,
                                                    64, requests, seconds)),
            ("pillars_grpc", lambda: grpc_target(f"127.0.0.1:{grpc_port}", bulk, 64, requests, seconds)),
        ]:
            result = asyncio.run(run())
            result["samples_per_s"] = result["rps"] * BULK_ROWS
            result["fraction_of_in_process"] = result["samples_per_s"] / results["in_process_samples_per_s"]
            results.setdefault("bulk_64_rows_at_64", {})[name] = result
    finally:
        ours.stop()


def measure_mlflow(results: dict, root: Path, env: dict[str, str], row: np.ndarray, requests: int,
                   seconds: float) -> None:
    """``mlflow models serve``'s cold start and load at each concurrency, into ``results``."""
    mlflow_port = free_port()
    mlflow_cmd = [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", f"models:/{NAME}/1",
                  "--env-manager", "local", "--host", "127.0.0.1", "--port", str(mlflow_port)]
    theirs, results["mlflow_cold_start_seconds"] = start(mlflow_cmd, f"http://127.0.0.1:{mlflow_port}/health",
                                                         root / "mlflow.log", env)
    mlflow_body = json.dumps({"dataframe_split": {"columns": [f"x{i}" for i in range(N_FEATURES)],
                                                  "data": [row.tolist()]}}).encode()
    try:
        results["servers"]["mlflow_models_serve"] = [
            asyncio.run(http_target(f"http://127.0.0.1:{mlflow_port}/invocations", mlflow_body, c,
                                    requests, seconds)) for c in CONCURRENCY]
    finally:
        theirs.stop()


def markdown(results: dict) -> str:
    """The results as the table in docs/benchmarks.md."""
    lines = ["| server | c | req/s | p50 ms | p99 ms | errors |", "|---|---|---|---|---|---|"]
    for name, rows in results["servers"].items():
        for r in rows:
            lines.append(f"| {name} | {r['concurrency']} | {r['rps']:.0f} | {r['p50_ms']:.1f} | "
                         f"{r['p99_ms']:.1f} | {r['errors']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
