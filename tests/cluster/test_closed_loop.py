"""The chart's side of the closed loop: the retraining trigger, the RBAC to launch TrainJobs, the
Alertmanager receiver it documents, and the Grafana dashboard over the metrics the code defines."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml

from pillars.components.settings import package_version
from tests.cluster.conftest import CHART, ROOT, VALUES, run
from tests.conftest import require_tool
from tests.processes import ServerProcess, free_port

TRIGGER_VALUES = "trigger.yaml"


def _by_kind_name(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def _trigger_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = _by_kind_name(docs)[("Deployment", "pillars-trigger")]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _flags(args: list[str]) -> dict[str, list[str]]:
    """``--flag=value`` arguments as {flag: [values]} (repeatable flags keep their order)."""
    flags: dict[str, list[str]] = {}
    for arg in args:
        flag, _, value = arg.partition("=")
        flags.setdefault(flag, []).append(value)
    return flags


# The trigger -------------------------------------------------------------------------------------

def test_the_trigger_is_off_unless_enabled(render) -> None:
    assert not [d for d in render() if "trigger" in d["metadata"]["name"]]


def test_trigger_serves_webhooks_and_starts_runs_on_the_kfp_api_with_the_chart_mlflow(render) -> None:
    docs = render(TRIGGER_VALUES)
    objects = _by_kind_name(docs)
    container = _trigger_container(docs)
    assert container["image"] == f"ghcr.io/pillars-mlops/pillars:{package_version()}"
    assert container["command"] == ["pillars", "trigger"]
    flags = _flags(container["args"])
    assert flags["--host"] == ["0.0.0.0"] and flags["--port"] == ["9095"] and flags["--metrics-port"] == ["9096"]
    assert flags["--max-active-runs"] == ["2"]
    assert flags["--token-file"] == ["/var/run/pillars-trigger/token"]
    assert flags["--kfp-host"] == ["http://ml-pipeline.kubeflow.svc.cluster.local:8888"]
    assert flags["--experiment"] == ["iris-retraining"]
    assert flags["--cooldown"] == ["1800"]
    assert flags["--namespace"] == ["pillars"]  # multi-user: runs go to the release's profile namespace
    assert sorted(flags["--param"]) == ["epochs=20", "feedback=s3://pillars-labels/prod", "source=s3://data/iris/",
                                        "tracking_uri=http://pillars-mlflow.pillars.svc.cluster.local:5000",
                                        "warm_start=true"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    service = objects[("Service", "pillars-trigger")]
    assert service["spec"]["ports"] == [{"name": "http", "port": 9095, "targetPort": "http", "protocol": "TCP"},
                                        {"name": "metrics", "port": 9096, "targetPort": "metrics", "protocol": "TCP"}]
    pod_labels = objects[("Deployment", "pillars-trigger")]["spec"]["template"]["metadata"]["labels"]
    assert pod_labels.items() >= service["spec"]["selector"].items()
    deployment = objects[("Deployment", "pillars-trigger")]["spec"]
    assert deployment["replicas"] == 1 and deployment["strategy"] == {"type": "Recreate"}
    monitor = objects[("ServiceMonitor", "pillars-trigger")]
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"  # not the webhook's port
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert service["metadata"]["labels"].items() >= monitor["spec"]["selector"]["matchLabels"].items()


def test_a_user_parameter_overrides_the_default_tracking_uri(render) -> None:
    container = _trigger_container(render(TRIGGER_VALUES, set=["trigger.params.tracking_uri=http://mlflow.example:80"]))
    params = _flags(container["args"])["--param"]
    assert [p for p in params if p.startswith("tracking_uri=")] == ["tracking_uri=http://mlflow.example:80"]


def test_every_parameter_the_chart_passes_is_a_retraining_pipeline_parameter(render) -> None:
    from pillars.pipelines.compile import parse_params, pipeline_factory

    params = _flags(_trigger_container(render(TRIGGER_VALUES))["args"])["--param"]
    arguments = parse_params(params, pipeline_factory("retraining")())
    assert arguments["epochs"] == 20 and arguments["warm_start"] is True
    assert arguments["tracking_uri"] == "http://pillars-mlflow.pillars.svc.cluster.local:5000"


def test_the_webhook_token_is_read_from_the_named_secret_never_from_values(render) -> None:
    docs = render(TRIGGER_VALUES)
    spec = _by_kind_name(docs)[("Deployment", "pillars-trigger")]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    container = spec["containers"][0]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "token")
    assert mount == {"name": "token", "mountPath": "/var/run/pillars-trigger", "readOnly": True}
    assert volumes["token"]["secret"]["secretName"] == "pillars-trigger-token"
    assert volumes["token"]["secret"]["items"] == [{"key": "token", "path": "token"}]
    assert not [e for e in container.get("env", []) if "TOKEN" in e["name"]]
    assert not [d for d in docs if d["kind"] == "Secret" and "trigger" in d["metadata"]["name"]]


def test_multi_user_kfp_gets_a_projected_pipelines_token_and_a_namespaced_role_only(render) -> None:
    docs = render(TRIGGER_VALUES)
    spec = _by_kind_name(docs)[("Deployment", "pillars-trigger")]["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is False
    projected = next(v for v in spec["volumes"] if v["name"] == "kfp-token")["projected"]["sources"]
    assert projected == [{"serviceAccountToken": {"path": "token", "audience": "pipelines.kubeflow.org",
                                                  "expirationSeconds": 7200}}]
    mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "kfp-token")
    from kfp.client import KF_PIPELINES_SA_TOKEN_PATH  # where kfp.Client looks for it

    assert f"{mount['mountPath']}/token" == KF_PIPELINES_SA_TOKEN_PATH
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    role = _by_kind_name(docs)[("Role", "pillars-trigger")]
    assert role["metadata"]["namespace"] == "pillars"
    assert {g for r in role["rules"] for g in r["apiGroups"]} == {"pipelines.kubeflow.org"}
    assert {v for r in role["rules"] for v in r["verbs"]} == {"get", "list", "create"}
    binding = _by_kind_name(docs)[("RoleBinding", "pillars-trigger")]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "pillars-trigger", "namespace": "pillars"}]
    single_user = render(TRIGGER_VALUES, set=["trigger.kfp.multiUser=false"])
    assert ("Role", "pillars-trigger") not in _by_kind_name(single_user)
    assert "--namespace" not in _flags(_trigger_container(single_user)["args"])


def _policies_selecting(docs: list[dict[str, Any]], labels: dict[str, str]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == "NetworkPolicy"
            and labels.items() >= d["spec"]["podSelector"]["matchLabels"].items()]


def test_only_alertmanager_reaches_the_webhook_prometheus_only_the_metrics_and_the_trigger_only_kfp_and_mlflow(
        render) -> None:
    from tests.cluster.test_access import admits

    docs = render(TRIGGER_VALUES)
    labels = _by_kind_name(docs)[("Deployment", "pillars-trigger")]["spec"]["template"]["metadata"]["labels"]
    policies = _policies_selecting(docs, labels)
    assert {p["metadata"]["name"] for p in policies} == {"pillars-default-deny", "pillars-trigger"}
    policy = _by_kind_name(docs)[("NetworkPolicy", "pillars-trigger")]
    alertmanager = ("observability", {"app.kubernetes.io/name": "alertmanager", "alertmanager": "main"})
    prometheus = ("observability", {"app.kubernetes.io/name": "prometheus"})
    assert admits(policy, 9095, *alertmanager) and not admits(policy, 9096, *alertmanager)
    assert admits(policy, 9096, *prometheus) and not admits(policy, 9095, *prometheus)
    for who in [("pillars", {"app.kubernetes.io/name": "pillars", "app.kubernetes.io/instance": "pillars",
                             "app.kubernetes.io/component": "model"}),
                ("observability", {"app.kubernetes.io/name": "alertmanager"}),  # another Alertmanager
                ("monitoring", {"app.kubernetes.io/name": "alertmanager", "alertmanager": "main"}),
                ("default", {"app": "web"})]:
        assert not admits(policy, 9095, *who) and not admits(policy, 9096, *who), who
    assert [rule for p in policies if p is not policy for rule in p["spec"].get("ingress", [])] == []
    egress = [rule for p in policies for rule in p["spec"].get("egress", [])]
    assert {port["port"] for rule in egress for port in rule["ports"]} == {53, 8888, 8887, 5000}
    kfp = next(rule for rule in egress if rule["ports"][0]["port"] == 8888)
    assert kfp["to"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kubeflow"}},
                          "podSelector": {"matchLabels": {"app": "ml-pipeline"}}}]
    mlflow = next(rule for rule in egress if rule["ports"][0]["port"] == 5000)
    mlflow_pods = _by_kind_name(docs)[("Deployment", "pillars-mlflow")]["spec"]["template"]["metadata"]["labels"]
    assert mlflow["to"] == [{"podSelector": {"matchLabels": _by_kind_name(docs)[("Service", "pillars-mlflow")]
                                             ["spec"]["selector"]}}]
    assert mlflow_pods.items() >= mlflow["to"][0]["podSelector"]["matchLabels"].items()
    assert admits(_by_kind_name(docs)[("NetworkPolicy", "pillars-mlflow")], 5000, "pillars", labels)
    assert all("to" in rule for rule in egress), "every egress rule names its peers"


def test_the_default_peers_are_kube_prometheus_stack_in_monitoring(render) -> None:
    docs = render(set=["trigger.enabled=true", "trigger.token.existingSecret=t"])
    policy = _by_kind_name(docs)[("NetworkPolicy", "pillars-trigger")]
    webhook, metrics = policy["spec"]["ingress"]
    assert [p["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for p in webhook["from"]] == ["alertmanager"]
    assert [p["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for p in metrics["from"]] == ["prometheus"]
    assert all(p["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
               for rule in (webhook, metrics) for p in rule["from"])


def test_the_rendered_arguments_start_the_real_trigger(render, tmp_path: Path) -> None:
    """The chart's command line, pointed at loopback, runs `pillars trigger`: healthy, token enforced."""
    container = _trigger_container(render(TRIGGER_VALUES))
    token = tmp_path / "token"
    token.write_text("chart-token\n")
    port, metrics_port = free_port(), free_port()
    local = {"--host": "127.0.0.1", "--port": str(port), "--metrics-port": str(metrics_port), "--token-file": str(token)}
    args = [f"{flag}={local[flag]}" if flag in local else arg
            for arg in container["args"] for flag in [arg.partition("=")[0]]]
    server = ServerProcess([sys.executable, "-m", "pillars.pipelines.cli", "trigger", *args],
                           log_path=tmp_path / "trigger.log", env={"PILLARS_HOME": str(tmp_path / ".pillars")})
    try:
        url = f"http://127.0.0.1:{port}"
        server.wait_http(f"{url}/healthz", timeout=60)
        payload = {"version": "4", "alerts": []}
        assert httpx.post(f"{url}/alerts", json=payload, timeout=10).status_code == 401
        ok = httpx.post(f"{url}/alerts", json=payload, headers={"Authorization": "Bearer chart-token"}, timeout=10)
        assert ok.status_code == 200 and ok.json() == {"decisions": []}
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        assert 'pillars_trigger_decisions_total{decision="started"} 0.0' in metrics
        assert httpx.get(f"{url}/metrics", timeout=10).status_code == 404  # not on the webhook's port
    finally:
        server.stop()


def _receiver_snippet() -> dict[str, Any]:
    text = (CHART / "README.md").read_text()
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if "webhook_configs" in b)
    return yaml.safe_load(block)


def test_the_documented_alertmanager_receiver_routes_retrain_alerts_to_the_trigger(render, tmp_path: Path) -> None:
    snippet = _receiver_snippet()
    route = snippet["route"]["routes"][0]
    assert route["matchers"] == ['pillars_action="retrain"'] and route["continue"] is True
    (webhook,) = snippet["receivers"][0]["webhook_configs"]
    service = _by_kind_name(render(TRIGGER_VALUES))[("Service", "pillars-trigger")]
    assert webhook["url"] == f"http://{service['metadata']['name']}.pillars.svc.cluster.local:9095/alerts"
    assert webhook["http_config"]["authorization"]["credentials_file"].endswith("/pillars-trigger-token/token")
    # The same receiver in a whole configuration passes Alertmanager's own checker.
    amtool = require_tool("amtool")
    token = tmp_path / "token"
    token.write_text("t\n")
    webhook["http_config"]["authorization"]["credentials_file"] = str(token)
    config = {"route": {"receiver": "default", **snippet["route"]},
              "receivers": [{"name": "default"}, *snippet["receivers"]]}
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    result = run([amtool, "check-config", path], check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_notes_show_the_receiver_for_the_installed_trigger(helm: str) -> None:
    result = run([helm, "install", "pillars", CHART, "--namespace", "pillars", "--dry-run=client",
                  "--values", VALUES / TRIGGER_VALUES])
    notes = result.stdout.split("NOTES:", 1)[1]
    assert "url: http://pillars-trigger.pillars.svc.cluster.local:9095/alerts" in notes
    assert "credentials_file: /etc/alertmanager/secrets/pillars-trigger-token/token" in notes
    assert "matchers: ['pillars_action=\"retrain\"']" in notes


# RBAC --------------------------------------------------------------------------------------------

def test_pipeline_runs_may_launch_and_clean_up_trainjobs_in_their_namespace_only(render) -> None:
    docs = render()
    role = _by_kind_name(docs)[("Role", "pillars-pipeline-runner")]
    (rule,) = [r for r in role["rules"] if "trainjobs" in r["resources"]]
    assert rule["apiGroups"] == ["trainer.kubeflow.org"] and rule["resources"] == ["trainjobs"]
    # components/training/trainjob.py: server-side apply (create/patch), then polling get; delete to clean up.
    assert set(rule["verbs"]) == {"create", "get", "list", "watch", "patch", "delete"}
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]


def test_the_trainjob_rule_names_the_api_components_trainjob_uses() -> None:
    from pillars.components.training import trainjob

    rbac = (CHART / "templates" / "rbac.yaml").read_text()
    assert f"apiGroups: [{trainjob.GROUP}]" in rbac and f"resources: [{trainjob.PLURAL}]" in rbac


# The dashboard -----------------------------------------------------------------------------------

DASHBOARD = CHART / "dashboards" / "pillars-serving.json"
METRIC_SOURCES = sorted((ROOT / "serving").rglob("*.py")) + sorted((ROOT / "pipelines" / "trigger").rglob("*.py"))
"""Where the series the model server and the trigger export are defined."""
SAMPLE_SUFFIXES = {"Counter": ("_total",), "Histogram": ("_bucket", "_sum", "_count"), "Summary": ("_sum", "_count"),
                   "Gauge": ()}
"""What Prometheus appends to a family's name, per kind (a gauge's series is the name itself)."""
STANDARD_METRICS = {"up"}


def _defined_metrics() -> set[str]:
    """The series names Prometheus sees from the metric families the code defines (the names given
    to prometheus-client's Counter, Gauge, Histogram, Summary and *MetricFamily) and from the
    recording rules (serving/monitoring/alerts.py, the source of the chart's rules)."""
    from pillars.serving.monitoring.alerts import rule_groups

    constructor = re.compile(r'\b(Counter|Gauge|Histogram|Summary)\w*\(\s*"([a-z_:][a-z0-9_:]*)"')
    families = [(kind, name) for path in METRIC_SOURCES for kind, name in constructor.findall(path.read_text())]
    families += [("Gauge", r["record"]) for g in rule_groups() for r in g["rules"] if "record" in r]
    series = set()
    for kind, name in families:
        suffixes = SAMPLE_SUFFIXES[kind] or ("",)
        series |= {name.removesuffix("_total") + suffix for suffix in suffixes}
    return series


def _metric_names(expr: str) -> set[str]:
    """Series names an expression selects: what is left once label matchers, ranges, grouping
    labels and function names are taken out."""
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without)\s*\([^)]*\)", "", expr)
    return set(re.findall(r"(?<![\w:])[a-zA-Z_:][a-zA-Z0-9_:]*\b(?!\s*\()", expr))


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every annotation query."""
    found = [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]
    found += [(f"annotation {a['name']}", a["expr"]) for a in dashboard.get("annotations", {}).get("list", [])
              if "expr" in a]
    return found


def test_the_metric_name_extraction_finds_series_and_skips_functions_and_labels() -> None:
    assert _metric_names('histogram_quantile(0.99, sum by (model, le) (rate(a_b_bucket{x="y"}[5m])))') == {"a_b_bucket"}
    assert _metric_names('max by (model) (c:d:e{n="$n"}) * 1000 > up') == {"c:d:e", "up"}


def test_dashboard_is_valid_json_with_unique_panel_ids_and_the_serving_and_drift_panels() -> None:
    dashboard = _dashboard()
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    exprs = " ".join(e for _, e in _expressions(dashboard))
    for needed in ("rate(pillars_serving_requests_total", "histogram_quantile(0.99", "histogram_quantile(0.5",
                   "pillars:serving_requests:error_ratio", "pillars_serving_batch_size_bucket",
                   "by (model, feature) (pillars_drift_feature_jsd", "pillars_drift_share",
                   "pillars_drift_prediction_jsd", "rate(pillars_input_out_of_range_total",
                   "by (decision) (increase(pillars_trigger_decisions_total",
                   "pillars_trigger_last_run_timestamp_seconds"):
        assert needed in exprs, needed
    annotations = dashboard["annotations"]["list"]
    assert any("pillars_trigger_last_run_timestamp_seconds" in a["expr"] for a in annotations)
    for panel in panels:
        if panel["type"] != "row":
            assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_every_dashboard_expression_selects_metrics_the_code_defines() -> None:
    defined = _defined_metrics()
    assert {"pillars_drift_feature_jsd", "pillars_drift_share", "pillars_drift_prediction_jsd",
            "pillars_input_out_of_range_total", "pillars_trigger_decisions_total",
            "pillars_serving_request_seconds_bucket"} <= defined
    assert not {"pillars_drift_share_total", "pillars_serving_requests"} & defined  # gauge; counter without _total
    for where, expr in _expressions(_dashboard()):
        names = _metric_names(expr)
        assert names, f"{where}: no metric in {expr}"
        for name in names:
            assert name in defined or name in STANDARD_METRICS, f"{where}: {name} is not a metric the code defines"


def test_every_dashboard_expression_is_valid_promql(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    rules = [{"record": f"dashboard:expr:{i}", "expr": expr} for i, (_, expr) in enumerate(_expressions(_dashboard()))]
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_chart_ships_the_dashboard_file_unchanged(render) -> None:
    config_map = _by_kind_name(render())[("ConfigMap", "pillars-dashboard")]
    assert json.loads(config_map["data"]["pillars-serving.json"]) == _dashboard()


def test_the_dashboard_names_no_datasource_uid_of_a_particular_grafana() -> None:
    text = DASHBOARD.read_text()
    assert set(re.findall(r'"uid": "([^"]+)"', text)) <= {"${datasource}", "pillars-serving"}


# The trigger's own alerts -------------------------------------------------------------------------

TRIGGER_ALERT_TESTS = """
rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  - name: a failed start alerts, successful starts do not
    interval: 1m
    input_series:
      - series: 'pillars_trigger_decisions_total{namespace="pillars",service="pillars-trigger",decision="failed"}'
        values: '0x20 1x40'
      - series: 'pillars_trigger_decisions_total{namespace="pillars",service="pillars-trigger",decision="started"}'
        values: '0x10 3x50'
      - series: 'up{namespace="pillars",service="pillars-trigger"}'
        values: '1x30 0x20 1x10'
    alert_rule_test:
      - {eval_time: 15m, alertname: PillarsRetrainingStartFailed, exp_alerts: []}
      - eval_time: 25m
        alertname: PillarsRetrainingStartFailed
        exp_alerts:
          - exp_labels: {severity: warning, namespace: pillars, service: pillars-trigger, decision: failed}
            exp_annotations:
              summary: The retraining trigger failed to start a run (KFP API unreachable or refused); see its log
      - {eval_time: 59m, alertname: PillarsRetrainingStartFailed, exp_alerts: []}
      - {eval_time: 30m, alertname: PillarsRetrainTriggerDown, exp_alerts: []}
      - eval_time: 40m
        alertname: PillarsRetrainTriggerDown
        exp_alerts:
          - exp_labels: {severity: warning}  # absent() of a comparison keeps no labels
            exp_annotations:
              summary: The retraining trigger is not scraped as up; retrain alerts are not acted on
      - {eval_time: 55m, alertname: PillarsRetrainTriggerDown, exp_alerts: []}
"""


def test_the_chart_alerts_when_the_trigger_is_down_or_cannot_start_runs(render, tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    rule = next(d for d in render(TRIGGER_VALUES) if d["kind"] == "PrometheusRule")
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    (tmp_path / "tests.yml").write_text(TRIGGER_ALERT_TESTS)
    check = subprocess.run([promtool, "check", "rules", "rules.yml"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    result = subprocess.run([promtool, "test", "rules", "tests.yml"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    default = next(d for d in render() if d["kind"] == "PrometheusRule")
    assert "PillarsRetrainTriggerDown" not in json.dumps(default)
