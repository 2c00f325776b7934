"""The S3 paths against a real S3 API (moto's server on loopback): data sources, and the MLflow
artifact store on S3 the chart runs (``--serve-artifacts --artifacts-destination s3://...``)."""

from __future__ import annotations

import filecmp
import time
import uuid

import mlflow
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer

from pillars.components import registry
from pillars.components.errors import DataError
from pillars.components.model.predictor import save_model
from pillars.components.data.prepare import PrepareParams, prepare, run_prepare
from pillars.components.data.splits import load_metadata
from pillars.components.records import GateDecision
from pillars.components.registry.register import downloaded_version, run_register
from pillars.components.task import load_task
from pillars.components.registry.tracking import ensure_experiment
from tests.conftest import MLFLOW_SERVER_ENV, require_tool
from tests.processes import ServerProcess, free_port


def _table(rows: int = 120) -> pd.DataFrame:
    data = load_breast_cancer(as_frame=True)
    frame = data.frame.iloc[:rows, :5].copy()
    frame["label"] = data.target.iloc[:rows].map({0: "malignant", 1: "benign"}).to_numpy()
    return frame


@pytest.fixture
def bucket(moto_s3):
    name = f"pillars-{uuid.uuid4().hex[:8]}"
    moto_s3.client().create_bucket(Bucket=name)
    return name


def test_an_s3_csv_is_a_data_source(moto_s3, bucket):
    moto_s3.client().put_object(Bucket=bucket, Key="data.csv", Body=_table().to_csv(index=False).encode())
    data = prepare(PrepareParams(task="tabular_classification", source=f"s3://{bucket}/data.csv",
                                 label_column="label"))
    assert sum(len(split["label"]) for split in data.splits.values()) == 120
    assert data.metadata["info"]["feature_names"] == list(_table().columns[:5])
    assert data.metadata["source"] == f"s3://{bucket}/data.csv"


def test_an_s3_prefix_reads_its_newest_table_and_only_under_that_folder(moto_s3, bucket):
    s3 = moto_s3.client()
    s3.put_object(Bucket=bucket, Key="incoming/old.csv", Body=_table(60).to_csv(index=False).encode())
    time.sleep(1.1)  # S3 times have one-second resolution
    s3.put_object(Bucket=bucket, Key="incoming/new.csv", Body=_table(100).to_csv(index=False).encode())
    time.sleep(1.1)
    s3.put_object(Bucket=bucket, Key="incoming-other/newest.csv", Body=_table(80).to_csv(index=False).encode())
    for source in (f"s3://{bucket}/incoming/", f"s3://{bucket}/incoming"):
        data = prepare(PrepareParams(task="tabular_classification", source=source, label_column="label"))
        assert sum(len(split["label"]) for split in data.splits.values()) == 100, source


def test_a_missing_s3_object_or_bucket_is_one_clear_error(moto_s3, bucket):
    with pytest.raises(DataError, match=f"cannot read s3://{bucket}/nope.csv"):
        prepare(PrepareParams(task="tabular_classification", source=f"s3://{bucket}/nope.csv", label_column="label"))
    with pytest.raises(DataError, match="no CSV or Parquet object under"):
        prepare(PrepareParams(task="tabular_classification", source=f"s3://{bucket}/empty/", label_column="label"))
    with pytest.raises(DataError, match="unsupported file type '.json'"):
        prepare(PrepareParams(task="tabular_classification", source=f"s3://{bucket}/data.json", label_column="label"))


@pytest.fixture
def mlflow_on_s3(moto_s3, bucket, tmp_path, monkeypatch):
    """``mlflow server`` as the chart runs it: artifacts proxied to ``s3://BUCKET/mlflow``."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = ServerProcess(
        [require_tool("mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--serve-artifacts",
         "--artifacts-destination", f"s3://{bucket}/mlflow", "--workers", "1"],
        log_path=tmp_path / "mlflow.log", env={**moto_s3.env, **MLFLOW_SERVER_ENV})
    try:
        server.wait_http(f"{url}/health", timeout=180)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        mlflow.set_tracking_uri(url)
        yield url
    finally:
        mlflow.set_tracking_uri(None)
        server.stop()


def test_a_model_registered_by_the_register_step_goes_to_s3_and_comes_back(moto_s3, bucket, mlflow_on_s3, tmp_path,
                                                                          monkeypatch):
    moto_s3.client().put_object(Bucket=bucket, Key="data/table.csv", Body=_table().to_csv(index=False).encode())
    paths = {n: str(tmp_path / f"{n}.npz") for n in ("train", "val", "test")}
    metadata_path = str(tmp_path / "metadata.json")
    run_prepare(PrepareParams(task="tabular_classification", source=f"s3://{bucket}/data/table.csv",
                              label_column="label"), paths["train"], paths["val"], paths["test"], metadata_path)
    metadata = load_metadata(metadata_path)
    task = load_task(metadata["task"], {"hidden_sizes": [4]})
    model_dir = save_model(task, metadata["task"], metadata["prep"], task.build_model(metadata["prep"]),
                           tmp_path / "model")
    # the client holds no S3 credentials: artifacts go through the MLflow server, as on the cluster
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(key)
    name = f"s3-{uuid.uuid4().hex[:6]}"
    with mlflow.start_run(experiment_id=ensure_experiment(name)) as run:
        pass
    version = run_register(str(model_dir), metadata_path, paths["test"], name, run.info.run_id, "kfp-1",
                           GateDecision(True, ["thresholds passed"]), mlflow_on_s3)
    assert registry.alias_version(name, registry.CHALLENGER) == version == "1"

    keys = [o["Key"] for o in moto_s3.client().list_objects_v2(Bucket=bucket, Prefix="mlflow/")["Contents"]]
    assert any(k.endswith("model.safetensors") for k in keys), keys
    with downloaded_version(name, version) as local:
        stored = next(local.rglob("model.safetensors"))
        assert filecmp.cmp(stored, model_dir / "model.safetensors", shallow=False)
        assert (next(local.rglob("data_profile.json"))).stat().st_size > 0
