"""Fixtures of the component tests: the shared S3 API (moto's standalone server, tests/conftest.py) as a
small object with a client."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.conftest import S3_CREDENTIALS


@dataclass(frozen=True)
class S3Server:
    """A running S3 API: its endpoint and the environment that points boto3 and MLflow at it."""

    endpoint: str
    env: dict[str, str]

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])


@pytest.fixture
def moto_s3(s3_server: str, s3_env: dict[str, str]) -> S3Server:
    """moto's S3 server (one per session), with ``AWS_ENDPOINT_URL``, ``MLFLOW_S3_ENDPOINT_URL`` and fake
    credentials set for this test (and the servers it starts with that environment)."""
    return S3Server(s3_server, s3_env)
