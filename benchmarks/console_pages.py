"""Console pages (issue 12): time to first render and page weight of each page, in Debian's chromium.

    python benchmarks/console_pages.py [--repeat 5] [--out console.json]

Sets up, in a temporary ``PILLARS_HOME``: an embedded MLflow registry with model ``toy`` (two
registered versions, v2 champion), and one finished run whose log is the recorded kfp.local log of a
real training run (``tests/console/fixtures``). Starts ``pillars console`` as a process on a free
loopback port, then opens every page ``--repeat`` times, each in a fresh browser context (cold cache).

- **first render**: the page's ``first-contentful-paint`` (Paint Timing API), from navigation start;
- **weight**: bytes transferred for the page and everything it loaded (``transferSize`` of the
  navigation and resource entries: headers plus compressed bodies).

Targets: first render under 1 s, weight at most 300 KB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mlflow  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

from pillars.components.model.predictor import save_model  # noqa: E402
from pillars.tasks.tabular import classifier_of  # noqa: E402
from pillars.components.registry.register import promote, register_model  # noqa: E402
from pillars.components.registry.tracking import configure_tracking, ensure_experiment  # noqa: E402
from pillars.console.runs import LOG_FILE, SUCCEEDED, RunStore  # noqa: E402
from tests.console.conftest import CHROMIUM, start_console  # noqa: E402

RECORDED_LOG = ROOT / "tests" / "console" / "fixtures" / "kfp_local_training.log"
FIRST_RENDER_TARGET_MS = 1000
WEIGHT_TARGET_BYTES = 300 * 1024

MEASURE = """() => {
  const nav = performance.getEntriesByType('navigation')[0];
  const paint = performance.getEntriesByName('first-contentful-paint')[0];
  const resources = performance.getEntriesByType('resource');
  return {fcp: paint ? paint.startTime : null,
          bytes: nav.transferSize + resources.reduce((n, r) => n + r.transferSize, 0),
          resources: resources.length};
}"""


def set_up(home: Path) -> str:
    """The registry and the recorded run; returns the run's id."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ["PILLARS_HOME"] = str(home)
    configure_tracking()
    mlflow.search_experiments()
    model_dir = save_model(*classifier_of([f"f{i}" for i in range(30)], ["no", "yes"], hidden_sizes=[64, 32]),
                           home / "model")
    for accuracy in (0.93, 0.95):
        with mlflow.start_run(experiment_id=ensure_experiment("toy")) as run:
            mlflow.log_metrics({"test_accuracy": accuracy, "test_f1_macro": accuracy - 0.01, "val_loss": 0.2})
        version = register_model(model_dir, None, "toy", run.info.run_id,
                                 {"task": "toy", "gate_approved": "true",
                                  "gate_reasons": f"accuracy={accuracy} >= 0.9 passed; no champion to compare with"})
        promote("toy", version, "benchmark set-up")
    store = RunStore(home / "console" / "runs")
    record = store.create("training", {"epochs": 2})
    shutil.copy(RECORDED_LOG, store.folder(record.id) / LOG_FILE)
    record.status, record.started, record.finished = SUCCEEDED, record.created, record.created
    store.save(record)
    return record.id


def measure(base: str, paths: list[str], repeat: int) -> dict[str, dict[str, float]]:
    results = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            for path in paths:
                first_render, weight = [], []
                for _ in range(repeat + 1):  # the first visit warms the server's caches; not counted
                    context = browser.new_context(viewport={"width": 1280, "height": 900})
                    page = context.new_page()
                    page.goto(base + path, wait_until="load")
                    m = page.evaluate(MEASURE)
                    for _ in range(50):  # the paint entry can come after the load event
                        if m["fcp"] is not None:
                            break
                        page.wait_for_timeout(100)
                        m = page.evaluate(MEASURE)
                    context.close()
                    first_render.append(m["fcp"])
                    weight.append(m["bytes"])
                results[path] = {"first_render_ms": statistics.median(first_render[1:]),
                                 "first_render_max_ms": max(first_render[1:]), "bytes": max(weight[1:])}
        finally:
            browser.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", help="write the results as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pillars-console-bench-") as tmp:
        home = Path(tmp) / ".pillars"
        run_id = set_up(home)
        console = start_console(home, {})
        try:
            paths = ["/pipelines", "/pipelines/training", "/runs", f"/runs/{run_id}", "/models", "/models/toy",
                     "/models/toy?a=1&b=2", "/models/toy/versions/2", "/models/toy/versions/2/rollback", "/endpoints"]
            results = measure(console.url, paths, args.repeat)
        finally:
            console.process.stop()
    print(f"{'page':<36} {'first render (median, max)':>28} {'weight':>10}")
    ok = True
    for path, r in results.items():
        ok &= r["first_render_max_ms"] < FIRST_RENDER_TARGET_MS and r["bytes"] <= WEIGHT_TARGET_BYTES
        print(f"{path.replace(run_id, '<run>'):<36} {r['first_render_ms']:>14.0f} ms {r['first_render_max_ms']:>7.0f} ms "
              f"{r['bytes'] / 1024:>8.1f} KB")
    print(f"targets (first render < {FIRST_RENDER_TARGET_MS} ms, weight <= 300 KB): {'met' if ok else 'NOT met'}")
    if args.out:
        Path(args.out).write_text(json.dumps({p.replace(run_id, "<run>"): r for p, r in results.items()}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
