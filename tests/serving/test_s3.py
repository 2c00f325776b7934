"""Serving from ``s3://`` against a real S3 API (moto's standalone server on loopback)."""

from __future__ import annotations

from pathlib import Path

import boto3
import httpx
import pytest

from pillars.components.errors import ConfigError
from pillars.components.model.predictor import load_predictor
from pillars.serving.demo import v2_request
from pillars.serving.storage import discard, resolve_model, s3_folder
from tests.serving.conftest import start_server
from tests.serving.toy import make_classifier, toy_rows

BUCKET = "pillars-models"


@pytest.fixture
def bucket(s3_env: dict[str, str], tmp_path: Path) -> Path:
    """The toy classifier under ``s3://BUCKET/models/digits/artifacts/`` (MLflow's layout), and a decoy
    folder ``models/digitsartifacts/`` whose key, read as a plain prefix, lands on the real config."""
    model_dir = make_classifier(tmp_path / "model")
    s3 = boto3.client("s3")
    if BUCKET not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket=BUCKET)
    for path in model_dir.iterdir():
        s3.upload_file(str(path), BUCKET, f"models/digits/artifacts/{path.name}")
    s3.put_object(Bucket=BUCKET, Key="models/digitsartifacts/config.json", Body=b'{"not": "this model"}')
    s3.put_object(Bucket=BUCKET, Key="models/digits-old/model.safetensors", Body=b"stale")
    return model_dir


def test_the_s3_prefix_is_a_folder(bucket):
    source = resolve_model(f"s3://{BUCKET}/models/digits")
    try:
        files = sorted(p.relative_to(source.download).as_posix() for p in source.download.rglob("*") if p.is_file())
        assert files == sorted(f"artifacts/{p.name}" for p in bucket.iterdir())
        assert load_predictor(source.directory).predict({"input-0": toy_rows(2)})["label"].shape == (2,)
    finally:
        discard(source)
    assert not source.download.exists()
    assert s3_folder("/models/digits/") == s3_folder("models/digits") == "models/digits/" and s3_folder("/") == ""


def test_a_missing_s3_folder_is_one_error_and_leaves_nothing_behind(bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    for uri, message in ((f"s3://{BUCKET}/models/dig", "no objects"),
                         (f"s3://{BUCKET}/models/digits-old", "no Pillars model"),
                         ("s3://no-such-bucket/m", "cannot download")):
        with pytest.raises(ConfigError, match=message):
            resolve_model(uri)
    assert list((tmp_path / "tmp").iterdir()) == []


def test_the_server_serves_a_model_from_s3_end_to_end(bucket, s3_env, tmp_path):
    server = start_server(["--model_uri", f"s3://{BUCKET}/models/digits", "--model_name", "digits", "--no_drift"],
                          tmp_path / "server.log", env=s3_env, model="digits")
    try:
        expected = load_predictor(bucket).predict({"input-0": toy_rows(3, seed=4)})["label"].tolist()
        answer = httpx.post(f"{server.http}/v2/models/digits/infer", json=v2_request(toy_rows(3, seed=4)))
        assert answer.status_code == 200, answer.text
        assert next(o for o in answer.json()["outputs"] if o["name"] == "label")["data"] == expected
    finally:
        server.process.stop()
