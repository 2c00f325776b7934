"""The chart's console (``console.enabled``): off by default, token required, pointing at the cluster's
KFP API and Prometheus; rendered with real helm and validated like a strict API server would."""

from __future__ import annotations

import pytest

from tests.cluster.conftest import CHART, run, validate

ON = ("console.enabled=true", "console.token.existingSecret=console-token")


def _console(docs: list[dict]) -> dict[str, dict]:
    return {d["kind"]: d for d in docs if d["metadata"]["name"].endswith("-console")}


def test_the_console_is_off_by_default(render):
    assert _console(render()) == {}


def test_the_console_renders_valid_objects_with_its_token_kfp_and_prometheus(render, crd_schemas):
    docs = render(set=(*ON, "console.endpoints={iris=http://iris-predictor.pillars.svc.cluster.local}"))
    console = _console(docs)
    assert set(console) == {"ServiceAccount", "Deployment", "Service", "NetworkPolicy"}
    for doc in console.values():
        validate(doc, crd_schemas)
    pod = console["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["pillars", "console"]
    assert "--token-file=/var/run/pillars-console/token" in container["args"]
    assert "--host=0.0.0.0" in container["args"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PILLARS_CONSOLE_KFP_HOST"] == "http://ml-pipeline.kubeflow.svc.cluster.local:8888"
    assert env["PILLARS_CONSOLE_PROMETHEUS_URL"].startswith("http://prometheus-operated.monitoring")
    assert env["PILLARS_CONSOLE_ENDPOINTS"] == "iris=http://iris-predictor.pillars.svc.cluster.local"
    assert env["MLFLOW_TRACKING_URI"] == "http://pillars-mlflow.pillars.svc.cluster.local:5000"
    token = next(v for v in pod["volumes"] if v["name"] == "token")
    assert token["secret"]["secretName"] == "console-token"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["automountServiceAccountToken"] is False
    credentials = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "valueFrom" in e}
    assert credentials["MLFLOW_TRACKING_USERNAME"] == credentials["MLFLOW_TRACKING_PASSWORD"] == "pillars-mlflow-auth"
    egress_ports = {p["port"] for rule in console["NetworkPolicy"]["spec"]["egress"] for p in rule["ports"]}
    assert {5000, 8888, 9090, 8080} <= egress_ports
    # the model servers ask for their token (kserve.auth on by default): the console has it, read-only
    assert env["PILLARS_CONSOLE_ENDPOINT_TOKEN_FILE"] == "/var/run/pillars-serving/token"
    serving = next(v for v in pod["volumes"] if v["name"] == "serving-token")
    assert serving["secret"]["secretName"] == "pillars-serving-token"
    assert {"name": "serving-token", "mountPath": "/var/run/pillars-serving", "readOnly": True} in container["volumeMounts"]
    off = _console(render(set=(*ON, "kserve.auth.enabled=false")))["Deployment"]["spec"]["template"]["spec"]
    assert "serving-token" not in {v["name"] for v in off["volumes"]}
    assert "PILLARS_CONSOLE_ENDPOINT_TOKEN_FILE" not in {e["name"] for e in off["containers"][0]["env"]}


@pytest.mark.parametrize(("values", "says"), [
    (("console.enabled=true",), "console.enabled needs console.token.existingSecret"),
    ((*ON, "console.port=0"), "/console/port"),
    ((*ON, "console.kfpHost=ml-pipeline:8888"), "/console/kfpHost"),
    ((*ON, "console.endpoints={not a url}"), "/console/endpoints"),
    ((*ON, "console.tokens=x"), "tokens"),
])
def test_bad_console_values_are_refused_with_a_message_naming_them(helm, values, says):
    cmd = [helm, "template", "pillars", CHART, "--namespace", "pillars"]
    for item in values:
        cmd += ["--set", item]
    result = run(cmd, check=False)
    assert result.returncode != 0
    assert says in result.stderr
