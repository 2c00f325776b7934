"""The data step's cluster path (``spark_launcher=operator``): the run parameters are checked by name before
anything runs, the SparkApplication the step builds from the chart's settings and the run's sizes is valid
against the operator's CRD schema made strict, the driver program runs for real (Spark ``local[1]``) on the
arguments the step gave it, and the step copies its splits back (from a folder, and from S3), records the
application id and fails with the driver's own error. No cluster: the Kubernetes API is a fake object that
answers as the operator does, as in tests/cluster/test_spark_application.py."""

from __future__ import annotations

import json
import traceback
import uuid
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import pytest

from pillars.components.data.prepare import PrepareParams
from pillars.components.data.prepare_table import prepare_table
from pillars.components.data.shards import shard_files
from pillars.components.data.spark_application import (
    CRD_HINT,
    GROUP,
    PLURAL,
    VERSION,
    SparkApplicationError,
    build_spark_application,
    run_on_operator,
    step_spec,
)
from pillars.components.data.spark_driver import (
    RESULT_FILE,
    fetch_result,
    parse_arguments,
    remove_location,
    run_driver,
)
from pillars.components.errors import ConfigError, DataError
from pillars.components.settings import Settings

SCHEMA = (Path(__file__).parents[1] / "cluster" / "schemas" / "sparkoperator.k8s.io"
          / "sparkapplication_v1beta2.json")


def _errors(app: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    return [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(app)]


def _params(source: str = "data.csv", **overrides) -> PrepareParams:
    base = dict(task="tabular_classification", source=source, label_column="target", engine="spark",
                spark_launcher="operator", spark_executors=3, spark_executor_memory="4g", spark_driver_memory="1g")
    return PrepareParams(**{**base, **overrides})


def _settings(work: str, **overrides) -> Settings:
    base = dict(image="registry.example/pillars:1.2.3", spark_service_account="pillars-spark", spark_work_uri=work,
                spark_s3_secret="pillars-s3", spark_s3_endpoint="http://minio.minio.svc:9000")
    return Settings(**{**base, **overrides})


@pytest.mark.parametrize("overrides, message", [
    ({"spark_executor_memory": "4 GB"}, "spark_executor_memory must be a size like 2g or 512m, got '4 GB'"),
    ({"spark_driver_memory": ""}, "spark_driver_memory must be a size like 2g or 512m, got ''"),
    ({"spark_executors": 0}, "spark_executors must be a whole number >= 1, got 0"),
    ({"spark_driver_cores": -1}, "spark_driver_cores must be a whole number >= 1, got -1"),
    ({"spark_launcher": "yarn"}, "spark_launcher must be 'local' or 'operator', got 'yarn'"),
    ({"engine": "pandas"}, "spark_launcher=operator needs engine=spark, got engine='pandas'"),
])
def test_bad_spark_parameters_are_refused_naming_them_in_the_step_and_before_the_run(overrides, message):
    from pillars.pipelines.compile import pipeline_factory
    from pillars.pipelines.training import check_arguments

    with pytest.raises(ConfigError, match=f"^{message}"):
        _params(**overrides)
    pipeline = pipeline_factory("retraining")(image="example.com/pillars:test")
    arguments = {"model_name": "churn", "engine": "spark", "spark_launcher": "operator", **overrides}
    with pytest.raises(ConfigError, match=f"^{message}"):
        check_arguments(pipeline, arguments, load=False)  # the task is resolved at run time: still checked


def test_the_step_builds_its_application_from_the_chart_settings_and_the_run_sizes():
    params = _params(source="s3://data/churn/")
    spec = step_spec(params, _settings("s3://pillars/spark-work"), "pillars-data-abc", "ml")
    app = build_spark_application(spec)
    assert not _errors(app)
    body = app["spec"]
    assert body["image"] == "registry.example/pillars:1.2.3" and app["metadata"]["namespace"] == "ml"
    assert body["driver"]["serviceAccount"] == "pillars-spark"
    assert (body["driver"]["memory"], body["executor"]["instances"], body["executor"]["memory"]) == ("1g", 3, "4g")
    assert body["driver"]["envFrom"] == body["executor"]["envFrom"] == [{"secretRef": {"name": "pillars-s3"}}]
    assert body["hadoopConf"]["fs.s3a.endpoint"] == "http://minio.minio.svc:9000"
    # the program is this image's own driver module, and its arguments give back the run's parameters
    main = Path(body["mainApplicationFile"].removeprefix("local://"))
    assert main.is_file() and main.name == "spark_driver.py"
    given, work = parse_arguments(body["arguments"])
    assert given == params and work == "s3://pillars/spark-work/pillars-data-abc"
    assert not _errors(build_spark_application(step_spec(params, _settings("s3://w", spark_s3_secret="",
                                                                            spark_s3_endpoint=""), "x", "ml")))
    with pytest.raises(ConfigError, match="needs a work location .*PILLARS_SPARK_WORK_URI"):
        step_spec(params, _settings(""), "pillars-data-abc", "ml")


def test_the_driver_refuses_a_command_line_that_is_not_the_steps():
    with pytest.raises(ConfigError, match="--params must be a JSON object"):
        parse_arguments(["--params", "[1]", "--work", "/w"])
    with pytest.raises(ConfigError, match="unknown data parameter.*epochs"):
        parse_arguments(["--params", json.dumps({"epochs": 3}), "--work", "/w"])
    with pytest.raises(ConfigError, match="spark_driver needs --params"):
        parse_arguments(["--work", "/w"])


class _Operator:
    """``CustomObjectsApi`` as the operator makes it look: create checks the object against the strict CRD
    schema and runs its driver (the program's own functions on its own arguments, Spark ``local[1]``);
    get answers COMPLETED with the application id, or FAILED with the driver's traceback."""

    def __init__(self) -> None:
        self.created: list[dict] = []
        self.deleted: list[str] = []
        self.status: dict = {}

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        assert (group, version, plural) == (GROUP, VERSION, PLURAL) and not _errors(body)
        self.created.append(body)
        params, work = parse_arguments(body["spec"]["arguments"])
        try:
            run_driver(params, work, master="local[1]")
            self.status = {"applicationState": {"state": "COMPLETED"}, "sparkApplicationId": "spark-0f3a9c"}
        except Exception:
            self.status = {"applicationState": {"state": "FAILED", "errorMessage": traceback.format_exc()}}

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        return {"metadata": {"name": name}, "status": self.status}

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.deleted.append(name)


def _table(path: Path, rows: int = 240) -> Path:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({f"x{i}": rng.normal(i, 1, size=rows) for i in range(3)})
    frame["target"] = np.where(frame["x0"] > 0, "churned", "stayed")
    frame.to_csv(path, index=False)
    return path


@pytest.mark.slow
def test_the_operator_path_runs_the_driver_and_records_the_application_id(tmp_path, monkeypatch):
    source = _table(tmp_path / "churn.csv")
    work_root = tmp_path / "spark-work"
    monkeypatch.setenv("PILLARS_SPARK_WORK_URI", str(work_root))
    splits = {name: tmp_path / "step" / f"{name}_data" for name in ("train", "val", "test")}
    operator = _Operator()
    metadata = prepare_table(_params(str(source)), "spark", splits, api=operator)
    assert metadata["spark_app_id"] == "spark-0f3a9c" and metadata["engine"] == "spark"
    assert [b["spec"]["executor"]["instances"] for b in operator.created] == [3] and not operator.deleted
    assert not any(work_root.iterdir())  # the step removed the application's work location
    rows = {name: sum(pd.read_parquet(f).shape[0] for f in shard_files(folder)) for name, folder in splits.items()}
    assert rows == metadata["split_rows"] and sum(rows.values()) == 240
    # the same data hash and split as the pandas engine on the same table
    by_pandas = prepare_table(_params(str(source), engine="pandas", spark_launcher="local"), "pandas",
                              {n: tmp_path / "pandas" / n for n in ("train", "val", "test")})
    assert (by_pandas["data_hash"], by_pandas["split_rows"]) == (metadata["data_hash"], metadata["split_rows"])

    failing = _Operator()
    with pytest.raises(SparkApplicationError, match=r"failed: pillars.components.errors.DataError: label column "
                                                    r"'churned' not in .*churn.csv; columns are: x0, x1, x2, target$"):
        prepare_table(_params(str(source), label_column="churned"), "spark",
                      {n: tmp_path / "bad" / n for n in ("train", "val", "test")}, api=failing)
    assert failing.deleted == [failing.created[0]["metadata"]["name"]]


def test_the_step_copies_the_splits_back_from_s3_and_removes_them(moto_s3, tmp_path):
    bucket = f"pillars-{uuid.uuid4().hex[:8]}"
    client = moto_s3.client()
    client.create_bucket(Bucket=bucket)
    work = f"s3://{bucket}/spark-work/pillars-data-1"
    with pytest.raises(DataError, match=f"left no {RESULT_FILE} under {work}"):
        fetch_result(work, tmp_path / "none", moto_s3.endpoint)
    result = {"statistics": {"feature_names": ["a"], "input_shape": [1], "mean": [0.5], "std": [1.0],
                             "classes": ["no", "yes"], "target_mean": None, "target_std": None, "rows": 2},
              "info": {"data_hash": "abc", "spark_app_id": "spark-1"}, "profile": {}, "table": {"format": "parquet"},
              "split_rows": {"train": 2, "val": 1, "test": 1}, "membership_hashes": {"train": 7, "val": 1, "test": 2}}
    for split in ("train", "val", "test"):
        client.put_object(Bucket=bucket, Key=f"spark-work/pillars-data-1/{split}/part-0.parquet", Body=split.encode())
        client.put_object(Bucket=bucket, Key=f"spark-work/pillars-data-1/{split}/_SUCCESS", Body=b"")
    client.put_object(Bucket=bucket, Key=f"spark-work/pillars-data-1/{RESULT_FILE}", Body=json.dumps(result).encode())
    fetched = fetch_result(work, tmp_path / "out", moto_s3.endpoint)
    assert fetched.statistics.classes == ["no", "yes"] and fetched.split_rows == result["split_rows"]
    for split in ("train", "val", "test"):  # the shards only, byte for byte
        assert [p.name for p in (tmp_path / "out" / split).iterdir()] == ["part-0.parquet"]
        assert (tmp_path / "out" / split / "part-0.parquet").read_bytes() == split.encode()
    remove_location(work, moto_s3.endpoint)
    assert client.list_objects_v2(Bucket=bucket, Prefix="spark-work/pillars-data-1/").get("KeyCount") == 0
    remove_location(work, moto_s3.endpoint)  # already gone: nothing to do


def test_the_compiled_data_step_gets_the_spark_settings_only_when_the_operator_is_configured(monkeypatch, tmp_path):
    from kfp import compiler

    from pillars.pipelines.compile import pipeline_factory

    def compiled() -> str:
        path = tmp_path / "pipeline.yaml"
        compiler.Compiler().compile(pipeline_factory("training")(image="example.com/pillars:test"), str(path))
        return path.read_text()

    assert "PILLARS_SPARK" not in compiled()
    monkeypatch.setenv("PILLARS_SPARK_WORK_URI", "s3://pillars/spark-work")
    monkeypatch.setenv("PILLARS_SPARK_S3_SECRET", "pillars-s3")
    text = compiled()
    for expected in ("PILLARS_SPARK_WORK_URI", "s3://pillars/spark-work", "PILLARS_SPARK_S3_SECRET",
                     "PILLARS_SPARK_SERVICE_ACCOUNT", "PILLARS_SPARK_IMAGE"):
        assert expected in text, expected


def test_the_driver_file_runs_as_spark_submit_runs_it_and_ends_on_the_error_the_step_reports(tmp_path):
    import subprocess
    import sys

    source = _table(tmp_path / "churn.csv", rows=20)
    spec = step_spec(_params(str(source), label_column="churned"), _settings(str(tmp_path / "work")), "app", "ml")
    main = spec.main_file.removeprefix("local://")
    # `python FILE ARGS`, as spark-submit starts a Python application (its folder first on sys.path)
    result = subprocess.run([sys.executable, main, *spec.arguments], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path, check=False)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"pillars.components.errors.DataError: label column 'churned' not in {source}; columns are: x0, x1, x2, target")
    assert not (tmp_path / "work").exists()  # refused before Spark started or anything was written


def test_without_the_operator_the_step_fails_in_one_line_and_leaves_nothing(tmp_path):
    from kubernetes.client.exceptions import ApiException

    class NoCrd(_Operator):
        def create_namespaced_custom_object(self, group, version, namespace, plural, body):
            raise ApiException(status=404, reason="Not Found")

    work = tmp_path / "work"
    with pytest.raises(SparkApplicationError) as caught:
        run_on_operator(_params(str(tmp_path / "t.csv")), tmp_path / "out", _settings(str(work)), api=NoCrd(),
                        namespace="ml")
    assert str(caught.value) == CRD_HINT
    assert not work.exists() and not (tmp_path / "out").exists()
