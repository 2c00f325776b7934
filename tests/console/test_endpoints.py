"""The Endpoints page against a real model server: its health and served version, and rate, latency,
errors and per-feature drift over time, read from its ``/metrics`` and from a real Prometheus."""

from __future__ import annotations

import time

import httpx
import mlflow
import numpy as np
import pytest
import yaml
from markupsafe import escape

from pillars.console import endpoints
from pillars.pipelines.local.stack import WEB_USER, web_config
from pillars.serving.demo import v2_request
from tests.console.conftest import BrowserWatch, artifacts_dir, start_console
from tests.conftest import require_tool
from tests.processes import ServerProcess, free_port
from tests.serving.conftest import start_server
from tests.serving.toy import make_classifier, make_profiled_classifier, toy_rows

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The toy classifier (with its drift profile) served from a folder; drift reported after 20 rows."""
    folder = make_profiled_classifier(tmp_path_factory.mktemp("endpoint") / "model")
    served = start_server(["--model_dir", str(folder), "--model_name", "toy", "--drift_window", "50",
                           "--drift_min_rows", "20", "--drift_interval_s", "0.5"],
                          log_path=folder.parent / "server.log")
    yield served
    served.process.stop()


def _send(url: str, rows: np.ndarray, times: int) -> None:
    for _ in range(times):
        httpx.post(f"{url}/v2/models/toy/infer", json=v2_request(rows), timeout=10).raise_for_status()


def _until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_without_prometheus_the_console_samples_the_servers_metrics(server, local_store, browser, tmp_path):
    sampler = endpoints.Sampler(0.5)
    sampler.watch([endpoints.Endpoint("toy", server.http)])
    try:
        _send(server.http, toy_rows(10), 3)
        _until(lambda: len(sampler.samples(server.http)) >= 2, 20, "two samples")
        _send(server.http, toy_rows(10, seed=1) * 3.0, 5)  # shifted inputs: drift
        seen = len(sampler.samples(server.http))
        _until(lambda: len(sampler.samples(server.http)) >= seen + 2 and sampler.samples(server.http)[-1].drift,
               30, "samples with drift")
        view = endpoints.view(endpoints.Endpoint("toy", server.http), sampler)
    finally:
        sampler.stop()
    assert view.ready and view.health == "ready" and view.source == "/metrics" and view.version == "1"
    assert max(v for _, v in view.rate["requests/s"]) > 0
    assert all(0 < v < 5 for _, v in view.p99["p99"] if np.isfinite(v))
    assert view.error_ratio["errors"] and max(v for _, v in view.error_ratio["errors"]) == 0
    assert set(view.drift) == {"f0", "f1", "f2", "f3"}

    # The same, as a person sees it: the console process, its page, charts drawn, refreshed in place.
    mlflow.search_experiments()  # the embedded registry the console reads exists
    console = start_console(tmp_path / ".pillars", {"PILLARS_CONSOLE_ENDPOINTS": f"toy={server.http}",
                                                     "PILLARS_CONSOLE_SAMPLE_INTERVAL_S": "0.5"})
    watch = BrowserWatch()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    watch.attach(page)
    try:
        page.goto(f"{console.url}/endpoints")
        _send(server.http, toy_rows(10, seed=2) * 3.0, 5)
        page.wait_for_timeout(11_000)  # one refresh of the charts (every 10 s), after new traffic
        _send(server.http, toy_rows(10, seed=3) * 3.0, 5)
        page.reload()
        assert page.get_by_text("ready").first.is_visible()
        for feature in ("f0", "f1", "f2", "f3"):
            assert page.get_by_role("img", name=feature).is_visible()
        assert page.locator("svg.chart polyline").count() >= 5
        page.screenshot(path=str(artifacts_dir(tmp_path) / "endpoints-with-server.png"), full_page=True)
    finally:
        context.close()
        console.process.stop()
    assert watch.errors == []
    assert all(url.startswith(console.url + "/") for url in watch.requests)


def test_with_prometheus_the_charts_come_from_its_query_api(server, tmp_path):
    port = free_port()
    config = {"global": {"scrape_interval": "1s"},
              "scrape_configs": [{"job_name": "pillars-model-server",
                                  "static_configs": [{"targets": [server.http.removeprefix("http://")]}]}]}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    # With basic auth, as `pillars up` starts it.
    (tmp_path / "web.yml").write_text(yaml.safe_dump(web_config("pw", cost=4)))
    auth = (WEB_USER, "pw")
    prometheus = ServerProcess([require_tool("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
                                f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                                f"--web.config.file={tmp_path / 'web.yml'}"],
                               log_path=tmp_path / "prometheus.log")
    url = f"http://127.0.0.1:{port}"
    try:
        prometheus.wait_http(f"{url}/-/ready", timeout=60, status=401)
        deadline = time.monotonic() + 60
        series: dict = {}
        while time.monotonic() < deadline and not (
                any(v > 0 for _, v in series.get("rate", [])) and series.get("drift") and series.get("p99")):
            _send(server.http, toy_rows(10, seed=2), 2)
            time.sleep(1)
            series = endpoints.prometheus_series(url, "toy", auth=auth)
        assert series["rate"] and max(v for _, v in series["rate"]) > 0
        assert series["p99"] and set(series["drift"]) == {"f0", "f1", "f2", "f3"}
        sampler = endpoints.Sampler(60)
        view = endpoints.view(endpoints.Endpoint("toy", server.http, "toy", url, auth), sampler)
        assert view.source == "prometheus" and view.ready and view.version
        without = endpoints.view(endpoints.Endpoint("toy", server.http, "toy", url), sampler)
        assert without.source == "/metrics"  # 401: the console falls back to the server's own /metrics
    finally:
        prometheus.stop()


def test_the_local_stack_endpoint_reads_its_prometheus_with_the_stack_password(tmp_path):
    password = tmp_path / "web.password"
    password.write_text("pw\n")
    state = {"model": "m", "urls": {"model_http": "http://127.0.0.1:1", "prometheus": "http://127.0.0.1:2"},
             "web_auth": {"username": WEB_USER, "password_file": str(password)}}
    (stack,) = endpoints.discover(state, {}, "")
    assert (stack.prometheus, stack.prometheus_auth) == ("http://127.0.0.1:2", (WEB_USER, "pw"))
    (configured,) = endpoints.discover(state, {}, "http://prometheus.example")  # another Prometheus: not its password
    assert (configured.prometheus, configured.prometheus_auth) == ("http://prometheus.example", None)


def test_the_shadow_comparison_is_the_servers_own_and_shown_on_the_page_with_the_servers_token(tmp_path, local_store):
    champion = make_profiled_classifier(tmp_path / "champion")
    challenger = make_classifier(tmp_path / "challenger", steps=2, seed=5)
    token = "a-model-server-token-for-the-console"
    (tmp_path / "server.token").write_text(token + "\n")
    served = start_server(["--model_dir", str(champion), "--model_name", "toy", "--shadow_uri", str(challenger),
                           "--feedback_dir", str(tmp_path / "labels"), "--shadow_min_labels", "30",
                           "--auth_token_file", str(tmp_path / "server.token")],
                          log_path=tmp_path / "server.log")
    try:
        assert endpoints.shadow_comparison(endpoints.Endpoint("toy", served.http)) is None  # refused without it
        (endpoint,) = endpoints.discover(None, {"toy": served.http}, "", token)
        assert endpoints.Sampler(60).scrape(endpoint) is not None  # /metrics asks for the token too
        idle = endpoints.shadow_comparison(endpoint)  # no model named: it asks
        assert idle is not None and idle.model == "toy" and idle.rows == 0
        assert idle.action == "wait" and "30" in idle.reason  # not enough labels yet, and it says so
        x = toy_rows(60, seed=7)
        y = (x[:, 0] > 5.0).astype(int) + (x[:, 1] > 6.0).astype(int)
        with httpx.Client(timeout=30, headers=endpoint.headers) as client:
            ids = [client.post(f"{served.http}/v2/models/toy/infer", json=v2_request(x[i:i + 1])).json()["id"]
                   for i in range(len(x))]
            _until(lambda: client.get(f"{served.http}/v2/models/toy/shadow").json()["shadow"]["rows"] == len(x),
                   30, "the shadow answering every row")
            labels = [{"id": request_id, "label": int(y[i])} for i, request_id in enumerate(ids)]
            client.post(f"{served.http}/v2/models/toy/feedback", json={"labels": labels}).raise_for_status()
            truth = client.get(f"{served.http}/v2/models/toy/shadow").json()
        view = endpoints.view(endpoint, endpoints.Sampler(60))
        assert view.ready and view.shadow is not None
        assert (view.shadow.rows, view.shadow.labelled) == (len(x), len(x))
        assert view.shadow.agreement == truth["shadow"]["agreement"]
        assert view.shadow.action == truth["decision"]["action"] != "none"
        assert view.shadow.reason == truth["decision"]["reason"] and view.shadow.reason

        mlflow.search_experiments()
        console = start_console(tmp_path / ".pillars", {"PILLARS_CONSOLE_ENDPOINTS": f"toy={served.http}",
                                                        "PILLARS_CONSOLE_ENDPOINT_TOKEN_FILE": str(tmp_path / "server.token")})
        try:
            page = httpx.get(f"{console.url}/endpoints", timeout=30).text
        finally:
            console.process.stop()
        assert "Shadow challenger" in page and f"{100 * truth['shadow']['agreement']:.1f}%" in page
        assert f"<strong>{truth['decision']['action']}</strong>" in page
        assert str(escape(truth["decision"]["reason"])) in page
    finally:
        served.process.stop()
