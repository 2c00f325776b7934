"""The canary decision from a real Prometheus scraping two real model servers of one model: the champion's version
and the canary's, each answering its own share of the traffic and scored by its own labels, as KServe's split
serves them. ``pillars models decide-canary`` waits before labels, rolls a worse canary back and promotes a
better one, and prints the ``kubectl patch`` of ``canaryTrafficPercent``."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import mlflow
import numpy as np
import yaml

from pillars.components.deploy.canary import read_figures
from pillars.components.model.mlflow_model import log_pillars_model
from pillars.pipelines.cli import main as cli_main
from pillars.serving.demo import v2_request
from tests.conftest import require_tool
from tests.processes import ServerProcess, free_port
from tests.serving.conftest import start_server
from tests.serving.toy import make_classifier, toy_rows

NAME = "canaried"


def _register(model_dir, tracking: str) -> str:
    mlflow.set_tracking_uri(tracking)
    try:
        mlflow.set_experiment("canary-tests")
        with mlflow.start_run():
            info = log_pillars_model(model_dir)
        return str(mlflow.register_model(info.model_uri, NAME).version)
    finally:
        mlflow.set_tracking_uri(None)


def _until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(0.3)
    return value


def _decide(capsys, prometheus: str, canary: str, *extra: str) -> str:
    """``pillars models decide-canary`` (its entry point, in this process): what it printed."""
    capsys.readouterr()
    # Latency is left to the unit tests of the rule (tests/components/test_canary_decision.py): two servers on a
    # loaded 2-core machine differ in p99 by chance, which is not what this test is about.
    code = cli_main(["models", "decide-canary", NAME, "--prometheus", prometheus, "--canary-version", canary,
                     "--window", "10m", "--min-requests", "50", "--min-labels", "100", "--latency-ratio", "100",
                     *extra])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_prometheus_figures_roll_a_worse_canary_back_and_promote_a_better_one(mlflow_server, tmp_path, capsys):
    prometheus_bin = require_tool("prometheus")
    better = _register(make_classifier(tmp_path / "better", steps=200), mlflow_server)
    worse = _register(make_classifier(tmp_path / "worse", steps=2, seed=5), mlflow_server)
    with ThreadPoolExecutor(2) as pool:
        servers = dict(zip((better, worse), pool.map(
            lambda v: start_server(["--model_uri", f"models:/{NAME}/{v}", "--feedback_dir", str(tmp_path / f"fb{v}")],
                                   tmp_path / f"server{v}.log", env={"MLFLOW_TRACKING_URI": mlflow_server}, model=NAME),
            (better, worse))))
    port = free_port()
    config = {"global": {"scrape_interval": "1s"}, "scrape_configs": [{"job_name": "pillars-model-server",
              "static_configs": [{"targets": [s.http.removeprefix("http://") for s in servers.values()]}]}]}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    prometheus = ServerProcess([prometheus_bin, f"--config.file={tmp_path / 'prometheus.yml'}",
                                f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                               tmp_path / "prometheus.log")
    url = f"http://127.0.0.1:{port}"
    x = toy_rows(400, seed=41)
    y = (x[:, 0] > 5.0).astype(np.int64) + (x[:, 1] > 6.0).astype(np.int64)
    try:
        prometheus.wait_http(f"{url}/-/ready", timeout=60)
        ids: dict[str, list[str]] = {version: [] for version in servers}
        with httpx.Client(timeout=30) as client:
            def send(version: str, start: int, stop: int) -> None:
                ids[version] += [client.post(f"{servers[version].http}/v2/models/{NAME}/infer",
                                             json=v2_request(x[i:i + 4])).json()["id"] for i in range(start, stop, 4)]

            # A first request each, scraped before the rest: as with steady traffic, Prometheus has each version's
            # series before the window's requests (``increase`` counts from a series' first sample).
            for version in servers:
                send(version, 0, 4)
            _until(lambda: len(httpx.get(f"{url}/api/v1/query", params={"query": "pillars_serving_requests_total"}
                                         ).json()["data"]["result"]) == 2, 30, "both versions' first request scraped")
            for version in servers:  # each version answers its own share (here: the same rows)
                send(version, 4, len(x))
            _until(lambda: all(f.requests >= 50 for f in read_figures(url, NAME, "10m").values())
                   and len(read_figures(url, NAME, "10m")) == 2, 60, "both versions' requests to be scraped")

            waiting = _decide(capsys, url, worse)  # no labels yet, no estimate (the toy models carry no calibration)
            assert waiting.startswith(f"{NAME}: wait: canary v{worse} vs champion v{better}: no quality signal")
            assert "kubectl" not in waiting

            for version, server in servers.items():
                labels = [{"id": request_id, "label": y[i * 4:i * 4 + 4].tolist()}
                          for i, request_id in enumerate(ids[version])]
                answer = client.post(f"{server.http}/v2/models/{NAME}/feedback", json={"labels": labels}).json()
                assert answer["scored"] == len(ids[version])
        figures = _until(lambda: (f := read_figures(url, NAME, "10m")) and all(v.scored == len(x) for v in f.values())
                         and f, 60, "both versions' labels to be scraped")
        assert figures[better].realised_accuracy > figures[worse].realised_accuracy
        assert figures[worse].errors == figures[better].errors == 0

        rolled_back = _decide(capsys, url, worse)  # the champion: the other version that answered requests
        head, *findings, patch = rolled_back.strip().splitlines()
        assert head.startswith(f"{NAME}: rollback: canary v{worse} vs champion v{better}: worse: realised accuracy "
                               f"{figures[worse].realised_accuracy:.4f} on 400 labels")
        assert any(line.startswith("  - error ratio 0.0000") for line in findings)
        assert patch.startswith(f"kubectl patch inferenceservice {NAME} -n ")
        assert json.loads(patch.rpartition(" -p ")[2].strip("'")) == {"spec": {"predictor": {"canaryTrafficPercent": 0}}}

        head, *_, patch = _decide(capsys, url, better, "--champion-version", worse).strip().splitlines()
        assert head.startswith(f"{NAME}: promote: canary v{better} vs champion v{worse}: ")
        assert "not worse by 0.02: realised accuracy" in head
        assert json.loads(patch.rpartition(" -p ")[2].strip("'")) == {"spec": {"predictor": {"canaryTrafficPercent": 100}}}
    finally:
        prometheus.stop()
        for server in servers.values():
            server.process.stop()
