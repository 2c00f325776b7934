"""In-process units: micro-batching, token checks, flag spellings, model resolution, bad configuration."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from pillars.components.errors import ConfigError
from pillars.components.model.predictor import Predictor, load_predictor
from pillars.serving.__main__ import build_parser, default_model_name, normalize_flags
from pillars.serving.access.auth import grpc_method_is_open, http_path_is_open, load_auth
from pillars.serving.batching import Batcher
from pillars.serving.storage import resolve_model
from tests.serving.toy import make_classifier, toy_rows


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> Predictor:
    return load_predictor(make_classifier(tmp_path_factory.mktemp("toy")))


def _predict(predictor: Predictor, rows):
    return predictor.predict({"input-0": rows})


def test_batcher_merges_concurrent_requests_and_splits_results_back(predictor):
    seen: list[int] = []
    gate = threading.Event()

    def forward(rows):
        gate.wait(5)  # hold the first pass so the others queue up behind it
        seen.append(len(rows))
        return _predict(predictor, rows)

    rows = toy_rows(20, seed=1)

    async def run():
        batcher = Batcher(forward, max_batch_size=8, max_latency_ms=1)
        tasks = [asyncio.create_task(batcher.submit(r[None])) for r in rows]
        await asyncio.sleep(0.05)
        gate.set()
        results = await asyncio.gather(*tasks)
        batcher.close()
        return results

    results = asyncio.run(run())
    assert sum(seen) == 20 and max(seen) == 8 and len(seen) < 20
    expected = _predict(predictor, rows)
    assert [r["label"][0] for r in results] == expected["label"].tolist()
    np.testing.assert_allclose(np.concatenate([r["probabilities"] for r in results]), expected["probabilities"],
                               rtol=1e-5, atol=1e-7)


def test_batcher_runs_a_lone_request_without_waiting(predictor):
    async def run():
        batcher = Batcher(lambda rows: _predict(predictor, rows), max_batch_size=64, max_latency_ms=500)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await batcher.submit(toy_rows(1))
        batcher.close()
        return loop.time() - started

    assert asyncio.run(run()) < 0.4


def test_batcher_closes_a_burst_once_arrivals_stop_instead_of_waiting_for_the_deadline(predictor):
    passes: list[int] = []

    async def run():
        batcher = Batcher(lambda rows: _predict(predictor, rows), max_batch_size=64, max_latency_ms=1000,
                          on_batch=lambda rows, outputs, n, seconds: passes.append(n))
        await asyncio.gather(*(batcher.submit(toy_rows(1)) for _ in range(2)))  # under load: 2 per pass
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.gather(*(batcher.submit(toy_rows(1)) for _ in range(10)))  # a burst, then nothing
        elapsed = loop.time() - started
        batcher.close()
        return elapsed

    elapsed = asyncio.run(run())
    assert sum(passes) == 12 and max(passes[1:]) > 1  # the burst was merged ...
    assert elapsed < 0.5, elapsed  # ... and run long before max_latency_ms (1 s) after it stopped arriving


def test_batcher_waits_for_requests_that_keep_arriving_within_the_deadline(predictor):
    passes: list[int] = []

    async def run():
        batcher = Batcher(lambda rows: _predict(predictor, rows), max_batch_size=64, max_latency_ms=400,
                          on_batch=lambda rows, outputs, n, seconds: passes.append(n))
        await asyncio.gather(*(batcher.submit(toy_rows(1)) for _ in range(2)))

        async def one(delay: float):
            await asyncio.sleep(delay)  # a steady stream: one request every 20 ms
            await batcher.submit(toy_rows(1))

        await asyncio.gather(*(one(0.02 * i) for i in range(8)))
        batcher.close()

    asyncio.run(run())
    assert sum(passes) == 10
    assert max(passes[1:]) >= 3, passes  # requests 20 ms apart were still gathered into one pass


def test_batcher_delivers_a_failed_pass_to_every_request_and_keeps_going(predictor):
    calls = {"n": 0}

    def forward(rows):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return _predict(predictor, rows)

    async def run():
        batcher = Batcher(forward, max_batch_size=4)
        with pytest.raises(RuntimeError, match="boom"):
            await batcher.submit(toy_rows(2))
        result = await batcher.submit(toy_rows(2))
        batcher.close()
        return result

    assert len(asyncio.run(run())["label"]) == 2


def test_batcher_rejects_bad_settings():
    with pytest.raises(ValueError, match="max_batch_size"):
        Batcher(lambda x: {}, max_batch_size=0)
    with pytest.raises(ValueError, match="max_latency_ms"):
        Batcher(lambda x: {}, max_latency_ms=-1)


def test_token_comes_from_file_and_is_compared_exactly(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("abc123\n")
    auth = load_auth(token_file)
    assert auth is not None and auth.accepts("Bearer abc123") and auth.accepts(b"Bearer abc123")
    assert not auth.accepts("Bearer abc12") and not auth.accepts(None) and not auth.accepts("abc123")
    assert "abc123" not in repr(auth)
    assert load_auth(None, "") is None
    assert load_auth(None, "from-env").accepts("Bearer from-env")
    with pytest.raises(ConfigError, match="cannot read"):
        load_auth(tmp_path / "missing")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        load_auth(tmp_path / "empty")


@pytest.mark.parametrize("path,is_open", [
    ("/v2/health/live", True), ("/v2/health/ready", True), ("/v2/models/m/ready", True), ("/metrics", False),
    ("/v1/models/m", True), ("/", True), ("/v2/models/m", False), ("/v2/models/m/infer", False),
    ("/v1/models/m:predict", False), ("/v2", False), ("/v2/repository/models/m/unload", False),
    ("/v2/health/ready/../../models/m", False),
])
def test_only_health_paths_are_open(path, is_open):
    assert http_path_is_open(path) is is_open
    assert http_path_is_open(path, metrics_open=True) is (is_open or path == "/metrics")


def test_only_health_rpcs_are_open():
    base = "/inference.GRPCInferenceService/"
    assert all(grpc_method_is_open(base + m) for m in ("ServerLive", "ServerReady", "ModelReady"))
    assert not any(grpc_method_is_open(base + m) for m in ("ModelInfer", "ModelMetadata", "ServerMetadata"))


def test_flags_work_in_dash_and_underscore_spelling():
    parser = build_parser()
    argv = ["--model-uri", "models:/m@champion", "--http-port", "9000", "--grpc_port", "9001",
            "--max-batch-size=8", "--auth-token-file", "/t", "--timeout-keep-alive", "5", "--event_loop", "asyncio"]
    args = parser.parse_args(normalize_flags(argv, parser))
    assert (args.model_uri, args.http_port, args.grpc_port, args.max_batch_size, args.auth_token_file) == \
        ("models:/m@champion", 9000, 9001, 8, "/t")
    assert args.timeout_keep_alive == 5 and args.event_loop == "asyncio"
    assert default_model_name("models:/iris@champion") == "iris" and default_model_name("/x") == "model"


def test_model_resolution_accepts_folders_and_rejects_the_rest(tmp_path):
    model_dir = make_classifier(tmp_path / "m")
    assert resolve_model(model_dir=model_dir).directory == model_dir
    assert resolve_model(str(model_dir)).directory == model_dir
    assert resolve_model(f"file://{model_dir}").directory == model_dir
    for uri, message in [("", "exactly one"), ("/does/not/exist", "does not exist"),
                         ("gs://bucket/model", "unsupported"), (str(tmp_path), "no Pillars model")]:
        with pytest.raises(ConfigError, match=message):
            resolve_model(uri)


def test_bad_configuration_exits_2_with_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pillars.serving", "--model_uri", str(tmp_path / "nope"),
                             "--http_port", "1", "--grpc_port", "2"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_model_resolution_from_the_mlflow_registry_and_runs(local_store, tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    from pillars.components.model.mlflow_model import log_pillars_model
    from pillars.components.registry.tracking import ensure_experiment

    model_dir = make_classifier(tmp_path / "m")
    with mlflow.start_run(experiment_id=ensure_experiment("serving-units")) as run:
        info = log_pillars_model(model_dir)
    mlflow.register_model(info.model_uri, "units")
    mlflow.register_model(info.model_uri, "units")
    MlflowClient().set_registered_model_alias("units", "champion", "1")

    by_alias = resolve_model("models:/units@champion")
    assert by_alias.version == "1" and (by_alias.directory / "model.safetensors").is_file()
    assert resolve_model("models:/units/2").version == "2"
    assert (resolve_model(f"runs:/{run.info.run_id}/model").directory / "config.json").is_file()
    with pytest.raises(ConfigError, match="alias 'nope'"):
        resolve_model("models:/units@nope")
    with pytest.raises(ConfigError, match="cannot download"):
        resolve_model("models:/units/9")


def test_batcher_refuses_rows_beyond_its_queue_at_once_and_takes_them_again_when_it_drains(predictor):
    from pillars.serving.errors import Overloaded

    gate = threading.Event()

    def forward(rows):
        gate.wait(5)
        return _predict(predictor, rows)

    async def run():
        batcher = Batcher(forward, max_batch_size=4, max_queued_rows=6)
        first = asyncio.create_task(batcher.submit(toy_rows(4)))
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded, match="4 rows are queued"):
            await batcher.submit(toy_rows(3))
        second = asyncio.create_task(batcher.submit(toy_rows(2)))  # 4 + 2 fits
        await asyncio.sleep(0.05)
        gate.set()
        results = await asyncio.gather(first, second)
        after = await batcher.submit(toy_rows(5))
        batcher.close()
        return results, after, batcher.pending_rows

    results, after, pending = asyncio.run(run())
    assert [len(r["label"]) for r in results] == [4, 2] and len(after["label"]) == 5 and pending == 0


def test_batcher_refuses_new_requests_while_the_last_pass_waited_too_long_and_admits_again_when_idle(predictor):
    from pillars.serving.errors import Overloaded

    released = [threading.Event(), threading.Event()]
    started: list[int] = []

    def forward(rows):
        call = len(started)
        started.append(call)
        if call < len(released):
            released[call].wait(5)
        return _predict(predictor, rows)

    async def until(condition) -> None:
        deadline = time.monotonic() + 5
        while not condition() and time.monotonic() < deadline:
            await asyncio.sleep(0.002)

    async def run():
        batcher = Batcher(forward, max_batch_size=4, max_queue_wait_ms=20)
        first = asyncio.create_task(batcher.submit(toy_rows(4)))
        await until(lambda: len(started) == 1)
        second = asyncio.create_task(batcher.submit(toy_rows(4)))  # queued behind the held pass
        waited_from = time.monotonic()
        await until(lambda: time.monotonic() - waited_from > 0.05)  # it waits > 20 ms for its pass
        released[0].set()
        await until(lambda: len(started) == 2)  # its pass started: the wait is measured
        with pytest.raises(Overloaded, match="max_queue_wait_ms"):
            await batcher.submit(toy_rows(1))
        released[1].set()
        results = await asyncio.gather(first, second)
        after = await batcher.submit(toy_rows(1))  # nothing pending: admitted
        batcher.close()
        return results, after

    results, after = asyncio.run(run())
    assert [len(r["label"]) for r in results] == [4, 4] and len(after["label"]) == 1


def test_allowed_hosts_default_to_the_loopback_names_on_a_loopback_bind():
    from pillars.serving.access.origins import LOOPBACK_NAMES, allowed_hosts, browser_body_refused, host_name

    assert allowed_hosts([], "127.0.0.1") == LOOPBACK_NAMES and allowed_hosts([], "::1") == LOOPBACK_NAMES
    assert allowed_hosts([], "0.0.0.0") is None and allowed_hosts(["*"], "127.0.0.1") is None
    assert allowed_hosts(["Model.Example"], "0.0.0.0") == {"model.example"}
    assert [host_name(h) for h in (b"localhost:8080", b"[::1]:80", b"::1", b"EVIL.example")] == [
        "localhost", "::1", "::1", "evil.example"]
    page = {b"origin": b"https://evil.example"}
    assert browser_body_refused(page | {b"content-type": b"text/plain"})
    assert browser_body_refused(page)  # no content type: a form or fetch default, not JSON
    assert not browser_body_refused(page | {b"content-type": b"application/json; charset=utf-8"})
    assert not browser_body_refused({b"content-type": b"text/plain"})  # not a browser: Triton's rule
    binary = {b"inference-header-content-length": b"10"}
    assert not browser_body_refused(page | binary | {b"content-type": b"application/octet-stream"})
    assert browser_body_refused(page | binary | {b"content-type": b"text/plain"})


def test_the_connection_budget_stays_below_the_descriptor_limit():
    import resource

    from pillars.serving.access.connections import FD_RESERVE, connection_budget

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        cap, backlog = connection_budget(1000, servers=2)
        assert 2 * (cap + backlog) <= 256 - FD_RESERVE and cap >= 8
        assert connection_budget(10, servers=2)[0] == 10
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_stale_downloads_of_dead_processes_are_removed_and_only_those(tmp_path):
    import os
    import subprocess

    from pillars.serving.storage import remove_stale_downloads

    finished = subprocess.Popen(["true"])
    finished.wait()
    dead, alive = tmp_path / f"pillars-model-{finished.pid}-abc", tmp_path / f"pillars-model-{os.getpid()}-abc"
    others = [tmp_path / "pillars-model-notes", tmp_path / "pillars-modelx-1-a", tmp_path / "other-1-a"]
    for path in (dead, alive, *others):
        path.mkdir()
    assert remove_stale_downloads(tmp_path) == [dead]
    assert not dead.exists() and alive.exists() and all(p.exists() for p in others)
