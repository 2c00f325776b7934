"""The Helm chart: lints strictly, renders valid objects for every value set, rejects bad values."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pillars.components.settings import package_version
from tests.cluster.conftest import CHART, VALUE_SETS, VALUES, run, validate


def test_chart_lints_strictly(helm: str) -> None:
    result = run([helm, "lint", "--strict", CHART], check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    for value_set in VALUE_SETS:
        result = run([helm, "lint", "--strict", CHART, "--values", VALUES / value_set], check=False)
        assert result.returncode == 0, f"{value_set}: {result.stdout}{result.stderr}"


@pytest.mark.parametrize("value_set", [None, *VALUE_SETS])
def test_every_rendered_object_validates_against_its_schema(render, crd_schemas: Path, value_set: str | None) -> None:
    docs = render(*([value_set] if value_set else []))
    assert docs
    for doc in docs:
        validate(doc, crd_schemas)


def test_chart_app_version_is_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == package_version()
    assert chart["version"] == package_version()


def test_default_install_has_mlflow_on_postgresql_reachable_through_its_service(render) -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in render()}
    service = docs[("Service", "pillars-mlflow")]
    assert service["spec"]["ports"][0]["port"] == 5000
    deployment = docs[("Deployment", "pillars-mlflow")]
    assert deployment["spec"]["template"]["metadata"]["labels"].items() >= service["spec"]["selector"].items()
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"ghcr.io/pillars-mlops/pillars:{package_version()}"
    script = container["args"][0]
    assert "--serve-artifacts" in script and "--artifacts-destination" in script
    assert "pillars-mlflow.pillars.svc.cluster.local" in script  # --allowed-hosts
    env = {e["name"]: e for e in container["env"]}
    assert "$(POSTGRES_PASSWORD)@pillars-postgresql:5432/mlflow" in env["MLFLOW_BACKEND_STORE_URI"]["value"]
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "pillars-postgresql"
    assert {"readinessProbe", "livenessProbe"} <= container.keys()
    statefulset = docs[("StatefulSet", "pillars-postgresql")]
    assert statefulset["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "8Gi"
    assert ("ServingRuntime", "pillars") in docs
    assert not [d for d in docs.values() if d["kind"] == "InferenceService"]


def test_cluster_mlflow_uri_setting_matches_the_chart_service(render) -> None:
    from pillars.components.settings import Settings

    service = next(d for d in render() if d["kind"] == "Service" and d["metadata"]["name"].endswith("-mlflow"))
    name, port = service["metadata"]["name"], service["spec"]["ports"][0]["port"]
    assert Settings().cluster_mlflow_uri == f"http://{name}.pillars.svc.cluster.local:{port}"


def test_serving_runtime_supports_the_pillars_format_over_http_and_grpc(render) -> None:
    runtimes = {d["metadata"]["name"]: d for d in render() if d["kind"] == "ServingRuntime"}
    default = runtimes["pillars"]["spec"]
    assert default["supportedModelFormats"] == [{"name": "pillars", "version": "1", "autoSelect": True, "priority": 1}]
    assert runtimes["pillars-registry"]["spec"]["supportedModelFormats"][0]["autoSelect"] is False
    container = default["containers"][0]
    assert container["command"] == ["python", "-m", "pillars.serving"]
    assert container["args"] == ["--model_name={{or (index .Annotations `pillars.io/registered-model`) .Name}}",
                                 "--model_dir=/mnt/models", "--host=0.0.0.0", "--http_port=8080", "--grpc_port=8081",
                                 "--auth_token_file=/var/run/pillars-serving/token"]
    assert "--model_dir=/mnt/models" not in runtimes["pillars-registry"]["spec"]["containers"][0]["args"]


def test_the_model_servers_keep_feedback_in_object_storage_and_the_trigger_retrains_on_it(render) -> None:
    docs = render("trigger.yaml")
    for runtime in (d for d in docs if d["kind"] == "ServingRuntime"):
        container = runtime["spec"]["containers"][0]
        assert "--feedback_dir=s3://pillars-labels/prod" in container["args"]
        env = {e["name"]: e for e in container["env"]}
        assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio.minio.svc:9000"
        assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": "pillars-feedback-s3",
                                                                         "key": "AWS_ACCESS_KEY_ID"}
    [trigger] = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-trigger")]
    container = trigger["spec"]["template"]["spec"]["containers"][0]
    assert "--param=feedback=s3://pillars-labels/prod" in container["args"]
    assert "--s3-secret=pillars-feedback-s3" in container["args"]
    default = [d for d in render() if d["kind"] == "ServingRuntime"][0]["spec"]["containers"][0]
    assert not [a for a in default["args"] if a.startswith("--feedback_dir")]
    assert not [e for e in default["env"] if e["name"].startswith("AWS_")]


def _isvcs(docs: list[dict]) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "InferenceService"}


def test_gpu_model_gets_gpus_cuda_image_node_selector_tolerations_and_grpc_port(render) -> None:
    isvcs = _isvcs(render("gpu.yaml"))
    predictor = isvcs["resnet"]["spec"]["predictor"]
    model = predictor["model"]
    assert model["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert model["image"].endswith(f":{package_version()}-cuda")
    assert predictor["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert predictor["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert model["ports"] == [{"name": "h2c", "containerPort": 8081, "protocol": "TCP"}]
    assert predictor["canaryTrafficPercent"] == 10
    assert (predictor["scaleMetric"], predictor["scaleTarget"]) == ("concurrency", 4)
    assert model["runtime"] == "pillars-registry"
    assert model["args"] == ["--model_uri=models:/resnet@champion", "--reload_interval_s=60", "--workers=1"]
    env = {e["name"]: e.get("value") for e in model["env"]}
    assert env["MLFLOW_TRACKING_URI"] == "http://pillars-mlflow.pillars.svc.cluster.local:5000"
    assert "storageUri" not in model
    iris = isvcs["iris"]["spec"]["predictor"]
    assert iris["minReplicas"] == 0 and iris["scaleMetric"] == "rps"  # Knative scale to zero
    assert "nvidia.com/gpu" not in iris["model"]["resources"].get("limits", {})
    assert isvcs["iris"]["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative"


@pytest.mark.parametrize(("cpu", "gpu", "workers", "expected"), [
    ("500m", 0, None, 1), ("2", 0, None, 2), ("2500m", 0, None, 2), ("4", 1, None, 1), ("1", 0, 3, 3)])
def test_the_server_runs_one_worker_process_per_whole_cpu_requested_unless_told(render, cpu, gpu, workers,
                                                                                  expected) -> None:
    values = ["models[0].name=m", "models[0].uri=s3://bucket/m", f"models[0].resources.requests.cpu={cpu}",
              f"models[0].gpu={gpu}"] + ([f"models[0].workers={workers}"] if workers else [])
    model = _isvcs(render(set=values))["m"]["spec"]["predictor"]["model"]
    assert model["args"] == [f"--workers={expected}"]
    assert model["resources"]["requests"]["cpu"] in (cpu, int(cpu) if cpu.isdigit() else cpu)


def test_standard_mode_writes_hpa_and_keda_settings_the_kserve_way(render) -> None:
    docs = render("keda.yaml")
    isvcs = _isvcs(docs)
    for isvc in isvcs.values():
        assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
        assert [p["name"] for p in isvc["spec"]["predictor"]["model"]["ports"]] == ["http1", "h2c"]
    wine = isvcs["wine"]
    assert wine["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "hpa"
    assert wine["metadata"]["annotations"]["serving.kserve.io/metrics"] == "cpu"
    assert wine["metadata"]["annotations"]["serving.kserve.io/targetUtilizationPercentage"] == "60"
    assert wine["spec"]["predictor"]["model"]["storageUri"] == "s3://models/wine/v1"
    assert wine["spec"]["predictor"]["model"]["runtime"] == "pillars"
    assert isvcs["iris"]["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "external"
    scaled = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ScaledObject"}
    assert set(scaled) == {"iris-predictor", "resnet-predictor"}
    iris = scaled["iris-predictor"]["spec"]
    assert iris["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "iris-predictor"}
    assert (iris["minReplicaCount"], iris["maxReplicaCount"]) == (0, 5)
    assert iris["triggers"][0]["type"] == "prometheus"
    assert "pillars_serving_request_seconds_sum" in iris["triggers"][0]["metadata"]["query"]
    assert iris["triggers"][0]["metadata"]["threshold"] == "8"
    assert "DCGM_FI_DEV_GPU_UTIL" in scaled["resnet-predictor"]["spec"]["triggers"][0]["metadata"]["query"]
    account = next(d for d in docs if d["kind"] == "ServiceAccount" and d["metadata"]["name"] == "pillars-models")
    assert account["secrets"] == [{"name": "model-store"}]
    assert account["metadata"]["annotations"] == {"serving.kserve.io/s3-endpoint": "minio.minio.svc:9000",
                                                  "serving.kserve.io/s3-usehttps": "0",
                                                  "serving.kserve.io/s3-region": "us-east-1"}


def test_older_kserve_gets_the_old_mode_names(render) -> None:
    isvcs = _isvcs(render("kserve-0.14.yaml"))
    assert isvcs["iris"]["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
    assert isvcs["wine"]["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"


def test_external_postgresql_reads_the_dsn_from_a_secret_and_renders_no_database(render) -> None:
    docs = render("external-postgres.yaml")
    assert not [d for d in docs if "postgresql" in d["metadata"]["name"]]
    mlflow = next(d for d in docs if d["kind"] == "Deployment")
    env = {e["name"]: e for e in mlflow["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"] == {"name": "mlflow-db", "key": "dsn"}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "minio-credentials"
    assert env["MLFLOW_S3_ENDPOINT_URL"]["value"] == "http://minio.minio.svc:9000"


def test_auth_takes_the_admin_password_from_a_secret_and_the_ingress_host_is_allowed(render) -> None:
    docs = render("auth.yaml")
    mlflow = next(d for d in docs if d["kind"] == "Deployment")
    container = mlflow["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "mlflow-admin", "key": "password"}
    assert not [d for d in docs if d["kind"] == "Secret" and "mlflow" in d["metadata"]["name"]]  # the named one is used
    assert "--app-name basic-auth" in container["args"][0]
    assert "mlflow.pillars.example.org" in container["args"][0]
    ingress = next(d for d in docs if d["kind"] == "Ingress")
    assert ingress["spec"]["rules"][0]["host"] == "mlflow.pillars.example.org"
    assert ingress["spec"]["tls"][0]["secretName"] == "mlflow-tls"


def test_monitoring_objects_alert_on_latency_errors_servers_down_and_drift(render) -> None:
    docs = render()
    kinds = {d["kind"] for d in docs}
    assert {"ServiceMonitor", "PodMonitor", "PrometheusRule"} <= kinds
    rule = next(d for d in docs if d["kind"] == "PrometheusRule")
    groups = {g["name"]: g for g in rule["spec"]["groups"]}
    alerts = {r["alert"]: r for g in groups.values() for r in g["rules"] if "alert" in r}
    assert {"PillarsModelLatencyHigh", "PillarsModelErrorRatioHigh", "PillarsModelServerDown",
            "PillarsModelDrift", "PillarsMlflowDown"} <= alerts.keys()
    assert alerts["PillarsModelDrift"]["labels"]["pillars_action"] == "retrain"
    assert alerts["PillarsModelDrift"]["expr"].endswith(">= 0.2") and alerts["PillarsModelDrift"]["for"] == "15m"
    assert "pillars_serving_request_seconds_bucket" in groups["pillars-serving"]["rules"][0]["expr"]
    dashboard = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard"))
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    import json

    panels = json.loads(dashboard["data"]["pillars-serving.json"])["panels"]
    assert len(panels) >= 4


def test_helm_test_hook_checks_mlflow_and_every_model_endpoint(render) -> None:
    hook = next(d for d in render("gpu.yaml") if d["kind"] == "Pod")
    assert hook["metadata"]["annotations"]["helm.sh/hook"] == "test"
    urls = hook["spec"]["containers"][0]["args"][1:]
    assert urls[0].endswith(":5000/health")
    # resnet serves gRPC only through Knative, so only iris is probed over HTTP.
    assert urls[1:] == ["http://iris-predictor.pillars.svc.cluster.local/v2/models/iris/ready"]


def test_pipeline_runner_may_manage_inference_services_in_its_namespace_only(render) -> None:
    docs = render()
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    role = next(d for d in docs if d["kind"] == "Role")
    isvc_rule = next(r for r in role["rules"] if r["resources"] == ["inferenceservices"])
    assert {"create", "patch", "get", "watch"} <= set(isvc_rule["verbs"])
    assert "delete" not in isvc_rule["verbs"]
    binding = next(d for d in docs if d["kind"] == "RoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "pillars-pipeline-runner",
                                    "namespace": "pillars"}]


@pytest.mark.parametrize("arguments, message", [
    (["--set", "mlflow.replicas=two"], "/mlflow/replicas"),
    (["--set", "models[0].name=x,models[0].uri=models:/x@a,models[0].gpu=one"], "gpu"),
    (["--set", "monitoring.rules.enabled=maybe"], "/monitoring/rules/enabled"),
    (["--set", "replicaCount=2"], "replicaCount"),
    (["--set", "mlflowx.port=1"], "mlflowx"),
    (["--set", "kserve.deploymentMode=Serverless"], "deploymentMode"),
    (["--set", "trigger.enabled=maybe"], "/trigger/enabled"),
    (["--set", "trigger.cooldownSeconds=soon"], "/trigger/cooldownSeconds"),
    (["--set", "trigger.kfpHost=ml-pipeline:8888"], "/trigger/kfpHost"),
    (["--set", "trigger.params.epochs.max=3"], "/trigger/params/epochs"),
    (["--set", "trigger.networkPolicy.kfpApi.ports[0]=http"], "/trigger/networkPolicy/kfpApi/ports/0"),
    (["--set", "trigger.token.value=abc"], "value"),
    (["--set", "servingImage.repository=x"], "servingImage"),  # one image value: image.*
    (["--set", "kserve.reloadIntervalSeconds=-1"], "/kserve/reloadIntervalSeconds"),
    (["--set", "mlflow.auth.passwordKey=pw"], "passwordKey"),  # the Secret's keys are fixed
    (["--set", "mlflow.networkPolicy.clients[0].podSelector.app=x"], "namespaceSelector"),
    (["--set", "kserve.feedback.dir=labels"], "/kserve/feedback/dir"),  # a pod's folder loses labels
])
def test_values_schema_rejects_wrong_types_and_unknown_keys(helm: str, arguments: list[str], message: str) -> None:
    result = run([helm, "template", "pillars", CHART, *arguments], check=False)
    assert result.returncode != 0
    assert message in result.stderr


@pytest.mark.parametrize("values, message", [
    ({"postgresql": {"enabled": False}}, "externalDatabase.existingSecret"),
    ({"kserve": {"deploymentMode": "Standard"},
      "models": [{"name": "a", "uri": "s3://b/a", "canaryTrafficPercent": 5}]},
     "canaryTrafficPercent needs Knative"),
    ({"models": [{"name": "a", "uri": "s3://b/a", "scaleMetric": "cpu"}]}, "concurrency or rps"),
    ({"kserve": {"deploymentMode": "Standard"}, "models": [{"name": "a", "uri": "s3://b/a", "minReplicas": 0}]},
     "needs Knative mode or autoscaler keda"),
    ({"trigger": {"enabled": True}}, "trigger.token.existingSecret"),
    ({"trigger": {"enabled": True, "token": {"existingSecret": "t"}, "metricsPort": 9095}},
     "trigger.metricsPort must differ from trigger.port"),
    ({"models": [{"name": "a", "uri": "s3://b/a", "minReplicas": 3, "maxReplicas": 2}]}, "below minReplicas"),
])
def test_inconsistent_values_fail_with_a_message_naming_the_problem(helm: str, tmp_path: Path, values: dict,
                                                                    message: str) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    result = run([helm, "template", "pillars", CHART, "--values", path], check=False)
    assert result.returncode != 0
    assert message in result.stderr


def test_notes_tell_how_to_reach_mlflow_and_every_model(helm: str) -> None:
    result = run([helm, "install", "pillars", CHART, "--namespace", "pillars", "--dry-run=client",
                  "--values", VALUES / "gpu.yaml"])
    notes = result.stdout.split("NOTES:", 1)[1]
    assert "http://pillars-mlflow.pillars.svc.cluster.local:5000" in notes
    assert "port-forward svc/pillars-mlflow 5000:5000" in notes
    for model in ("resnet", "iris"):
        assert f"kubectl -n pillars get inferenceservice {model}" in notes
    assert "helm test pillars" in notes
