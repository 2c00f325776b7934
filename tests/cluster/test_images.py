"""The images, without a Docker engine: the Dockerfiles stay honest, and the commands the chart
runs in them work from the venv (the MLflow server exactly as the chart starts it)."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from pillars.components.deploy.inference_service import IMAGE_UID
from tests.cluster.conftest import ROOT
from tests.conftest import MLFLOW_SERVER_ENV
from tests.processes import ServerProcess, free_port

DOCKERFILES = [ROOT / "components" / "Dockerfile", ROOT / "components" / "Dockerfile.cuda"]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_components_dockerfiles_are_pinned_non_root_multi_stage_and_entrypoint_less(path: Path) -> None:
    text = path.read_text()
    bases = re.findall(r"^ARG \w+_IMAGE=(\S+)$", text, re.M)
    assert bases and all(re.search(r":\d[\w.-]*$", b) for b in bases), bases  # a version tag, not latest
    assert len(re.findall(r"^FROM ", text, re.M)) == 2  # build stage + small final stage
    assert re.findall(r"^USER (\d+)$", text, re.M) == [str(IMAGE_UID)]
    assert not re.search(r"^(ENTRYPOINT|CMD)\b", text, re.M)  # KFP sets the command
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for item in source.split():
            assert (ROOT / item).exists(), f"{path.name} copies {item}, which does not exist"
    ignore = (path.parent / f"{path.name}.dockerignore").read_text()
    assert ignore.splitlines()[1] == "*"  # the context sends only what the image installs


def test_the_image_import_check_passes_in_the_venv() -> None:
    text = DOCKERFILES[0].read_text()
    modules = re.search(r'python -c "import ([^"]+)"', text).group(1).split(", ")
    local = [m for m in modules if m != "psycopg2"]  # the PostgreSQL driver exists only in the image
    assert os.system(f'{sys.executable} -c "import {", ".join(local)}"') == 0


def test_mlflow_starts_with_the_charts_command_and_rejects_unknown_hosts(render, tmp_path: Path) -> None:
    deployment = next(d for d in render("auth.yaml", set=["mlflow.auth.enabled=false"])
                      if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["/bin/sh", "-ec"]
    port = free_port()
    script = container["args"][0].replace("--host 0.0.0.0 --port 5000", f"--host 127.0.0.1 --port {port}")
    script = script.replace("--workers 2", "--workers 1").replace("s3://mlflow/artifacts", str(tmp_path / "artifacts"))
    script = script.replace("/tmp/metrics", str(tmp_path / "metrics"))
    assert "exec mlflow server" in script
    (tmp_path / "metrics").mkdir()
    bin_dir = str(Path(sys.executable).parent)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp_path),
           "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"), **MLFLOW_SERVER_ENV}
    server = ServerProcess([shutil.which("sh") or "/bin/sh", "-ec", script], log_path=tmp_path / "mlflow.log", env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        server.wait_http(f"{url}/health", timeout=120)
        # The Service name and the Ingress host are allowed Host headers; anything else is refused
        # (/health answers any host, for the kubelet's probes).
        api = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
        for host in ("pillars-mlflow.pillars.svc.cluster.local:5000", "mlflow.pillars.example.org"):
            assert httpx.get(api, headers={"Host": host}, timeout=30).status_code == 200, host
        assert httpx.get(api, headers={"Host": "evil.example.com"}, timeout=30).status_code in (400, 403)
        assert httpx.get(f"{url}/metrics", timeout=30).status_code == 200
    finally:
        server.stop()


def _from_secrets(env_spec: dict, secrets: dict[str, dict]) -> dict[str, str]:
    """The values a kubelet would put in the container's environment from the rendered Secrets."""
    env = {}
    for name, spec in env_spec.items():
        ref = spec.get("valueFrom", {}).get("secretKeyRef")
        if ref and ref["name"] in secrets:
            env[name] = base64.b64decode(secrets[ref["name"]]["data"][ref["key"]]).decode()
        elif "value" in spec and "$(" not in spec["value"]:
            env[name] = spec["value"]
    return env


def test_default_mlflow_needs_the_generated_credentials_and_clients_get_them(render, tmp_path: Path) -> None:
    docs = render(set=["trigger.enabled=true", "trigger.token.existingSecret=t"])
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    deployment = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "pillars-mlflow")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    server_env = _from_secrets({e["name"]: e for e in container["env"]}, secrets)
    port = free_port()
    script = (container["args"][0].replace("--host 0.0.0.0 --port 5000", f"--host 127.0.0.1 --port {port}")
              .replace("--workers 2", "--workers 1").replace("s3://mlflow/artifacts", str(tmp_path / "artifacts"))
              .replace("/tmp/", f"{tmp_path}/"))
    (tmp_path / "metrics").mkdir()
    env = {**server_env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "HOME": str(tmp_path),
           "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
           "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "basic_auth.ini"), **MLFLOW_SERVER_ENV}
    server = ServerProcess(["/bin/sh", "-ec", script], log_path=tmp_path / "mlflow.log", env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        server.wait_http(f"{url}/health", timeout=240)  # the slowest start here: auth database first
        api = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
        # Generous timeouts: the first requests initialise the auth database, slow on a busy machine.
        assert httpx.get(api, timeout=30).status_code == 401
        # /metrics is behind the same auth: the ServiceMonitor scrapes with the Secret's credentials.
        assert httpx.get(f"{url}/metrics", timeout=30).status_code == 401
        monitor = next(d for d in docs if d["kind"] == "ServiceMonitor" and d["metadata"]["name"] == "pillars-mlflow")
        basic = monitor["spec"]["endpoints"][0]["basicAuth"]
        scrape = tuple(base64.b64decode(secrets[basic[k]["name"]]["data"][basic[k]["key"]]).decode()
                       for k in ("username", "password"))
        assert httpx.get(f"{url}/metrics", auth=scrape, timeout=30).status_code == 200
        assert "MLFLOW_AUTH_ADMIN_PASSWORD" in server_env and server_env["MLFLOW_AUTH_ADMIN_PASSWORD"] not in (
            tmp_path / "basic_auth.ini").read_text()
        # The trigger and the model servers: MLflow's own client, credentials from their environment.
        trigger = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "pillars-trigger")
        runtime = next(d for d in docs if d["kind"] == "ServingRuntime" and d["metadata"]["name"] == "pillars-registry")
        for spec in (trigger["spec"]["template"]["spec"]["containers"][0], runtime["spec"]["containers"][0]):
            client_env = _from_secrets({e["name"]: e for e in spec["env"]}, secrets)
            credentials = {k: client_env[k] for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
            code = ("import mlflow; mlflow.MlflowClient().search_experiments(max_results=1); print('ok')")
            result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                                    env={**os.environ, "MLFLOW_TRACKING_URI": url, **credentials})
            assert result.stdout.strip() == "ok", result.stderr[-2000:]
        refused = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                                 env={**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
                                      "MLFLOW_TRACKING_URI": url})
        assert refused.returncode != 0 and "401" in refused.stderr
    finally:
        server.stop()


def test_one_image_value_sets_every_image_the_chart_and_its_pipelines_run(render) -> None:
    from tests.cluster.test_policy import pods

    repository, tag = "registry.example.com/ml/pillars", "1.2.3"
    docs = render("gpu.yaml", set=[f"image.repository={repository}", f"image.tag={tag}", "trigger.enabled=true",
                                   "trigger.token.existingSecret=t", "kserve.servingRuntime.create=true"])
    images = {c["image"] for _, _, containers in pods(docs) for c in containers if "image" in c}
    ours = {i for i in images if not i.startswith("docker.io/library/postgres:")}
    assert ours == {f"{repository}:{tag}", f"{repository}-serving:{tag}", f"{repository}-serving:{tag}-cuda"}
    runtime = next(d for d in docs if d["kind"] == "ServingRuntime")
    assert runtime["spec"]["containers"][0]["image"] == f"{repository}-serving:{tag}"
    trigger = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "pillars-trigger")
    env = {e["name"]: e.get("value") for e in trigger["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["PILLARS_IMAGE"] == f"{repository}:{tag}"  # the image of the pipelines the trigger compiles


def test_pipelines_compiled_with_the_charts_image_run_it_in_every_step(tmp_path: Path, monkeypatch) -> None:
    import subprocess as sp

    import yaml

    image = "registry.example.com/ml/pillars:1.2.3"
    out = tmp_path / "retraining.yaml"
    # The trigger pod's environment (PILLARS_IMAGE from the chart), in a fresh process as the trigger is.
    result = sp.run([sys.executable, "-m", "pillars.pipelines.cli", "compile", "retraining", "-o", str(out),
                     "--deploy-namespace", "pillars"], capture_output=True, text=True, timeout=300,
                    env={**os.environ, "PILLARS_IMAGE": image})
    assert result.returncode == 0, result.stderr[-2000:]
    pipeline = next(yaml.safe_load_all(out.read_text()))
    images = {e["container"]["image"] for e in pipeline["deploymentSpec"]["executors"].values()}
    assert images == {image}
    deploy = pipeline["deploymentSpec"]["executors"]["exec-deploy-op"]["container"]
    assert {"name": "PILLARS_IMAGE", "value": image} in deploy["env"]  # its GPU models: <repo>-serving:<tag>-cuda
