"""Where a V2 request's server CPU goes (issue 20): py-spy samples under load, by stage.

    python benchmarks/serving_profile.py [--protocol rest|grpc] [--seconds 12] [--concurrency 64]
        [--tree PATH] [--top 25] [--rows 1] [--binary]

Starts a model server (this checkout, or ``--tree``) with the 30-feature MLP of
:mod:`benchmarks.serving_cpu_bench`, loads it (REST: wrk; gRPC: tritonclient) and samples every thread
of the server with ``py-spy record --format raw`` (py-spy is a dev tool: ``pip install py-spy``; it
needs ptrace). Each sample is given to the stage of its innermost frame that one of :data:`STAGES`
names (so a numpy call inside the contract check is validation, a socket write under the middleware is
I/O); what matches none is the framework itself (uvicorn, Starlette, FastAPI, grpc, asyncio). With
``--rows N`` each request carries N rows and REST is driven by tritonclient (as
benchmarks/serving_bulk_bench.py drives it), JSON or with ``--binary`` the binary tensor extension (inputs
and outputs); one-row REST is driven by wrk. Idle
samples (threads waiting) are not counted. Prints the share of the CPU samples per stage, and the
``--top`` leaf functions.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.serving_bench import NAME, N_FEATURES, build_and_register  # noqa: E402
from benchmarks.serving_cpu_bench import import_root, triton, wrk  # noqa: E402
from tests.processes import ServerProcess, free_port  # noqa: E402

FRAMEWORK = "framework (uvicorn/Starlette/FastAPI/grpc/asyncio/kserve, our glue)"
STAGES: list[tuple[str, str]] = [
    ("metrics (prometheus-client)", r"prometheus_client|_record \(|_observe_batch|observe_batch"),
    ("drift (per batch)", r"drift_rows|observe_named|drift\.py|drift_matrix"),
    ("forward (encode, model, decode)", r"predict_checked|torch|onnxruntime"),
    ("request parsing (JSON / protobuf)", r"parse_json|^loads |check_v2_header|json_part_length|"
                                          r"read_binary_request|ParseFromString|request\.body|_body \(|deserialize"),
    ("tensor decode (data to arrays)", r"decode_v2_data|decode_grpc|from_json|from_buffer|split_bytes"),
    ("validation (contract check)", r"check_inputs|preprocess \(|\.check \(|check_declared"),
    ("response encoding", r"postprocess|encode_v2|encode_v1|encode_json|encode_rest|encode_grpc|"
                          r"DataPlane\.encode|InferResponse|InferOutput|to_rest|to_grpc|SerializeToString|"
                          r"JSONResponse|render|serialize"),
    ("batching hand-off", r"batching\.py|run_in_executor|concurrent/futures|call_soon_threadsafe|"
                          r"_chain_future|_copy_future_state|_set_state"),
    ("output check (rows, finite)", r"check_outputs"),
    ("socket reads and writes", r"_SelectorSocketTransport\.write|_read_ready|sock_send|sock_recv"),
    ("gc (full collections)", r"^gc |gc\.collect|garbage"),
    ("auth / middleware checks", r"access/middleware\.py|auth\.py|origins\.py|connections\.py"),
    (FRAMEWORK, r"fastapi/|starlette/|uvicorn/|httptools|timing_asgi|kserve/|grpc/|grpc_interceptor|asyncio/|"
                r"fast_path\.py|rest\.py|grpc_server\.py|model\.py"),
]


IDLE = re.compile(r"concurrent/futures/thread\.py:81\)$|_poll_wrapper\);.*Thread\.run \(threading\.py:\d+\)$|"
                  r"selectors\.py:\d+\)$|threading\.py:\d+\)$|Event\.wait|Condition\.wait")
"""Stacks of a thread waiting (the forward thread's queue, gRPC's poller, the event loop's select)."""


def classify(stack: str) -> str | None:
    """The stage of the innermost frame that names one (frames read leaf first); None: idle."""
    if IDLE.search(stack):
        return None
    for frame in reversed(stack.split(";")):
        for stage, pattern in STAGES:
            if re.search(pattern, frame):
                return stage
    return FRAMEWORK


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=["rest", "grpc"], default="rest")
    parser.add_argument("--seconds", type=int, default=12)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--tree", type=Path, default=ROOT)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--rows", type=int, default=1, help="rows per request (more than 1: REST by tritonclient)")
    parser.add_argument("--binary", action="store_true", help="REST by tritonclient with the binary extension")
    parser.add_argument("--server-arg", dest="server_args", action="append", default=[])
    parser.add_argument("--keep", action="store_true", help="keep the raw py-spy stacks (and print where)")
    parser.add_argument("--native", action="store_true",
                        help="sample native frames too (py-spy --native: what grpc's Cython and C core spend)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="pillars-profile-"))
    tracking_uri, _ = build_and_register(scratch)
    port, grpc_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "pillars.serving", "--model_uri", f"models:/{NAME}/1", "--http_port", str(port),
           "--grpc_port", str(grpc_port), "--log_level", "WARNING", *args.server_args]
    env = {"MLFLOW_TRACKING_URI": tracking_uri,
           "PYTHONPATH": f"{import_root(args.tree.resolve(), scratch)}:{ROOT}"}
    server = ServerProcess(cmd, log_path=scratch / "server.log", env=env, cwd=args.tree)
    row = np.random.default_rng(1).normal(5, 2, size=N_FEATURES).astype(np.float32)
    body = json.dumps({"inputs": [{"name": "input-0", "shape": [1, N_FEATURES], "datatype": "FP32",
                                   "data": row.tolist()}]}).encode()
    raw = scratch / "stacks.txt"
    try:
        server.wait_http(f"http://127.0.0.1:{port}/v2/health/ready", timeout=180)
        url = f"http://127.0.0.1:{port}/v2/models/{NAME}/infer"
        wrk(url, body, args.concurrency, 2, scratch)
        spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--format", "raw", "-r", "250",
                                "-d", str(args.seconds), "-o", str(raw), "--pid", str(server.proc.pid), "--threads",
                                *(["--native"] if args.native else [])],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        batch = np.random.default_rng(2).normal(5, 2, size=(args.rows, N_FEATURES)).astype(np.float32)
        if args.protocol == "rest" and args.rows == 1 and not args.binary:
            load = threading.Thread(target=wrk, args=(url, body, args.concurrency, args.seconds + 2, scratch))
        else:
            target = f"127.0.0.1:{grpc_port if args.protocol == 'grpc' else port}"
            requests = (400 if args.rows == 1 else 120) * (args.seconds + 2)
            load = threading.Thread(target=lambda: asyncio.run(
                triton(args.protocol, target, batch, args.concurrency, requests, binary=args.binary)))
        load.start()
        _, err = spy.communicate()
        load.join()
        if spy.returncode != 0:
            raise RuntimeError(f"py-spy failed: {err.decode()[-2000:]}")
    finally:
        server.stop()
    stages: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        stage = classify(stack)
        if stage is None:
            continue
        stages[stage] += int(count)
        leaves[stack.rsplit(";", 1)[-1]] += int(count)
    total = sum(stages.values())
    print(f"{total} CPU samples of the server under {args.protocol}{' binary' if args.binary else ''} load at "
          f"c={args.concurrency}, {args.rows} row(s) per request")
    print("| stage | share of server CPU |\n|---|---|")
    for stage, n in stages.most_common():
        print(f"| {stage} | {100 * n / total:.1f} % |")
    print("\ntop leaf functions:")
    for leaf, n in leaves.most_common(args.top):
        print(f"{100 * n / total:5.1f} %  {leaf}")
    if args.keep:
        print(f"raw stacks: {raw}")
    else:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
