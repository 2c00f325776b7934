"""``--workers 2`` through a real server process: both workers answer on the same HTTP and gRPC ports,
``/metrics`` (whichever worker answers it) counts every worker's requests and shows each worker's drift
window, a hot reload reaches both workers, and every worker dies with the server, even by ``kill -9``."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pillars.components.model.mlflow_model import log_pillars_model
from pillars.serving.demo import v2_request
from tests.processes import group_alive
from tests.serving.conftest import Served, start_server
from tests.serving.test_metrics_and_batching import scrape
from tests.serving.toy import make_profiled_classifier, train_split

NAME = "workers"


def _wait(condition: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.2)
    return result


def _children(pid: int) -> list[int]:
    """Live processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if fields[0] != "Z" and int(fields[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


def _listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on ``port`` (TCP, IPv4 and IPv6)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def _listeners(pid: int, port: int) -> int:
    """How many of ``port``'s listening sockets process ``pid`` holds."""
    inodes = _listening_inodes(port)
    held = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        held += target.startswith("socket:[") and target[8:-1] in inodes
    return held


def _register(model_dir: Path) -> str:
    with mlflow.start_run():
        info = log_pillars_model(model_dir, model_dir / "data_profile.json")
    return mlflow.register_model(info.model_uri, NAME).version


def _window_rows(server: Served) -> dict[tuple[str, str], float]:
    """``{(pid, version): rows}`` of the drift window series of every worker."""
    series = scrape(server).get("pillars_drift_window_rows", {})
    return {(dict(k)["pid"], dict(k)["version"]): v for k, v in series.items() if dict(k)["model"] == NAME}


@pytest.fixture(scope="module")
def two_workers(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, list[int]]]:
    root = tmp_path_factory.mktemp("workers")
    mlflow.set_tracking_uri(mlflow_server)
    try:
        mlflow.set_experiment("serving-workers")
        version = _register(make_profiled_classifier(root / "v1"))
        MlflowClient().set_registered_model_alias(NAME, "champion", version)
    finally:
        mlflow.set_tracking_uri(None)
    temp = root / "tmp"
    temp.mkdir()
    server = start_server(["--model_uri", f"models:/{NAME}@champion", "--model_name", NAME, "--workers", "2",
                           "--reload_interval_s", "0.5", "--drift_interval_s", "0.2"], root / "server.log",
                          env={"MLFLOW_TRACKING_URI": mlflow_server, "TMPDIR": str(temp)}, model=NAME)
    http_port, grpc_port = int(server.http.rsplit(":", 1)[1]), int(server.grpc.rsplit(":", 1)[1])
    workers = _wait(lambda: len(w := _children(server.process.proc.pid)) == 2 and all(
        _listeners(pid, http_port) == 1 and _listeners(pid, grpc_port) == 1 for pid in w) and w,
        "both workers listening on both ports", timeout=120)
    assert len(list(temp.glob("pillars-metrics-*"))) == 1  # the workers' shared metrics folder
    yield server, workers
    server.process.stop()
    assert not list(temp.glob("pillars-metrics-*")), "the metrics folder outlived the server"


def test_two_workers_listen_on_the_same_http_and_grpc_ports_and_the_supervisor_on_none(two_workers):
    server, workers = two_workers
    http_port, grpc_port = int(server.http.rsplit(":", 1)[1]), int(server.grpc.rsplit(":", 1)[1])
    assert len(_listening_inodes(http_port)) == 2 and len(_listening_inodes(grpc_port)) == 2
    assert _listeners(server.process.proc.pid, http_port) == 0


def test_metrics_count_the_requests_of_both_workers_and_show_each_workers_drift_window(two_workers):
    server, workers = two_workers
    url = f"{server.http}/v2/models/{NAME}/infer"

    def answered() -> float:
        series = scrape(server).get("pillars_serving_requests_total", {})
        return sum(v for k, v in series.items() if dict(k)["model"] == NAME and dict(k)["status"] == "200")

    before, rows_before = answered(), sum(_window_rows(server).values())
    rows = train_split()[0][:3]
    for _ in range(40):  # a new connection each: the kernel spreads connections over the workers
        assert httpx.post(url, json=v2_request(rows)).status_code == 200
    _wait(lambda: answered() == before + 40, "40 more requests counted on /metrics")
    for _ in range(5):  # whichever worker answers the scrape, the sum is the same
        assert answered() == before + 40
    windows = _wait(lambda: (w := _window_rows(server)) and sum(w.values()) == rows_before + 120 and w,
                    "every worker's drift window rows on /metrics")
    assert {pid for pid, _ in windows} == {str(pid) for pid in workers}  # both answered some of the requests
    assert all(rows > 0 for rows in windows.values())


def test_a_hot_reload_reaches_every_worker(two_workers, tracking_uri, tmp_path):
    server, workers = two_workers
    mlflow.set_experiment("serving-workers")
    version = _register(make_profiled_classifier(tmp_path / "v2", steps=3, seed=1))
    MlflowClient().set_registered_model_alias(NAME, "champion", version)
    # Each worker registers the new version's drift window once it serves it.
    _wait(lambda: {pid for pid, v in _window_rows(server) if v == version} == {str(p) for p in workers},
          f"both workers serving version {version}")
    rows = train_split()[0][:2]
    for _ in range(20):
        answer = httpx.post(f"{server.http}/v2/models/{NAME}/infer", json=v2_request(rows))
        assert answer.status_code == 200 and answer.json()["model_version"] == version


def test_every_worker_dies_with_the_server_even_by_kill_9(tmp_path):
    server = start_server(["--model_dir", str(make_profiled_classifier(tmp_path / "model")), "--model_name", "w",
                           "--workers", "2", "--no_drift"], tmp_path / "server.log", model="w",
                          env={"TMPDIR": str(tmp_path)})  # the metrics folder a killed server cannot remove
    try:
        _wait(lambda: len(_children(server.process.proc.pid)) == 2, "two workers")
        os.kill(server.process.proc.pid, signal.SIGKILL)  # no clean-up runs: the kernel tells the workers
        _wait(lambda: not group_alive(server.process.pgid), "the workers to end", timeout=30)
    finally:
        server.process.stop()
