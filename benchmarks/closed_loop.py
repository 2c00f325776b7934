"""Time from the start of shifted traffic to a registered retrained version, in the local stack.

    python benchmarks/closed_loop.py [--epochs 20]

Starts the real stack (``pillars up --fast`` timings: scrape and rule evaluation every 1 s, drift
alert after 5 s, Alertmanager group wait 1 s) in a temporary ``PILLARS_HOME``, trains a deliberately
weak champion, sends in-distribution traffic, then features x3, and reports when each stage was reached.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20, help="epochs of the retraining run")
    args = parser.parse_args()
    os.environ["PILLARS_HOME"] = str(Path(tempfile.mkdtemp(prefix="pillars-loop-")) / ".pillars")
    os.environ.pop("MLFLOW_TRACKING_URI", None)

    from pillars.components import registry
    from pillars.components.data.prepare import PrepareParams, prepare
    from pillars.components.registry.tracking import configure_tracking
    from pillars.pipelines.local.runner import run_local
    from pillars.pipelines.local.stack import Ports, Stack, Timing, free_port
    from pillars.pipelines.training import training_pipeline
    from pillars.serving.demo import v2_request

    model = "loop"
    configure_tracking()
    run_local(training_pipeline(), {"task": "breast_cancer", "model_name": model, "epochs": 1,
                                    "learning_rate": 3e-4, "thresholds": '{"accuracy": 0.5}'},
              log_file=Path(os.environ["PILLARS_HOME"]) / "logs" / "initial.log")
    data = prepare(PrepareParams(task="breast_cancer"))
    shifted = np.concatenate([data.splits["val"]["input-0"], data.splits["test"]["input-0"]] * 6) * 3
    names = ("mlflow", "http", "grpc", "trigger", "alertmanager", "prometheus")
    stack = Stack()
    state = stack.up(model, Ports(**{n: free_port() for n in names}), Timing.fast(), params=[f"epochs={args.epochs}"])
    urls = state["urls"]
    marks: dict[str, float] = {}
    try:
        start = time.monotonic()
        for i in range(0, len(shifted), 20):
            httpx.post(f"{urls['model_http']}/v2/models/{model}/infer", json=v2_request(shifted[i:i + 20]),
                       timeout=10).raise_for_status()
        marks["traffic sent"] = time.monotonic() - start
        configure_tracking(urls["mlflow"])
        deadline = start + 600
        while time.monotonic() < deadline and "version registered" not in marks:
            if "alert firing" not in marks and httpx.get(f"{urls['prometheus']}/api/v1/query", params={
                    "query": 'ALERTS{alertname="PillarsModelDrift",alertstate="firing"}'}).json()["data"]["result"]:
                marks["alert firing"] = time.monotonic() - start
            if "run started" not in marks and 'decision="started"} 1.0' in httpx.get(f"{urls['trigger']}/metrics").text:
                marks["run started"] = time.monotonic() - start
            if len(registry.list_versions(model)) >= 2:
                marks["version registered"] = time.monotonic() - start
            time.sleep(0.5)
    finally:
        stack.down()
    for what, seconds in marks.items():
        print(f"{what:<20} {seconds:7.1f} s after the shifted traffic started")


if __name__ == "__main__":
    main()
