"""Fixtures of the component tests: a real S3 API (moto's standalone server) on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.conftest import require_tool
from tests.processes import ServerProcess, free_port

FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "pillars-test", "AWS_SECRET_ACCESS_KEY": "pillars-test-secret",
                    "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass(frozen=True)
class S3Server:
    """A running S3 API: its endpoint and the environment that points boto3 and MLflow at it."""

    endpoint: str
    env: dict[str, str]

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])


@pytest.fixture(scope="session")
def _moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    server = ServerProcess([require_tool("moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                           log_path=tmp_path_factory.mktemp("moto") / "moto.log")
    url = f"http://127.0.0.1:{port}"
    try:
        server.wait_http(f"{url}/moto-api/", timeout=60)
        yield url
    finally:
        server.stop()


@pytest.fixture
def moto_s3(_moto_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """moto's S3 server (one per session, process group stopped at the end), with ``AWS_ENDPOINT_URL``,
    ``MLFLOW_S3_ENDPOINT_URL`` and fake credentials set for this test (and the servers it starts)."""
    env = {"AWS_ENDPOINT_URL": _moto_server, "MLFLOW_S3_ENDPOINT_URL": _moto_server, **FAKE_CREDENTIALS}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    yield S3Server(_moto_server, env)
