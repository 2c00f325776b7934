"""The console end to end in a real browser: headless Debian chromium, a real console process, a real
``mlflow server``, a real training run through kfp.local started from the form.

One walk through the loop: a bad parameter is refused at its field; a run submitted with changed
parameters is running when the console is killed (``kill -9``); its worker goes on, a new console on the
same home re-attaches to it, and the run is watched to success on its page (no reload); the new version shows the gate's reasons
and the alias history; rolling back moves the champion back. Screenshots of every page are written
for a person to look at (``PILLARS_TEST_ARTIFACTS`` or the test's tmp dir).
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import mlflow
import pytest
from playwright.sync_api import expect

from pillars.components import registry
from pillars.components.registry.register import promote, register_model
from pillars.components.registry.tracking import ensure_experiment
from pillars.console.runs import worker_alive
from pillars.pipelines.local.stack import stop_group
from tests.console.conftest import BrowserWatch, artifacts_dir, start_console
from tests.models import save_classifier

pytestmark = pytest.mark.slow

MODEL = "breast_cancer"
RUN_TIMEOUT_MS = 420_000  # a 2-epoch training run through kfp.local, on a loaded 2-core machine


def register_first_champion(tmp_path: Path) -> str:
    """v1 of ``breast_cancer``, registered through the registry API and promoted: an untrained model whose
    logged test accuracy (0.5) any trained candidate beats, so the form's run becomes champion."""
    model_dir = save_classifier(tmp_path / "v1", classes=["malignant", "benign"], hidden_sizes=[4])
    with mlflow.start_run(experiment_id=ensure_experiment(MODEL)) as run:
        mlflow.log_metric("test_accuracy", 0.5)
    version = register_model(model_dir, None, MODEL, run.info.run_id,
                             {"task": MODEL, "gate_approved": "true", "gate_reasons": "set up by the test"})
    promote(MODEL, version, "first champion, set up by the test")
    return version


def test_submit_watch_inspect_and_roll_back_in_the_browser(browser, tracking_uri, tmp_path):
    first = register_first_champion(tmp_path)
    console = start_console(tmp_path / "home", {"MLFLOW_TRACKING_URI": tracking_uri})
    urls = [console.url]
    worker: tuple[int, str] | None = None
    shots = artifacts_dir(tmp_path)
    watch = BrowserWatch()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    watch.attach(page)
    try:
        page.goto(f"{console.url}/")
        nav = page.get_by_role("navigation")
        for name in ("Pipelines", "Runs", "Models", "Endpoints"):
            assert nav.get_by_role("link", name=name, exact=True).is_visible()
        page.screenshot(path=str(shots / "pipelines.png"), full_page=True)

        # A bad parameter: refused at its field (the form again, never a 500), nothing queued.
        page.get_by_role("link", name="training", exact=True).click()
        page.get_by_label("epochs").fill("zero")
        with page.expect_response(lambda r: r.request.method == "POST") as answer:
            page.get_by_role("button", name="Submit run").click()
        assert answer.value.status == 200
        assert page.url.endswith("/pipelines/training")
        epochs_error = page.locator("#e-epochs")
        assert "epochs must be integer" in epochs_error.inner_text()
        assert page.get_by_label("epochs").get_attribute("aria-invalid") == "true"
        page.screenshot(path=str(shots / "pipeline-form-error.png"), full_page=True)

        # A semantic error from the same check as `pillars run`: named field, kept values.
        page.get_by_label("epochs").fill("0")
        page.get_by_role("button", name="Submit run").click()
        assert "invalid epochs=0" in page.locator("#e-epochs").inner_text()

        # The run, with changed parameters.
        page.get_by_label("epochs").fill("2")
        page.get_by_label("thresholds").fill('{"accuracy": 0.5}')
        page.get_by_role("button", name="Submit run").click()
        page.wait_for_url(re.compile(r"/runs/\w+$"))
        run_url = page.url
        page.evaluate("window.__notReloaded = true")
        status = page.locator("#run-status")
        assert status.inner_text() in ("queued", "running")
        page.get_by_role("cell", name="train", exact=True).wait_for()  # steps listed before they run
        expect(status).to_have_text("running", timeout=RUN_TIMEOUT_MS)
        page.screenshot(path=str(shots / "run-running.png"), full_page=True)

        # kill -9 of the console mid-run: its worker (a session of its own) goes on, and a new console on
        # the same home finds it by pid and start time and shows the run's real outcome.
        record_file = console.home / "console" / "runs" / run_url.rsplit("/", 1)[1] / "run.json"
        deadline = time.monotonic() + 60
        while not (record := json.loads(record_file.read_text())).get("worker_started"):
            assert time.monotonic() < deadline, record
            time.sleep(0.2)
        worker = (record["worker_pid"], record["worker_started"])
        page.goto("about:blank")  # no live update is cut off mid-request
        os.kill(console.process.proc.pid, signal.SIGKILL)
        console.process.stop()
        assert worker_alive(*worker), "the worker died with its console"
        assert json.loads(record_file.read_text())["status"] == "running"
        console = start_console(console.home, {"MLFLOW_TRACKING_URI": tracking_uri})
        urls.append(console.url)
        run_url = run_url.replace(urls[0], console.url)
        page.goto(run_url)
        page.evaluate("window.__notReloaded = true")
        status = page.locator("#run-status")
        assert status.inner_text() in ("running", "succeeded")  # re-attached, not marked failed
        expect(status).to_have_text(re.compile("succeeded|failed"), timeout=RUN_TIMEOUT_MS)
        assert status.inner_text() == "succeeded", (console.home / "console.log").read_text()[-3000:]
        assert page.evaluate("window.__notReloaded === true"), "the run page reloaded itself"
        assert page.url == run_url
        page.screenshot(path=str(shots / "run-succeeded.png"), full_page=True)
        assert page.locator("#gate-decision").inner_text().startswith("Approved")
        assert "accuracy=" in page.locator(".reasons").first.inner_text()
        for step in ("prepare data", "train", "evaluate", "validate (gate)", "register", "promote to champion"):
            row = page.get_by_role("row").filter(has=page.get_by_role("cell", name=step, exact=True))
            assert row.get_by_text("succeeded").is_visible(), step

        # The new version: gate reasons, lineage, alias history; it is the champion now.
        second = str(int(first) + 1)
        page.get_by_role("link", name=f"{MODEL} v{second}").click()
        assert page.locator("#champion").inner_text() == f"v{second}"
        assert "accuracy=" in page.locator("#gate-reasons").inner_text()
        history = page.locator("table.history")
        assert history.get_by_role("row").filter(has_text="gate approved").filter(has_text=f"v{first}").count() == 1
        assert page.get_by_role("link", name="learning curve").is_visible()
        page.screenshot(path=str(shots / "version.png"), full_page=True)

        # Roll back, through the confirmation step.
        page.get_by_role("button", name="Rollback").click()
        assert "Roll back" in page.get_by_role("heading", level=1).inner_text()
        page.screenshot(path=str(shots / "rollback-confirm.png"), full_page=True)
        assert registry.alias_version(MODEL, registry.CHAMPION) == second  # nothing moved before confirming
        page.get_by_role("button", name="Confirm rollback").click()
        page.wait_for_url(re.compile(rf"/models/{MODEL}/versions/{first}\?done=rolled-back$"))
        assert page.locator("#champion").inner_text() == f"v{first}"
        assert registry.alias_version(MODEL, registry.CHAMPION) == first
        assert page.locator("table.history").get_by_text("rolled back in the console").is_visible()
        assert page.get_by_role("button", name="Rollback").is_visible()  # v1 is the champion again
        assert page.get_by_role("button", name="Promote").count() == 0
        page.screenshot(path=str(shots / "version-after-rollback.png"), full_page=True)

        # The other pages, each with header cells in its tables.
        for name, path in (("models", "/models"), ("model", f"/models/{MODEL}?a={first}&b={second}"),
                           ("runs", "/runs"), ("endpoints", "/endpoints")):
            page.goto(f"{console.url}{path}")
            for table in page.locator("table").all():
                assert table.locator("th").count() > 0, f"{path}: a table without header cells"
            page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
            if name == "runs":  # one run: the refused forms queued nothing
                assert page.locator("tbody tr").count() == 1
                assert page.get_by_role("row").filter(has_text="training").get_by_text("succeeded").is_visible()
    finally:
        context.close()
        console.process.stop()
        leftover = worker is not None and worker_alive(*worker)
        if leftover:
            stop_group(worker[0])
    assert not leftover, "the run's worker outlived the test's consoles"

    outside = [url for url in watch.requests
               if not url.startswith(tuple(f"{u}/" for u in urls)) and url != "about:blank"]
    assert outside == [], f"requests left the console: {outside[:5]}"
    assert watch.errors == [], watch.errors
    assert len(list(shots.glob("*.png"))) >= 10
