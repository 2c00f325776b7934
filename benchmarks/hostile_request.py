"""Hostile large requests (issue 9, item 2): how fast the server refuses them, what they cost, and whether
health keeps answering meanwhile.

    python benchmarks/hostile_request.py [--repeats 5] [--out results.json]

One run, one machine: a 30-feature MLP classifier (breast-cancer sized, the issue's case) is served by
``python -m pillars.serving`` with the defaults (16 MiB body limit, 1,024 rows per request). Each hostile
request is sent ``--repeats`` times while a second thread polls ``/v2/health/live`` every 10 ms and the
server's resident memory (``/proc/PID/status``) every 5 ms:

- ``rest-binary-int8``: the binary extension, INT8 ``[559000, 30]`` (16,770,000 bytes of tensor, just under
  16 MiB with the header): the request of the issue;
- ``rest-json-fp32``: plain JSON just under 16 MiB (``[N, 30]`` zeros);
- ``grpc-raw-int8``: gRPC ``raw_input_contents`` INT8 ``[550000, 30]`` (just under 16 MiB);
- ``rest-binary-lying``: a binary header declaring ``[1, 30]`` FP32 followed by 16 MB of bytes.

Reported per case: the status; the worst latency as the server sees it (its own debug line per request:
from the request's first byte, headers included, to the response; for gRPC from the parsed message);
"(gRPC core)" where gRPC itself refused the message, by its size, before any Python code ran;
the worst latency as the client sees it (uploading the 16 MiB body included, which on a loaded 2-core
machine dominates); the worst resident-memory growth over the baseline; and the worst
``/v2/health/live`` latency while the requests ran. The numbers before the fix come from
the issue text (measured on main on the same kind of machine): 200 after 11-12 s, health stalled
5-6 s, memory +150-830 MiB.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.processes import ServerProcess, free_port  # noqa: E402

N_FEATURES = 30
BODY_LIMIT = 16 * 1024 * 1024
TARGET = {"seconds": 0.100, "rss_mib": 50.0, "health_seconds": 0.050}


def build_model(root: Path) -> Path:

    from pillars.components.model.predictor import save_model
    from pillars.tasks.tabular import classifier_of

    return save_model(*classifier_of([f"x{i}" for i in range(N_FEATURES)], ["benign", "malignant"]), root / "model")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


class Watch:
    """Polls health (10 ms) and memory (5 ms) in the background; keeps the worst values."""

    def __init__(self, http: str, pid: int) -> None:
        self.http, self.pid = http, pid
        self.worst_health = 0.0
        self.peak_rss = 0.0
        self.health_errors = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._health, daemon=True),
                         threading.Thread(target=self._memory, daemon=True)]

    def __enter__(self) -> Watch:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def _health(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    ok = client.get(f"{self.http}/v2/health/live").status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.health_errors += not ok
                self.worst_health = max(self.worst_health, time.perf_counter() - started)
                time.sleep(0.01)

    def _memory(self) -> None:
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, rss_mib(self.pid))
            time.sleep(0.005)


def binary_body(datatype: str, shape: list[int], data: bytes) -> tuple[bytes, dict[str, str]]:
    header = json.dumps({"inputs": [{"name": "input-0", "shape": shape, "datatype": datatype,
                                     "parameters": {"binary_data_size": len(data)}}]}).encode()
    return header + data, {"inference-header-content-length": str(len(header)),
                           "content-type": "application/octet-stream"}


def cases(grpc_target: str) -> dict[str, object]:
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    int8_rows = 559_000
    int8 = np.zeros((int8_rows, N_FEATURES), dtype=np.int8).tobytes()
    json_rows = (BODY_LIMIT - 200) // (2 * N_FEATURES + 2)  # "0," per value, "[]," per row
    json_body = json.dumps({"inputs": [{"name": "input-0", "shape": [json_rows, N_FEATURES], "datatype": "FP32",
                                        "data": [[0] * N_FEATURES] * json_rows}]}, separators=(",", ":")).encode()
    grpc_rows = 550_000
    grpc_request = pb.ModelInferRequest(
        model_name="hostile", inputs=[pb.ModelInferRequest.InferInputTensor(
            name="input-0", datatype="INT8", shape=[grpc_rows, N_FEATURES])],
        raw_input_contents=[np.zeros((grpc_rows, N_FEATURES), dtype=np.int8).tobytes()])
    return {
        "rest-binary-int8": binary_body("INT8", [int8_rows, N_FEATURES], int8),
        "rest-json-fp32": (json_body, {"content-type": "application/json"}),
        "grpc-raw-int8": grpc_request,
        "rest-binary-lying": binary_body("FP32", [1, N_FEATURES], bytes(16_000_000)),
    }


def send(http: str, grpc_target: str, request: object) -> tuple[str, float]:
    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc

    started = time.perf_counter()
    if isinstance(request, tuple):
        body, headers = request
        assert len(body) < BODY_LIMIT, len(body)
        status = str(httpx.post(f"{http}/v2/models/hostile/infer", content=body, headers=headers,
                                timeout=120).status_code)
        return status, time.perf_counter() - started
    with grpc.insecure_channel(grpc_target, options=[("grpc.max_send_message_length", -1)]) as channel:
        stub = grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(channel)
        started = time.perf_counter()
        try:
            stub.ModelInfer(request, timeout=120)
            status = "OK"
        except grpc.RpcError as e:
            status = e.code().name
    return status, time.perf_counter() - started


def server_seconds(log: str) -> list[float]:
    """The server-side seconds of each inference request, from its debug lines."""
    return [float(m) for m in re.findall(r"request protocol=\S+ model=hostile .* seconds=([0-9.]+)", log)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(Path(tmp))
        http_port, grpc_port = free_port(), free_port()
        server = ServerProcess([sys.executable, "-m", "pillars.serving", "--model_dir", str(model_dir),
                                "--model_name", "hostile", "--http_port", str(http_port),
                                "--grpc_port", str(grpc_port), "--no_drift", "--log_level", "DEBUG"],
                               log_path=Path(tmp) / "server.log")
        http, grpc_target = f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}"
        try:
            server.wait_http(f"{http}/v2/health/ready", timeout=180)
            requests = cases(grpc_target)
            for request in requests.values():  # warm both protocols' code paths once
                send(http, grpc_target, request)
            results = {}
            with Watch(http, server.proc.pid) as idle:  # the machine's own noise, no hostile traffic
                time.sleep(2.0)
            results["idle (no requests)"] = {"status": ["-"], "worst_seconds": 0.0, "median_seconds": 0.0,
                                            "worst_server_seconds": 0.0, "rss_growth_mib": 0.0,
                                            "worst_health_seconds": round(idle.worst_health, 4),
                                            "health_errors": idle.health_errors}
            for name, request in requests.items():
                baseline = rss_mib(server.proc.pid)
                logged = len(server_seconds(server.log()))
                statuses, seconds = set(), []
                with Watch(http, server.proc.pid) as watch:
                    for _ in range(args.repeats):
                        status, took = send(http, grpc_target, request)
                        statuses.add(status)
                        seconds.append(took)
                    time.sleep(0.05)
                on_server = server_seconds(server.log())[logged:]
                results[name] = {"status": sorted(statuses), "worst_seconds": round(max(seconds), 4),
                                 "median_seconds": round(sorted(seconds)[len(seconds) // 2], 4),
                                 "worst_server_seconds": round(max(on_server), 4) if on_server else None,
                                 "rss_growth_mib": round(max(0.0, watch.peak_rss - baseline), 1),
                                 "worst_health_seconds": round(watch.worst_health, 4),
                                 "health_errors": watch.health_errors}
            ok = httpx.post(f"{http}/v2/models/hostile/infer", json={"inputs": [
                {"name": "input-0", "shape": [1, N_FEATURES], "datatype": "FP32", "data": [0.0] * N_FEATURES}]})
            results["after: a normal request"] = {"status": [str(ok.status_code)]}
        finally:
            server.stop()
    print(f"{'case':20} {'status':18} {'server worst s':>14} {'client worst s':>14} {'RSS +MiB':>9} "
          f"{'health worst s':>15}")
    for name, r in results.items():
        if "worst_seconds" in r:
            server_s = "(gRPC core)" if r["worst_server_seconds"] is None else f"{r['worst_server_seconds']:.4f}"
            print(f"{name:20} {','.join(r['status']):18} {server_s:>14} "
                  f"{r['worst_seconds']:14.4f} {r['rss_growth_mib']:9.1f} {r['worst_health_seconds']:15.4f}")
        else:
            print(f"{name:24} {','.join(r['status'])}")
    print(f"target: 4xx in < {TARGET['seconds']} s, < {TARGET['rss_mib']} MiB growth, health < "
          f"{TARGET['health_seconds']} s")
    if args.out:
        args.out.write_text(json.dumps({"results": results, "target": TARGET}, indent=2))


if __name__ == "__main__":
    main()
