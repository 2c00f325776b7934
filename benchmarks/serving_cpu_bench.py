"""Server CPU per request (issue 20): one tree's model server against another's, same machine, same run.

    python benchmarks/serving_cpu_bench.py [--baseline /work/main] [--requests 20000] [--rounds 2]
        [--concurrency 64] [--drift-off] [--workers 2] [--shadow] [--mlserver VENV] [--protocol rest|grpc|both]
        [--out results.json]

A 30-feature MLP classifier (breast_cancer's shape) is registered in a local MLflow store. Each tree's
server (this checkout, and with ``--baseline`` another checkout of Pillars, e.g. the unchanged main
branch, run with this virtualenv) is started alone and driven in turn, rounds alternating, so the
noisy shared machine affects both alike:

- V2 REST, one row per JSON request, by ``wrk`` (a C load generator: it leaves the CPU to the server)
  at ``--concurrency`` connections for ``--seconds``; then the server's process CPU time (user + system
  of every process in its group, from ``/proc``) over the requests answered: **ms CPU per request**;
  req/s, p50, p99 and errors from wrk.
- V2 gRPC, the same row, by tritonclient's asyncio gRPC client at the same concurrency for a fixed
  number of requests (CPU per request, req/s, p50, p99), and V2 REST by tritonclient's asyncio HTTP
  client in the same way, so REST and gRPC are compared with the same client library (``--protocol``
  rest or grpc measures one of them only).

With ``--workers N`` this tree is also measured with ``--workers N`` (N server processes sharing the ports);
CPU per request counts every process of the server's group, workers included.

With ``--shadow`` this tree is also measured running a challenger in shadow (``--shadow_uri``: the same registered
version, so the shadow does the champion's work once more off the request path); the shadow's rows answered and
dropped (its queue full) are reported beside the figures (issue 19).

With ``--mlserver VENV``, Seldon MLServer (installed in that separate virtualenv, e.g. ``mlserver==1.7.1``
``mlserver-mlflow==1.7.1``) serves the same registered model version with its MLflow runtime and adaptive
batching on (``max_batch_size`` 64, ``max_batch_time`` = Pillars' ``max_latency_ms``), its other settings
its defaults; the same row is sent as MLServer's MLflow runtime takes a one-row DataFrame over V2 (one
input per column).

Ratios (tree / baseline) are what to read: absolute numbers depend on what else the machine runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.serving_bench import NAME, N_FEATURES, build_and_register  # noqa: E402
from tests.processes import ServerProcess, free_port  # noqa: E402

PACKAGES = ("components", "console", "pipelines", "serving", "tasks")
TICKS = os.sysconf("SC_CLK_TCK")


def import_root(tree: Path, scratch: Path) -> Path:
    """A folder to put first on ``PYTHONPATH`` so that ``pillars.*`` is imported from ``tree``."""
    folder = scratch / f"imports-{abs(hash(str(tree)))}"
    (folder / "pillars").mkdir(parents=True, exist_ok=True)
    for package in PACKAGES:
        link = folder / "pillars" / package
        if not link.exists():
            link.symlink_to(tree / package)
    return folder


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of every live process in the process group ``pgid``."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # field 5 of stat: the process group
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def wrk(url: str, body: bytes, concurrency: int, seconds: float, scratch: Path) -> dict:
    """One wrk run posting ``body``; req/s, p50/p99 ms, non-2xx and socket errors."""
    script = scratch / "post.lua"
    script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      f"wrk.body = {json.dumps(body.decode())}\n")
    command = ["wrk", f"-t{min(2, concurrency)}", f"-c{concurrency}", f"-d{seconds}s", "--latency", "-s", str(script)]
    out = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    latency = {m.group(1): _ms(m.group(2)) for m in re.finditer(r"^\s+(50|99)%\s+(\S+)", out, re.M)}
    return {"requests": requests, "errors": errors + (int(non2xx.group(1)) if non2xx else 0),
            "rps": float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1)),
            "p50_ms": latency["50"], "p99_ms": latency["99"]}


def _ms(text: str) -> float:
    value, unit = re.match(r"([0-9.]+)(us|ms|s|m)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


async def triton(protocol: str, url: str, row: np.ndarray, concurrency: int, requests: int,
                 binary: bool = False) -> dict:
    """``requests`` inferences of ``row`` (one row, or a ``[rows, features]`` batch) by tritonclient (asyncio)
    at ``concurrency``. gRPC sends raw input contents; REST sends JSON data, or with ``binary`` the binary
    tensor extension (inputs and outputs)."""
    if protocol == "grpc":
        import tritonclient.grpc.aio as client_module
    else:
        import tritonclient.http.aio as client_module
    client = client_module.InferenceServerClient(url, conn_limit=concurrency) if protocol == "rest" else \
        client_module.InferenceServerClient(url)
    batch = np.atleast_2d(row)
    tensor = client_module.InferInput("input-0", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, **({"binary_data": binary} if protocol == "rest" else {}))
    outputs = ([client_module.InferRequestedOutput(o, binary_data=True) for o in OUTPUTS]
               if protocol == "rest" and binary else None)
    for _ in range(50):
        await client.infer(NAME, [tensor], outputs=outputs)
    latencies: list[float] = []
    errors = 0
    messages: dict[str, int] = {}
    remaining = requests

    async def worker() -> None:
        nonlocal remaining, errors
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            try:
                await client.infer(NAME, [tensor], outputs=outputs)
            except Exception as e:  # counted, and what it said kept: a run with errors is reported as such
                errors += 1
                message = str(e)[:200]
                messages[message] = messages.get(message, 0) + 1
                continue
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await client.close()
    latencies.sort()
    return {"requests": len(latencies), "errors": errors, "error_messages": messages,
            "rps": len(latencies) / elapsed,
            "p50_ms": 1000 * latencies[len(latencies) // 2],
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]}


OUTPUTS = ("label", "class_index", "probabilities")
"""The served classifier's outputs (asked for by name where the client must name them: binary REST)."""
SETTINGS_MS = 2.0
"""Pillars' default ``max_latency_ms``: MLServer's ``max_batch_time`` in the side-by-side run."""


def mlserver_server(venv: Path, env: dict[str, str], scratch: Path, port: int, grpc_port: int,
                    label: str) -> ServerProcess:
    """``mlserver start`` from ``venv`` serving ``models:/NAME/1`` with its MLflow runtime, batching on."""
    folder = scratch / f"mlserver-{label}"
    (folder / NAME).mkdir(parents=True, exist_ok=True)
    (folder / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": port, "grpc_port": grpc_port, "metrics_port": free_port()}))
    (folder / NAME / "model-settings.json").write_text(json.dumps({
        "name": NAME, "implementation": "mlserver_mlflow.MLflowRuntime",
        "max_batch_size": 64, "max_batch_time": SETTINGS_MS / 1000,
        "parameters": {"uri": f"models:/{NAME}/1"}}))
    run_env = {**env, "PYTHONPATH": f"{import_root(ROOT, scratch)}:{ROOT}", "PATH": f"{venv / 'bin'}:/usr/bin:/bin"}
    return ServerProcess([str(venv / "bin" / "mlserver"), "start", str(folder)], log_path=scratch / f"{label}.log",
                         env=run_env, cwd=folder)


def measure(tree: Path, env: dict[str, str], scratch: Path, args: argparse.Namespace, label: str,
            extra: tuple[str, ...] = (), mlserver: Path | None = None) -> dict:
    """Start ``tree``'s server (with ``extra`` flags; or MLServer from the ``mlserver`` virtualenv), drive it
    (REST by wrk, then gRPC and REST by tritonclient), stop it."""
    port, grpc_port = free_port(), free_port()
    row = np.random.default_rng(1).normal(5, 2, size=N_FEATURES).astype(np.float32)
    if mlserver is not None:
        server = mlserver_server(mlserver, env, scratch, port, grpc_port, label)
        body = json.dumps({"inputs": [{"name": f"x{i}", "shape": [1], "datatype": "FP32", "data": [float(v)]}
                                      for i, v in enumerate(row)]}).encode()
    else:
        cmd = [sys.executable, "-m", "pillars.serving", "--model_uri", f"models:/{NAME}/1", "--http_port",
               str(port), "--grpc_port", str(grpc_port), "--log_level", "WARNING", *args.server_args, *extra]
        if args.drift_off:
            cmd.append("--no_drift")
        run_env = {**env, "PYTHONPATH": f"{import_root(tree, scratch)}:{ROOT}"}
        server = ServerProcess(cmd, log_path=scratch / f"{label}.log", env=run_env, cwd=tree)
        body = json.dumps({"inputs": [{"name": "input-0", "shape": [1, N_FEATURES], "datatype": "FP32",
                                       "data": row.tolist()}]}).encode()
    url = f"http://127.0.0.1:{port}/v2/models/{NAME}/infer"
    results = {}
    try:
        server.wait_http(f"http://127.0.0.1:{port}/v2/models/{NAME}/ready", timeout=300)
        wrk(url, body, args.concurrency, 2, scratch)  # warm-up
        probe = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=30)
        if probe.status_code != 200:
            raise RuntimeError(f"{label}: {probe.status_code} {probe.text[:500]}")
        for name, run in [
            ("rest_wrk", lambda: wrk(url, body, args.concurrency, args.seconds, scratch)),
            ("grpc_tritonclient", lambda: asyncio.run(triton("grpc", f"127.0.0.1:{grpc_port}", row,
                                                                args.concurrency, args.requests))),
            ("rest_tritonclient", lambda: asyncio.run(triton("rest", f"127.0.0.1:{port}", row,
                                                                args.concurrency, args.requests))),
        ]:
            if name != "rest_wrk" and (args.wrk_only or mlserver is not None):
                continue
            if args.protocol != "both" and not name.startswith(args.protocol):
                continue
            cpu = group_cpu_seconds(server.pgid)
            result = run()
            result["server_cpu_ms_per_request"] = 1000 * (group_cpu_seconds(server.pgid) - cpu) / max(
                1, result["requests"])
            result["p99_over_p50"] = result["p99_ms"] / result["p50_ms"]
            results[name] = result
            print(label, name, json.dumps(result), flush=True)
        if "--shadow_uri" in extra:
            shadow = httpx.get(f"http://127.0.0.1:{port}/v2/models/{NAME}/shadow", timeout=30).json()["shadow"]
            results["shadow"] = {"rows": shadow["rows"], "dropped": shadow["dropped"]}
    finally:
        server.stop()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="another Pillars checkout to measure side by side")
    parser.add_argument("--seconds", type=int, default=15, help="wrk duration per REST measurement")
    parser.add_argument("--requests", type=int, default=6000, help="requests per tritonclient measurement")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per tree")
    parser.add_argument("--drift-off", action="store_true", help="serve with --no-drift")
    parser.add_argument("--wrk-only", action="store_true", help="only the wrk REST measurement")
    parser.add_argument("--protocol", choices=["rest", "grpc", "both"], default="both",
                        help="rest: wrk and tritonclient REST; grpc: tritonclient gRPC; both (default): all three")
    parser.add_argument("--server-arg", dest="server_args", action="append", default=[],
                        help="extra server flag (repeatable), e.g. --server-arg=--workers=2")
    parser.add_argument("--workers", type=int, default=1, help="also measure this tree with --workers N")
    parser.add_argument("--shadow", action="store_true", help="also measure this tree with a challenger in shadow")
    parser.add_argument("--mlserver", type=Path, metavar="VENV",
                        help="also measure MLServer (MLflow runtime) installed in this virtualenv")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (Debian: apt-get install wrk)")
    scratch = Path(tempfile.mkdtemp(prefix="pillars-cpu-bench-"))
    tracking_uri, _ = build_and_register(scratch)
    env = {"MLFLOW_TRACKING_URI": tracking_uri}
    trees = {"this": ROOT} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    configs: dict[str, dict] = {name: {"tree": tree} for name, tree in trees.items()}
    if args.workers > 1:
        configs[f"this_workers{args.workers}"] = {"tree": ROOT, "extra": (f"--workers={args.workers}",)}
    if args.shadow:
        configs["this_shadow"] = {"tree": ROOT, "extra": ("--shadow_uri", f"models:/{NAME}/1")}
    if args.mlserver:
        configs["mlserver"] = {"tree": ROOT, "mlserver": args.mlserver.resolve()}
    runs: dict[str, list[dict]] = {name: [] for name in configs}
    for i in range(args.rounds):
        for name, config in configs.items():
            runs[name].append(measure(env=env, scratch=scratch, args=args, label=f"{name}{i}", **config))
    summary = {name: {kind: {key: float(np.median([r[kind][key] for r in rounds]))
                             for key, value in rounds[0][kind].items() if isinstance(value, (int, float))}
                      for kind in rounds[0]} for name, rounds in runs.items()}  # error messages: per round
    for figures in summary.values():
        figures.pop("shadow", None)  # counts, not a measurement kind: kept per round
    results = {"cpus": os.cpu_count(), "concurrency": args.concurrency, "drift": not args.drift_off,
               "server_args": args.server_args, "trees": {k: str(v) for k, v in trees.items()},
               "median_of_rounds": summary, "rounds": runs}
    for name in configs:
        if name != "this":
            results[f"this_over_{name}"] = {
                kind: {key: summary["this"][kind][key] / summary[name][kind][key]
                       for key in ("server_cpu_ms_per_request", "rps", "p50_ms", "p99_ms")}
                for kind in summary[name]}
    for name, kinds in summary.items():  # the same client library for both protocols: tritonclient
        if "grpc_tritonclient" in kinds and "rest_tritonclient" in kinds:
            results[f"{name}_grpc_over_rest"] = {
                key: kinds["grpc_tritonclient"][key] / kinds["rest_tritonclient"][key]
                for key in ("server_cpu_ms_per_request", "rps", "p50_ms", "p99_ms")}
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
