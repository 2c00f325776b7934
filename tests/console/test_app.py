"""The console app in-process over an embedded registry: CSRF on every state-changing POST, the Host and
token rules, field errors instead of 500s, and promote/rollback through the registry code."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from fastapi.testclient import TestClient

from pillars.components import registry
from pillars.components.registry.register import promote, register_model
from pillars.components.settings import Settings
from pillars.components.registry.tracking import configure_tracking, ensure_experiment
from pillars.console.app import create_app
from pillars.console.settings import ConsoleSettings
from tests.models import save_classifier

TOKEN = "console-token-for-the-tests-0123"
BASE = "http://127.0.0.1:8700"


@pytest.fixture(scope="module")
def toy_versions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """An embedded store (for the whole module) with model ``toy``: v1 then v2 promoted, so v2 is champion."""
    home = tmp_path_factory.mktemp("console-app")
    with pytest.MonkeyPatch.context() as env:
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        env.setenv("PILLARS_HOME", str(home / ".pillars"))
        configure_tracking()
        mlflow.search_experiments()  # creates the embedded store's tables, as a first command would
        model_dir = save_classifier(home / "model", hidden_sizes=[4])
        versions = []
        for accuracy in (0.8, 0.9):
            with mlflow.start_run(experiment_id=ensure_experiment("toy")) as run:
                mlflow.log_metric("test_accuracy", accuracy)
            version = register_model(model_dir, None, "toy", run.info.run_id,
                                     {"gate_approved": "true", "gate_reasons": "accuracy=0.9 >= 0.5 passed"})
            promote("toy", version, "test setup")
            versions.append(version)
        yield versions[0], versions[1]
    mlflow.set_tracking_uri(None)


@pytest.fixture
def champion_restored(toy_versions):
    """Puts v2 back as champion after a test that moves it."""
    yield
    promote("toy", toy_versions[1], "test clean-up")


def _client(tmp_path: Path, host: str = "127.0.0.1", token: str | None = None) -> TestClient:
    app = create_app(ConsoleSettings(host=host), token, Settings(home=tmp_path / ".pillars"))
    return TestClient(app, base_url=BASE)


def _csrf(client: TestClient, path: str) -> str:
    page = client.get(path, headers={"Accept": "text/html"})
    assert page.status_code == 200, page.text[:300]
    return re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)


def test_a_post_without_its_csrf_token_is_refused_and_changes_nothing(toy_versions, tmp_path):
    v1, v2 = toy_versions
    with _client(tmp_path) as client:
        _csrf(client, f"/models/toy/versions/{v2}/rollback")
        for form in ({}, {"csrf_token": "forged", "expected_champion": v2}):
            answer = client.post(f"/models/toy/versions/{v2}/rollback", data=form)
            assert answer.status_code == 403 and "CSRF token" in answer.text
        other = TestClient(client.app, base_url=BASE)  # another browser: its own session, so the token is not valid
        token = _csrf(client, "/pipelines/training")
        answer = other.post("/pipelines/training", data={"csrf_token": token, "epochs": "2"})
        assert answer.status_code == 403
        assert client.app.state.store.list() == []
    assert registry.alias_version("toy", registry.CHAMPION) == v2


def test_bad_form_input_is_a_field_error_and_queues_nothing(toy_versions, tmp_path):
    with _client(tmp_path) as client:
        token = _csrf(client, "/pipelines/training")
        answer = client.post("/pipelines/training", data={"csrf_token": token, "epochs": "-1", "task": "nope"})
        assert answer.status_code == 200  # the form again, errors at their fields
        assert 'id="e-epochs"' in answer.text and "invalid epochs=-1" in answer.text
        assert 'value="nope"' in answer.text  # what was typed is kept
        assert client.app.state.store.list() == []
        assert client.post("/pipelines/unknown", data={"csrf_token": token}).status_code == 404


def test_promote_and_rollback_go_through_the_registry_with_compare_and_set(toy_versions, champion_restored, tmp_path):
    v1, v2 = toy_versions
    with _client(tmp_path) as client:
        token = _csrf(client, f"/models/toy/versions/{v1}/promote")
        # The person saw a champion that is no longer there: nothing moves.
        stale = client.post(f"/models/toy/versions/{v1}/promote",
                            data={"csrf_token": token, "expected_champion": "99", "why": "stale"})
        assert stale.status_code == 409 and "moved" in stale.text
        assert registry.alias_version("toy", registry.CHAMPION) == v2
        answer = client.post(f"/models/toy/versions/{v2}/rollback",
                             data={"csrf_token": token, "expected_champion": v2, "why": "bad canary"},
                             follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"] == f"/models/toy/versions/{v1}?done=rolled-back"
        assert registry.alias_version("toy", registry.CHAMPION) == v1
        last = registry.history("toy", registry.CHAMPION)[-1]
        assert (last.from_version, last.to_version, last.why) == (v2, v1, f"rollback from v{v2}: bad canary")
        page = client.get(f"/models/toy/versions/{v1}?done=rolled-back")
        assert "bad canary" in page.text and "Rolled back" in page.text


def test_missing_things_are_404_pages_not_500s(toy_versions, tmp_path):
    with _client(tmp_path) as client:
        for path in ("/models/nope", "/models/toy/versions/42", "/runs/nope", "/pipelines/nope",
                     "/artifacts/abc/etc/passwd", "/models/toy?a=1&b=42"):
            answer = client.get(path)
            assert answer.status_code == 404, path
            assert "<nav" in answer.text
        answer = client.get("/runs/abc123/progress.json")  # scripts read JSON: the error is JSON too
        assert answer.status_code == 404 and "abc123" in answer.json()["error"]


def test_any_platform_error_is_a_page_with_the_status_its_class_carries(toy_versions, tmp_path):
    from pillars.components.errors import DataError
    from pillars.components.registry import ChampionMoved, RegistryUnavailable

    raised = {"/unavailable": RegistryUnavailable("the registry is down"),
              "/moved": ChampionMoved("toy", "champion", "1", "2"), "/bad": DataError("no rows")}
    with _client(tmp_path) as client:
        for path, error in raised.items():
            client.app.get(path)(_raising(error))
        for path, status in (("/unavailable", 503), ("/moved", 409), ("/bad", 400)):
            answer = client.get(path)
            assert answer.status_code == status, path
            assert str(raised[path]) in answer.text and "<nav" in answer.text
            assert "default-src 'self'" in answer.headers["content-security-policy"]  # the guard's headers too


def _raising(error: Exception):
    def route() -> None:
        raise error
    return route


def test_on_loopback_only_loopback_host_names_are_served(toy_versions, tmp_path):
    with _client(tmp_path) as client:
        assert client.get("/models").status_code == 200
        assert client.get("/models", headers={"Host": "localhost:8700"}).status_code == 200
        rebound = client.get("/models", headers={"Host": "attacker.example:8700"})
        assert rebound.status_code == 421  # a DNS-rebinding page cannot read or post to the console


def test_off_loopback_every_page_needs_the_token(toy_versions, tmp_path):
    with _client(tmp_path, host="0.0.0.0", token=TOKEN) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/models").status_code == 401
        assert client.get("/models", headers={"Accept": "text/html"}, follow_redirects=False).headers[
            "location"] == "/login?next=/models"
        assert client.get("/models", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert client.get("/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        token = _csrf(client, "/login")
        wrong = client.post("/login", data={"csrf_token": token, "token": "wrong", "next": "/models"})
        assert wrong.status_code == 401
        ok = client.post("/login", data={"csrf_token": token, "token": TOKEN, "next": "//evil.example/x"},
                         follow_redirects=False)
        assert ok.headers["location"] == "/"  # no open redirect
        cookie = ok.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and TOKEN not in cookie
        assert client.get("/models").status_code == 200  # the login cookie


def test_pages_forbid_outside_scripts_and_framing(toy_versions, tmp_path):
    with _client(tmp_path) as client:
        answer = client.get("/models")
        policy = answer.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert "SameSite=strict" in answer.headers["set-cookie"]


def test_a_body_over_the_limit_is_refused_by_the_bytes_read_not_the_declared_length(toy_versions, tmp_path):
    with _client(tmp_path, host="0.0.0.0", token=TOKEN) as client:
        def chunks():  # chunked: no Content-Length to check (the real process's memory: test_limits)
            for _ in range(64):
                yield b"token=" + b"x" * 16384

        answer = client.post("/login", content=chunks(), headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert answer.status_code == 413 and "larger than 65536 bytes" in answer.text
        assert answer.headers["connection"] == "close"
        declared = client.post("/login", content=b"x" * 70000, headers={"Content-Type": "text/plain"})
        assert declared.status_code == 413
        token = _csrf(client, "/login")  # a form within the limit still works
        assert client.post("/login", data={"csrf_token": token, "token": TOKEN}, follow_redirects=False).status_code == 303


def test_wrong_tokens_are_rate_limited_with_retry_after(toy_versions, tmp_path):
    app = create_app(ConsoleSettings(host="0.0.0.0", login_attempts=3), TOKEN, Settings(home=tmp_path / ".pillars"))
    with TestClient(app, base_url=BASE) as client:
        token = _csrf(client, "/login")
        for _ in range(2):
            assert client.post("/login", data={"csrf_token": token, "token": "wrong"}).status_code == 401
        assert client.get("/models", headers={"Authorization": "Bearer wrong"}).status_code == 401  # the third
        refused = client.post("/login", data={"csrf_token": token, "token": TOKEN})
        assert refused.status_code == 429 and 55 <= int(refused.headers["retry-after"]) <= 60
        assert "too many wrong tokens" in refused.text
        assert client.get("/models", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 429
        assert client.get("/healthz").status_code == 200 and client.get("/login").status_code == 200
        app.state.limiter.succeeded("testclient")  # the window passed
        assert client.get("/models", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_a_source_outside_the_data_root_or_a_module_task_is_refused_at_its_field(toy_versions, tmp_path):
    app = create_app(ConsoleSettings(data_root=tmp_path / "data"), None, Settings(home=tmp_path / ".pillars"))
    with TestClient(app, base_url=BASE) as client:
        token = _csrf(client, "/pipelines/training")
        answer = client.post("/pipelines/training", data={
            "csrf_token": token, "task": "tabular_classification", "label_column": "y", "source": "/etc/passwd"})
        assert 'id="e-source"' in answer.text and "outside the console&#39;s data root" in answer.text
        answer = client.post("/pipelines/training", data={"csrf_token": token, "task": "os:system"})
        assert 'id="e-task"' in answer.text and "module reference" in answer.text
        assert client.app.state.store.list() == []


def test_an_optimised_variant_shows_its_parent_size_and_metric_delta_apart_from_trained_versions(toy_versions, tmp_path):
    from pillars.components.optimize.register import TAGS

    v1, v2 = toy_versions
    with mlflow.start_run(experiment_id=ensure_experiment("toy")) as run:
        mlflow.log_metric("onnx-int8.test_accuracy", 0.89)
    tags = {"pillars.variant": "onnx-int8", "pillars.parent_version": v2, "pillars.size_bytes": "12345",
            "pillars.metric": "accuracy", "pillars.metric_delta": "-0.0125", "pillars.latency_ms_b1": "0.42",
            "pillars.throughput_b64": "51234", "pillars.optimize_run": run.info.run_id}
    assert set(TAGS) <= set(tags)  # the tags register_variants writes
    variant = register_model(save_classifier(tmp_path / "variant", hidden_sizes=[4]), None, "toy", run.info.run_id, tags)
    with _client(tmp_path) as client:
        model = client.get("/models/toy").text
        trained, variants = model.split('<h2>Optimised variants</h2>')[0], model.split('<table id="variants">')[1]
        assert f">v{variant}</a>" not in trained and f">v{v2}</a>" in trained
        row = variants.split("</tbody>")[0]
        assert f'href="/models/toy/versions/{variant}">v{variant}</a>' in row
        assert f'href="/models/toy/versions/{v2}">v{v2}</a>' in row  # its parent, linked
        assert "onnx-int8" in row and "12.3 kB" in row and "accuracy -0.0125" in row and "0.42 ms" in row
        page = client.get(f"/models/toy/versions/{variant}").text
        section = page.split('<section id="variant">')[1].split("</section>")[0]
        assert "pillars.variant</th><td>onnx-int8" in section
        assert f'<a href="/models/toy/versions/{v2}">v{v2}</a>' in section
        assert "12.3 kB" in section and "-0.0125" in section and "51234/s" in section
        assert f'<td id="parent"><a href="/models/toy/versions/{v2}">' in page
        assert '<section id="variant">' not in client.get(f"/models/toy/versions/{v2}").text


def test_a_version_page_shows_the_data_steps_lineage(toy_versions, tmp_path):
    """The tags registration writes from the data step's metadata (engine, rows per split, Spark application id)."""
    from mlflow import MlflowClient

    v1, _ = toy_versions
    tags = {"data_engine": "spark", "data_rows": '{"test": 15, "train": 70, "val": 15}',
            "spark_app_id": "local-1796637885386"}
    for key, value in tags.items():
        MlflowClient().set_model_version_tag("toy", v1, key, value)
    try:
        with _client(tmp_path) as client:
            page = client.get(f"/models/toy/versions/{v1}")
        assert page.status_code == 200
        row = re.search(r'<td id="data-lineage">(.*?)</td>', page.text, re.S)
        assert row, page.text[-2000:]
        assert "engine spark" in row.group(1) and "local-1796637885386" in row.group(1) and "train" in row.group(1)
    finally:
        for key in tags:
            MlflowClient().delete_model_version_tag("toy", v1, key)
