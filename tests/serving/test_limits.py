"""Hostile requests are refused by their declared shape before anything is decoded, the queue is bounded,
outputs are checked, and the server listens on loopback unless told otherwise."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc

from pillars.serving.demo import v2_request
from pillars.serving.settings import DEFAULT_MAX_BODY_BYTES
from tests.serving.conftest import Served, start_server
from tests.serving.toy import make_classifier, toy_rows

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The toy classifier with the default body limit (16 MiB) and rows cap (1,024), a small queue."""
    root = tmp_path_factory.mktemp("limited")
    server = start_server(["--model_dir", str(make_classifier(root / "model")), "--model_name", "toy",
                           "--max_batch_size", "8", "--max_queued_rows", "16", "--no_drift",
                           "--log_level", "DEBUG"], root / "server.log")
    yield server
    server.process.stop()


def _rss_mib(pid: int) -> float:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def _binary(datatype: str, shape: list[int], data: bytes) -> tuple[bytes, dict[str, str]]:
    header = json.dumps({"inputs": [{"name": "input-0", "shape": shape, "datatype": datatype,
                                     "parameters": {"binary_data_size": len(data)}}]}).encode()
    return header + data, {"inference-header-content-length": str(len(header)),
                           "content-type": "application/octet-stream"}


def test_an_int8_binary_request_under_the_body_limit_is_refused_fast_and_health_keeps_answering(limited):
    rows = (DEFAULT_MAX_BODY_BYTES - 1024) // 4  # INT8 [N, 4]: just under 16 MiB (the request)
    body, headers = _binary("INT8", [rows, 4], np.zeros((rows, 4), dtype=np.int8).tobytes())
    assert DEFAULT_MAX_BODY_BYTES - 2048 < len(body) < DEFAULT_MAX_BODY_BYTES
    pid = limited.process.proc.pid
    baseline, peak, worst_health = _rss_mib(pid), 0.0, 0.0
    done = threading.Event()

    def watch() -> None:
        nonlocal peak, worst_health
        with httpx.Client(timeout=30) as client:
            while not done.is_set():
                started = time.perf_counter()
                assert client.get(f"{limited.http}/v2/health/live").status_code == 200
                worst_health = max(worst_health, time.perf_counter() - started)
                peak = max(peak, _rss_mib(pid))
                time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    refused_before = limited.process.log().count("status=413")
    watcher.start()
    try:
        statuses = [httpx.post(f"{limited.http}/v2/models/toy/infer", content=body, headers=headers,
                               timeout=60) for _ in range(3)]
    finally:
        done.set()
        watcher.join()
    for response in statuses:
        assert response.status_code == 413, response.text
        assert f"{rows} rows" in response.text and "1024" in response.text
    # As the server sees it (its debug line: first byte to response): refused on the header alone.
    log = limited.process.wait_log("status=413", refused_before + 3)
    seconds = [float(line.rsplit("seconds=", 1)[1].split()[0]) for line in log.splitlines()
               if "request protocol=v2 model=toy" in line and "status=413" in line]
    assert len(seconds) >= 3 and max(seconds[-3:]) < 0.1, seconds
    assert peak - baseline < 50, f"resident memory grew {peak - baseline:.0f} MiB"
    assert worst_health < 1.0, worst_health  # 50 ms on a quiet machine (docs/benchmarks.md); slack for CI


def test_rows_over_the_cap_are_refused_in_every_protocol(limited):
    too_many = np.zeros((1025, 4), dtype=np.float32)
    v2 = httpx.post(f"{limited.http}/v2/models/toy/infer", json=v2_request(too_many))
    v1 = httpx.post(f"{limited.http}/v1/models/toy:predict", json={"instances": too_many.tolist()})
    body, headers = _binary("FP32", [1025, 4], too_many.tobytes())
    binary = httpx.post(f"{limited.http}/v2/models/toy/infer", content=body, headers=headers)
    for response in (v2, v1, binary):
        assert response.status_code == 413 and "1025" in response.text and "--max_rows" in response.text

    async def grpc_infer(contents: bool):
        async with grpc.aio.insecure_channel(limited.grpc) as channel:
            stub = grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(channel)
            tensor = pb.ModelInferRequest.InferInputTensor(name="input-0", datatype="FP32", shape=[1025, 4])
            if contents:
                tensor.contents.fp32_contents.extend(too_many.ravel().tolist())
                return await stub.ModelInfer(pb.ModelInferRequest(model_name="toy", inputs=[tensor]))
            return await stub.ModelInfer(pb.ModelInferRequest(model_name="toy", inputs=[tensor],
                                                              raw_input_contents=[too_many.tobytes()]))

    for contents in (False, True):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            asyncio.run(grpc_infer(contents))
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "1025" in error.value.details()
    assert httpx.post(f"{limited.http}/v2/models/toy/infer", json=v2_request(too_many[:1024])).status_code == 200


def test_binary_tensors_are_read_by_their_declared_layout(limited):
    rows = toy_rows(3, seed=9)
    expected = httpx.post(f"{limited.http}/v2/models/toy/infer", json=v2_request(rows)).json()["outputs"]
    for datatype, data in (("FP32", rows.astype("<f4")), ("FP64", rows.astype("<f8")),
                           ("FP16", rows.astype("<f2"))):
        body, headers = _binary(datatype, [3, 4], data.tobytes())
        answer = httpx.post(f"{limited.http}/v2/models/toy/infer", content=body, headers=headers)
        assert answer.status_code == 200, answer.text
        labels = next(o for o in answer.json()["outputs"] if o["name"] == "label")["data"]
        if datatype != "FP16":
            assert labels == next(o for o in expected if o["name"] == "label")["data"]
    body, headers = _binary("FP32", [3, 4], rows.tobytes()[:-4])  # one value short
    short = httpx.post(f"{limited.http}/v2/models/toy/infer", content=body, headers=headers)
    assert short.status_code == 400 and "binary_data_size" in short.text


def test_a_full_queue_answers_503_at_once_and_the_server_recovers(limited):
    rows = toy_rows(8)  # max_queued_rows 16: a third concurrent request of 8 rows finds the queue full

    async def burst():
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=100)) as client:
            return await asyncio.gather(*(client.post(f"{limited.http}/v2/models/toy/infer",
                                                      json=v2_request(rows)) for _ in range(100)))

    answers = asyncio.run(burst())
    statuses = [a.status_code for a in answers]
    assert set(statuses) == {200, 503}, set(statuses)
    refused = next(a for a in answers if a.status_code == 503)
    assert "busy" in refused.text and refused.headers["retry-after"] == "1"
    assert httpx.post(f"{limited.http}/v2/models/toy/infer", json=v2_request(rows)).status_code == 200


@pytest.mark.parametrize("protocol", ["v1", "v2", "grpc"])
def test_finite_inputs_that_overflow_the_model_are_422_naming_the_rows(limited, protocol):
    rows = np.array([[1, 2, 3, 4], [3e38, 3e38, 3e38, 3e38]], dtype=np.float32)
    if protocol == "grpc":
        async def infer():
            async with grpc.aio.insecure_channel(limited.grpc) as channel:
                stub = grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(channel)
                tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[2, 4])
                return await stub.ModelInfer(pb.ModelInferRequest(model_name="toy", inputs=[tensor],
                                                                  raw_input_contents=[rows.tobytes()]))

        with pytest.raises(grpc.aio.AioRpcError) as error:
            asyncio.run(infer())
        assert error.value.code() == grpc.StatusCode.OUT_OF_RANGE and "row(s) [1]" in error.value.details()
        return
    if protocol == "v1":
        response = httpx.post(f"{limited.http}/v1/models/toy:predict", json={"instances": rows.tolist()})
    else:
        response = httpx.post(f"{limited.http}/v2/models/toy/infer", json=v2_request(rows))
    assert response.status_code == 422, response.text
    assert "row(s) [1]" in response.json()["error"] and "null" not in response.text


def _listening(pid: int, port: int) -> set[str]:
    """Local addresses of ``pid``'s listening TCP sockets on ``port`` (from /proc/PID/net/tcp{,6})."""
    inodes = {Path(f"/proc/{pid}/fd/{fd}").readlink().name[8:-1] for fd in
              (p.name for p in Path(f"/proc/{pid}/fd").iterdir())
              if Path(f"/proc/{pid}/fd/{fd}").readlink().name.startswith("socket:")}
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].rsplit(":", 1)
            if fields[3] == "0A" and int(hex_port, 16) == port and fields[9] in inodes:
                found.add(address)
    return found


def test_both_servers_listen_on_loopback_only_by_default(limited):
    pid = limited.process.proc.pid
    for port in (int(limited.http.rsplit(":", 1)[1]), int(limited.grpc.rsplit(":", 1)[1])):
        addresses = _listening(pid, port)  # 127.0.0.1, or ::ffff:127.0.0.1 on an IPv6 socket
        assert addresses and addresses <= {"0100007F", "0000000000000000FFFF00000100007F"}, (port, addresses)


def test_the_container_image_listens_on_every_interface_explicitly():
    for dockerfile in ("serving/Dockerfile", "serving/Dockerfile.cuda"):
        cmd = next(line for line in (ROOT / dockerfile).read_text().splitlines() if line.startswith("CMD"))
        args = json.loads(cmd[len("CMD"):])
        assert args[args.index("--host") + 1] == "0.0.0.0", dockerfile


def test_a_15_mb_v1_body_is_refused_413_before_it_is_parsed(limited):
    rows = 15_000_000 // 26  # ~15 MB of JSON rows: far more than any 1,024-row request of 4 numbers needs
    body = json.dumps({"instances": [[1.25, 2.5, 3.75, 4.125]] * rows}).encode()
    assert len(body) > 14_000_000
    logged_before = limited.process.log().count("request protocol=v1 model=toy")
    started = time.perf_counter()
    response = httpx.post(f"{limited.http}/v1/models/toy:predict", content=body,
                          headers={"content-type": "application/json"}, timeout=60)
    client_seconds = time.perf_counter() - started
    assert response.status_code == 413, response.text
    assert "larger than the limit" in response.json()["error"]
    log = limited.process.wait_log("request protocol=v1 model=toy", logged_before + 1)
    seconds = [float(line.rsplit("seconds=", 1)[1].split()[0]) for line in log.splitlines()
               if "request protocol=v1 model=toy" in line and "status=413" in line]
    assert seconds and seconds[-1] < 0.05, seconds  # parsing it whole took ~600 ms
    print(f"15 MB V1 body: 413 in {seconds[-1] * 1000:.2f} ms in the server, {client_seconds * 1000:.0f} ms "
          "for the client (upload included)")
    chunked = httpx.post(f"{limited.http}/v1/models/toy:predict", content=iter([body[:1 << 20]] * 2),
                         headers={"content-type": "application/json"}, timeout=60)
    assert chunked.status_code == 413  # no Content-Length: refused once the limit is passed while streaming
    assert httpx.post(f"{limited.http}/v1/models/toy:predict",
                      json={"instances": toy_rows(2).tolist()}).status_code == 200


def test_a_web_page_cannot_use_the_loopback_server_by_another_host_or_a_simple_request(limited):
    """Auth off, bound to loopback: a Host that is not a loopback name (DNS rebinding) is refused, and a
    request carrying a browser Origin must send JSON as JSON (text/plain needs no CORS preflight)."""
    port = limited.http.rsplit(":", 1)[1]
    url = f"{limited.http}/v1/models/toy:predict"
    body = json.dumps({"instances": toy_rows(1).tolist()})
    rebound = httpx.post(url, content=body, headers={"host": f"attacker.example:{port}"})
    assert rebound.status_code == 400 and "'attacker.example' is not served here" in rebound.json()["error"]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}"):
        assert httpx.get(f"{limited.http}/v2/health/live", headers={"host": host}).status_code == 200
    page = {"origin": "https://attacker.example"}
    for path in ("/v1/models/toy:predict", "/v2/models/toy/infer"):
        payload = body if path.startswith("/v1") else json.dumps(v2_request(toy_rows(1)))
        simple = httpx.post(f"{limited.http}{path}", content=payload, headers=page | {"content-type": "text/plain"})
        assert simple.status_code == 415 and "application/json" in simple.json()["error"]
        as_json = httpx.post(f"{limited.http}{path}", content=payload,
                             headers=page | {"content-type": "application/json"})
        assert as_json.status_code == 200 and "access-control-allow-origin" not in as_json.headers
    # Not a browser (no Origin): Triton's rule stays, a body without the binary header is JSON.
    assert httpx.post(url, content=body, headers={"content-type": "text/plain"}).status_code == 200


@pytest.fixture(scope="module")
def impatient(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The toy classifier refusing requests while any request waited for a forward pass (a 1 µs bound)."""
    root = tmp_path_factory.mktemp("impatient")
    server = start_server(["--model_dir", str(make_classifier(root / "model")), "--model_name", "toy",
                           "--max_batch_size", "8", "--max_queue_wait_ms", "0.001", "--no_drift"],
                          root / "server.log")
    yield server
    server.process.stop()


def test_requests_that_would_wait_too_long_for_a_pass_get_503_with_retry_after_and_a_lone_one_is_served(impatient):
    rows = toy_rows(8)

    async def burst():
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=100)) as client:
            return await asyncio.gather(*(client.post(f"{impatient.http}/v2/models/toy/infer",
                                                      json=v2_request(rows)) for _ in range(100)))

    answers = asyncio.run(burst())
    assert {a.status_code for a in answers} == {200, 503}, {a.status_code for a in answers}
    refused = next(a for a in answers if a.status_code == 503)
    assert "--max_queue_wait_ms" in refused.json()["error"] and refused.headers["retry-after"] == "1"
    assert httpx.post(f"{impatient.http}/v2/models/toy/infer", json=v2_request(rows)).status_code == 200
