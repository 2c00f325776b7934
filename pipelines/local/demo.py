"""``pillars demo``: the loop on one machine in a minute: train -> register -> serve -> query."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from pillars.components import registry
from pillars.components.registry.references import default_model_name
from pillars.components.settings import Settings


def run_demo(task: str = "breast_cancer", epochs: int = 30, serve: bool = True, task_args: str = "") -> int:
    """Run the training pipeline locally on any task (an installed task's name or
    ``package.module:attribute``), show the registry, then serve the champion and query it."""
    from pillars.pipelines.local.progress import log_path, run_reported
    from pillars.pipelines.training import training_pipeline
    from pillars.serving.storage import quiet_mlflow_downloads

    quiet_mlflow_downloads()  # the champion's input example is downloaded for the query: no progress bars

    started = time.monotonic()
    home = Settings().resolved_home()
    log = log_path(home, "demo")
    name = default_model_name(task)
    print(f"[1/3] training pipeline on {task!r} (kfp.local; full log: {log})", flush=True)
    uri = run_reported(training_pipeline(), {"task": task, "task_args": task_args, "epochs": epochs}, log,
                       out=sys.stdout)
    print(f"      done in {time.monotonic() - started:.0f}s; MLflow store: {uri}")
    print("[2/3] registry:")
    for row in registry.list_versions(name)[:3]:
        aliases = f" [{', '.join(row.aliases)}]" if row.aliases else ""
        metrics = "  ".join(f"{k}={v:.3f}" for k, v in row.metrics.items())
        print(f"      {name} v{row.version}{aliases}  {metrics}")
    if registry.alias_version(name, registry.CHAMPION) is None:
        print("      no champion yet (the gate rejected this run)")
        return 0
    if not serve:
        return 0
    print(f"[3/3] serving models:/{name}@champion (KServe model server, HTTP + gRPC) ...", flush=True)
    http_answer, grpc_answer = serve_and_query(name, uri, home)
    print(f"      HTTP  V2 infer -> {json.dumps(http_answer)}")
    print(f"      gRPC  ModelInfer -> {json.dumps(grpc_answer)}")
    print(f"demo finished in {time.monotonic() - started:.0f}s. Browse the registry: "
          f"mlflow ui --backend-store-uri {uri}   or   pillars models show {name}")
    return 0


def serve_and_query(name: str, tracking_uri: str, home: Path) -> tuple[dict, dict]:
    """Start the model server for ``models:/name@champion``, send one V2 HTTP and one gRPC request (the
    registered version's input example: one row of its test split), stop it."""
    from pillars.serving.demo import query_once

    from pillars.pipelines.local.stack import free_port, stop_group, wait_ready

    http_port, grpc_port = free_port(), free_port()
    log_path = home / "logs" / "demo-server.log"
    log = open(log_path, "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "pillars.serving", "--model_uri", f"models:/{name}@champion", "--model_name", name,
         "--http_port", str(http_port), "--grpc_port", str(grpc_port)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri})
    log.close()
    try:
        wait_ready("model server", server, f"http://127.0.0.1:{http_port}/v2/health/ready", log_path, timeout=60)
        return query_once(f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", name, example_inputs(name))
    finally:
        stop_group(server.pid)


def example_inputs(name: str) -> dict[str, np.ndarray]:
    """One row of the champion's inputs, from the input example logged with it (its test split's rows)."""
    from mlflow.models import Model

    from pillars.components.model.frames import frame_to_inputs
    from pillars.components.model.predictor import check_inputs, load_predictor
    from pillars.components.registry.register import downloaded_version

    version = registry.alias_version(name, registry.CHAMPION)
    with downloaded_version(name, str(version)) as folder:
        signature = load_predictor(folder).signature
        example = Model.load(folder).load_input_example(str(folder))
    inputs = check_inputs(signature, frame_to_inputs(signature, example))
    return {k: v[:1] for k, v in inputs.items()}
