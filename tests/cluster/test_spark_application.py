"""The data step's SparkApplication (Kubeflow Spark Operator): renderings validate against the operator's
CRD schema made strict (tests/cluster/schemas), an unknown field is refused, and the wait reads real-shaped
statuses: done with its application id, failed with the driver's own error (the object deleted), the CRD
missing named in one line with how to install it."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from kubernetes.client.exceptions import ApiException

from pillars.components.data.spark_application import (
    CRD_HINT,
    SparkApplicationError,
    SparkApplicationSpec,
    application_state,
    build_spark_application,
    submit_and_wait,
)
from pillars.components.errors import ConfigError

SCHEMA = Path(__file__).parent / "schemas" / "sparkoperator.k8s.io" / "sparkapplication_v1beta2.json"


def _validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))


def _spec(**overrides) -> SparkApplicationSpec:
    base = dict(name="pillars-prepare-abc", namespace="pillars", image="ghcr.io/pillars/pillars:0.1.0",
                service_account="pillars-spark", main_file="local:///opt/pillars/prepare_spark.py",
                arguments=("--source", "s3a://data/table/"), s3_secret="pillars-s3", s3_endpoint="http://minio:9000")
    return SparkApplicationSpec(**{**base, **overrides})


@pytest.mark.parametrize("overrides", [{}, {"s3_secret": "", "s3_endpoint": ""},
                                       {"executor_instances": 8, "executor_memory": "6g", "driver_memory": "4g"}])
def test_renderings_are_valid_against_the_strict_crd_schema(overrides):
    app = build_spark_application(_spec(**overrides))
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in _validator().iter_errors(app)]
    assert not errors, errors
    assert app["spec"]["executor"]["instances"] == _spec(**overrides).executor_instances
    assert app["spec"]["driver"]["serviceAccount"] == "pillars-spark"


def test_the_schema_is_strict_an_unknown_field_is_refused():
    app = build_spark_application(_spec())
    app["spec"]["driver"]["memoryy"] = "2g"
    errors = list(_validator().iter_errors(app))
    assert errors and "memoryy" in errors[0].message


def test_bad_sizes_are_refused_naming_them():
    with pytest.raises(ConfigError, match=r"driver_memory='2 GB'.*executor_instances=0"):
        _spec(driver_memory="2 GB", executor_instances=0)


def _status(state: str, error: str = "", app_id: str = "") -> dict:
    status = {"applicationState": {"state": state, **({"errorMessage": error} if error else {})}}
    if app_id:
        status["sparkApplicationId"] = app_id
    return {"metadata": {"name": "pillars-prepare-abc"}, "status": status}


def test_the_state_is_read_from_real_shaped_statuses():
    assert application_state({"metadata": {"name": "x"}}) == (False, "")  # just created: no status yet
    assert application_state(_status("RUNNING", app_id="spark-1")) == (False, "spark-1")
    assert application_state(_status("COMPLETED", app_id="spark-1")) == (True, "spark-1")
    driver_error = ("Traceback (most recent call last):\n  File \"prepare.py\", line 3\n"
                    "pillars.components.errors.DataError: label column 'churned' not in s3a://data/t.csv")
    with pytest.raises(SparkApplicationError, match=r"pillars-prepare-abc failed: pillars.components.errors."
                                                    r"DataError: label column 'churned' not in"):
        application_state(_status("FAILED", driver_error))


class _Api:
    """The three calls of ``CustomObjectsApi`` the wait makes, answering recorded statuses in turn."""

    def __init__(self, statuses: list[dict] | None = None, create_status: int = 0) -> None:
        self.statuses, self.create_status, self.calls = list(statuses or []), create_status, []

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        self.calls.append(("create", body["metadata"]["name"]))
        if self.create_status:
            raise ApiException(status=self.create_status, reason="Not Found")

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        return self.statuses.pop(0)

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.calls.append(("delete", name))


def test_the_wait_returns_the_application_id_and_deletes_a_failed_application():
    api = _Api([_status(""), _status("RUNNING"), _status("COMPLETED", app_id="spark-42")])
    assert submit_and_wait(_spec(), api, poll=0, sleep=lambda s: None) == "spark-42"
    assert api.calls == [("create", "pillars-prepare-abc")]
    failed = _Api([_status("RUNNING"), _status("FAILED", "java.lang.OutOfMemoryError: Java heap space")])
    with pytest.raises(SparkApplicationError, match="failed: java.lang.OutOfMemoryError: Java heap space"):
        submit_and_wait(_spec(), failed, poll=0, sleep=lambda s: None)
    assert failed.calls == [("create", "pillars-prepare-abc"), ("delete", "pillars-prepare-abc")]


def test_a_cluster_without_the_operator_crd_gets_one_line_saying_how_to_install_it():
    with pytest.raises(SparkApplicationError) as caught:
        submit_and_wait(_spec(), _Api(create_status=404), poll=0, sleep=lambda s: None)
    assert str(caught.value) == CRD_HINT and "\n" not in CRD_HINT and "helm install spark-operator" in CRD_HINT


def _spark_rules(docs: list[dict]) -> list[dict]:
    return [rule for d in docs if d["kind"] == "Role" for rule in d["rules"]
            if "sparkoperator.k8s.io" in rule.get("apiGroups", [])]


def test_the_chart_grants_sparkapplications_only_when_the_operator_is_enabled(render, crd_schemas):
    from tests.conftest import validate

    assert not _spark_rules(render())
    docs = render(set=["sparkOperator.enabled=true"])
    for doc in docs:
        validate(doc, crd_schemas)
    (rule,) = _spark_rules(docs)
    assert rule["resources"] == ["sparkapplications"] and "delete" in rule["verbs"]
    (account,) = [d for d in docs if d["kind"] == "ServiceAccount" and d["metadata"]["name"].endswith("-spark")]
    (binding,) = [d for d in docs if d["kind"] == "RoleBinding" and d["metadata"]["name"] == account["metadata"]["name"]]
    assert binding["subjects"][0]["name"] == account["metadata"]["name"]
    named = render(set=["sparkOperator.enabled=true", "sparkOperator.serviceAccount=drivers"])
    assert [d for d in named if d["kind"] == "ServiceAccount" and d["metadata"]["name"] == "drivers"]


def _env(doc: dict) -> dict[str, str]:
    (container,) = doc["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def test_the_chart_gives_the_trigger_the_operator_settings_it_compiles_into_the_data_step(render, crd_schemas):
    from tests.conftest import validate

    spark = ["sparkOperator.enabled=true", "sparkOperator.workUri=s3://pillars/spark-work",
             "sparkOperator.s3.existingSecret=pillars-spark-s3", "sparkOperator.s3.endpointUrl=http://minio:9000",
             "kserve.feedback.dir="]
    docs = render("trigger.yaml", set=spark)
    for doc in docs:
        validate(doc, crd_schemas)
    (trigger,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-trigger")]
    env = _env(trigger)
    assert {k: v for k, v in env.items() if k.startswith("PILLARS_SPARK_")} == {
        "PILLARS_SPARK_SERVICE_ACCOUNT": "pillars-spark", "PILLARS_SPARK_WORK_URI": "s3://pillars/spark-work",
        "PILLARS_SPARK_S3_SECRET": "pillars-spark-s3", "PILLARS_SPARK_S3_ENDPOINT": "http://minio:9000"}
    # the data step copies the splits back with the same credentials
    assert "--s3-secret=pillars-spark-s3" in trigger["spec"]["template"]["spec"]["containers"][0]["args"]
    (account,) = [d for d in docs if d["kind"] == "ServiceAccount" and d["metadata"]["name"] == "pillars-spark"]
    assert account["automountServiceAccountToken"] is True
    (off,) = [d for d in render("trigger.yaml") if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-trigger")]
    assert not [k for k in _env(off) if k.startswith("PILLARS_SPARK_")]


def test_a_work_location_that_is_not_s3_is_refused_by_the_chart(helm):
    import subprocess

    from tests.cluster.conftest import CHART

    result = subprocess.run([helm, "template", "pillars", str(CHART), "--set", "sparkOperator.workUri=/data/spark"],
                            capture_output=True, text=True, check=False)
    assert result.returncode != 0 and "sparkOperator/workUri" in result.stderr
