"""Shared fixtures: a real MLflow tracking server, a real S3 API (moto's standalone server), and a per-test
embedded store."""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import mlflow
import pytest

from tests.processes import ServerProcess, free_port

ROOT = Path(__file__).resolve().parents[1]

# One torch/OpenMP thread in the tests and in every process they start (pipeline steps, servers), set
# before any test module imports torch: the test models are tiny and the machine has 2 cores with servers
# running beside the training, so torch's intra-op threads only spin against each other. Measured on this
# machine under load: 5 epochs of the breast_cancer MLP 0.9 s with one thread against 23-31 s with two;
# of the digits CNN 13 s against 188-230 s.
os.environ.setdefault("OMP_NUM_THREADS", "1")

KUBERNETES_VERSION = "1.33.0"
"""Schemas of the Kubernetes version the bundled kubectl (v1.33) speaks; kubernetes-validate ships them."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Modules with the most ``slow`` tests run first, the rest after them, each module's tests in file order.

    ``make test`` hands whole modules to two xdist workers (``--dist loadfile --no-loadscope-reorder``), in
    this order. The end-to-end modules take minutes each; started last (xdist's default order, by test count,
    puts a one-test module such as the closed loop at the end) one of them runs alone while the other worker
    idles. Started first, the many short modules fill in behind them and both workers finish together
    (longest-processing-time-first scheduling; the count of slow tests stands in for the unknown time).
    """
    slow_by_module: dict[str, int] = {}
    for item in items:
        slow_by_module.setdefault(item.nodeid.split("::")[0], 0)
        if item.get_closest_marker("slow") is not None:
            slow_by_module[item.nodeid.split("::")[0]] += 1
    position = {module: index for index, module in enumerate(slow_by_module)}
    items.sort(key=lambda item: (-slow_by_module[item.nodeid.split("::")[0]],
                                 position[item.nodeid.split("::")[0]]))


def require_tool(name: str) -> str:
    """Path of an executable the test needs (the venv's own first, as `make` installs helm and kubectl
    there): skipped locally when absent, failed when ``CI`` is set."""
    venv_bin = Path(sys.executable).parent / name
    path = str(venv_bin) if venv_bin.exists() else shutil.which(name)
    if path is None:
        message = f"{name} is not installed (make test installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def schemas_dir() -> Path:
    """``PILLARS_K8S_SCHEMAS``, default ``../shared/k8s-schemas`` next to the repository."""
    return Path(os.environ.get("PILLARS_K8S_SCHEMAS", ROOT.parent / "shared" / "k8s-schemas")).resolve()


@pytest.fixture(scope="session")
def crd_schemas() -> Path:
    path = schemas_dir()
    if not (path / "serving.kserve.io").is_dir():
        message = f"CRD schemas not found at {path} (set PILLARS_K8S_SCHEMAS)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@functools.cache
def _crd_validator(path: Path) -> jsonschema.Draft7Validator:
    schema = json.loads(path.read_text())
    return jsonschema.Draft7Validator(schema)


def validate(doc: dict[str, Any], crd_schemas: Path) -> None:
    """Raise when ``doc`` is not a valid object: custom resources (a group with a folder of schemas)
    through their CRD schema, every other kind through kubernetes-validate (strict); unknown fields
    are rejected either way."""
    group, _, version = doc["apiVersion"].rpartition("/")
    if group and (crd_schemas / group).is_dir():
        path = crd_schemas / group / f"{doc['kind'].lower()}_{version}.json"
        assert path.exists(), f"no schema for {doc['apiVersion']} {doc['kind']} at {path}"
        errors = sorted(_crd_validator(path).iter_errors(doc), key=lambda e: list(e.path))
        assert not errors, f"{doc['kind']} {doc['metadata']['name']}: " + "; ".join(
            f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors[:5])
    else:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.fixture(autouse=True)
def no_mlflow_state_between_tests() -> Iterator[None]:
    """Every test starts with no active MLflow run or experiment. MLflow keeps both in module globals of
    the test process, so a test that sets an experiment would otherwise decide where a later test's runs
    go, and which test comes later depends on how pytest-xdist deals out the modules. (``set_experiment``
    also exports ``MLFLOW_EXPERIMENT_ID``, which the processes a later test starts would inherit.)"""
    before = os.environ.get("MLFLOW_EXPERIMENT_ID")
    yield
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.tracking.fluent._active_experiment_id = None
    if before is None:
        os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    else:
        os.environ["MLFLOW_EXPERIMENT_ID"] = before


MLFLOW_SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
"""Environment of the ``mlflow server`` processes the tests start. MLflow 3 otherwise starts a job runner
and seven huey consumers with every server (its GenAI job queue, which Pillars never uses): eight more
Python processes that import MLflow, about 40 s of CPU per server on a 2-core machine."""


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``mlflow server`` on a free loopback port (SQLite backend, proxied artifacts); yields its URL."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = ServerProcess(
        [require_tool("mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--workers", "1"],
        log_path=root / "server.log", env=MLFLOW_SERVER_ENV,
    )
    try:
        server.wait_http(f"{url}/health", timeout=300)  # minutes on a loaded 2-core machine
        yield url
    finally:
        server.stop()


@pytest.fixture
def tracking_uri(mlflow_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Points MLflow (in this process and in subprocesses) at the real server for one test."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    yield mlflow_server
    mlflow.set_tracking_uri(None)


@pytest.fixture
def local_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The embedded default in a temporary ``PILLARS_HOME`` (SQLite store, local artifacts)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("PILLARS_HOME", str(tmp_path / ".pillars"))
    from pillars.components.registry.tracking import configure_tracking

    uri = configure_tracking()
    yield uri
    mlflow.set_tracking_uri(None)


S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "pillars-test", "AWS_SECRET_ACCESS_KEY": "pillars-test-secret",
                  "AWS_DEFAULT_REGION": "us-east-1"}
"""Fake credentials the S3 fixture sets (moto accepts any)."""


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3 API on loopback: ``moto_server`` as a process (stopped with its group); yields its URL.

    The fixture only starts the server. Clients reach it with ``endpoint_url=`` or the environment
    (``AWS_ENDPOINT_URL``, ``MLFLOW_S3_ENDPOINT_URL``) and :data:`S3_CREDENTIALS`; see :func:`s3_env`.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = ServerProcess([require_tool("moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                           log_path=tmp_path_factory.mktemp("moto") / "server.log", env=S3_CREDENTIALS)
    try:
        server.wait_http(f"{url}/moto-api/", timeout=60)
        yield url
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Points boto3 and MLflow (this process and subprocesses given the returned env) at ``s3_server``."""
    env = {**S3_CREDENTIALS, "AWS_ENDPOINT_URL": s3_server, "MLFLOW_S3_ENDPOINT_URL": s3_server}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env
