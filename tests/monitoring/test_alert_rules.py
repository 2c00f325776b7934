"""The alert rules, checked and unit-tested by Prometheus's own promtool: each alert fires and resolves."""

from __future__ import annotations

import subprocess

import yaml

from pillars.serving.monitoring.alerts import helm_rules_file, rules_file
from tests.conftest import require_tool

# Synthetic series, one scrape a minute. Each block: quiet, then the condition, then quiet again.
PROMTOOL_TESTS = """
rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  - name: weighted drift fires after 15 minutes naming the drifted features, and resolves
    interval: 1m
    input_series:
      - series: 'pillars_drift_weighted_share{model="digits",version="3",instance="a"}'
        values: '0.1x10 0.75x30 0.1x30'
      - series: 'pillars_drift_feature_jsd{model="digits",version="3",feature="mean radius",instance="a"}'
        values: '0.02x10 0.4x30 0.02x30'
      - series: 'pillars_drift_feature_drifted{model="digits",version="3",feature="mean radius",instance="a"}'
        values: '0x10 1x30 0x30'
      - series: 'pillars_drift_feature_jsd{model="digits",version="3",feature="area",instance="a"}'
        values: '0.02x70'
      - series: 'pillars_drift_feature_drifted{model="digits",version="3",feature="area",instance="a"}'
        values: '0x70'
    alert_rule_test:
      - {eval_time: 10m, alertname: PillarsModelDrift, exp_alerts: []}
      - {eval_time: 20m, alertname: PillarsModelDrift, exp_alerts: []}
      - eval_time: 30m
        alertname: PillarsModelDrift
        exp_alerts:
          - exp_labels: {severity: warning, pillars_action: retrain, signal: weighted_drift, model: digits,
                         version: "3"}
            exp_annotations:
              summary: "Model digits v3: inputs it relies on drift"
              description: "75% of the model's reliance (feature importance at training) is on drifted features: mean radius ; retraining is requested."
      - {eval_time: 60m, alertname: PillarsModelDrift, exp_alerts: []}

  - name: an unweighted share of drifted features alone no longer retrains
    interval: 1m
    input_series:
      - series: 'pillars_drift_share{model="digits",version="3"}'
        values: '1x40'
      - series: 'pillars_drift_weighted_share{model="digits",version="3"}'
        values: '0.05x40'
    alert_rule_test:
      - {eval_time: 30m, alertname: PillarsModelDrift, exp_alerts: []}

  - name: prediction drift fires and resolves
    interval: 1m
    input_series:
      - series: 'pillars_drift_prediction_jsd{model="digits",version="3"}'
        values: '0.02x10 0.3x30 0.02x30'
    alert_rule_test:
      - {eval_time: 10m, alertname: PillarsModelPredictionDrift, exp_alerts: []}
      - eval_time: 30m
        alertname: PillarsModelPredictionDrift
        exp_alerts:
          - exp_labels: {severity: warning, pillars_action: retrain, signal: prediction_drift, model: digits,
                         version: "3"}
            exp_annotations:
              summary: "Model digits v3: predictions drift"
              description: "The predicted distribution is 0.300 (JS distance) from the training labels'; retraining is requested."
      - {eval_time: 60m, alertname: PillarsModelPredictionDrift, exp_alerts: []}

  - name: an estimated accuracy below the gate's threshold fires; none without an estimate
    interval: 1m
    input_series:
      - series: 'pillars_performance_estimated_accuracy{model="digits",version="3"}'
        values: '0.95x10 0.8x30 0.95x30'
      - series: 'pillars_performance_accuracy_threshold{model="digits",version="3"}'
        values: '0.85x70'
      - series: 'pillars_performance_accuracy_threshold{model="plain",version="1"}'
        values: '0.85x70'
    alert_rule_test:
      - {eval_time: 10m, alertname: PillarsModelEstimatedAccuracyLow, exp_alerts: []}
      - eval_time: 30m
        alertname: PillarsModelEstimatedAccuracyLow
        exp_alerts:
          - exp_labels: {severity: warning, pillars_action: retrain, signal: estimated_accuracy, model: digits,
                         version: "3"}
            exp_annotations:
              summary: "Model digits v3: estimated accuracy 80%"
              description: "The accuracy estimated without labels (CBPE) is below the gate's threshold; retraining is requested."
      - {eval_time: 60m, alertname: PillarsModelEstimatedAccuracyLow, exp_alerts: []}

  - name: p99 latency over target fires and resolves
    interval: 1m
    input_series:
      # 100 requests a minute; first all under 0.1 s, then most between 0.5 s and 1 s, then fast again.
      - series: 'pillars_serving_request_seconds_bucket{model="digits",protocol="v2",le="0.1"}'
        values: '0+100x10 1000+1x20 1020+100x30'
      - series: 'pillars_serving_request_seconds_bucket{model="digits",protocol="v2",le="0.5"}'
        values: '0+100x10 1000+1x20 1020+100x30'
      - series: 'pillars_serving_request_seconds_bucket{model="digits",protocol="v2",le="1"}'
        values: '0+100x10 1000+100x20 3000+100x30'
      - series: 'pillars_serving_request_seconds_bucket{model="digits",protocol="v2",le="+Inf"}'
        values: '0+100x10 1000+100x20 3000+100x30'
    alert_rule_test:
      - {eval_time: 10m, alertname: PillarsModelLatencyHigh, exp_alerts: []}
      - eval_time: 25m
        alertname: PillarsModelLatencyHigh
        exp_alerts:
          - exp_labels: {severity: warning, model: digits}
            exp_annotations:
              summary: "Model digits: p99 latency 994.9ms"
              description: "p99 request latency over 5m is above 0.5s."
      - {eval_time: 50m, alertname: PillarsModelLatencyHigh, exp_alerts: []}

  - name: server error ratio fires and resolves; client errors do not count
    interval: 1m
    input_series:
      - series: 'pillars_serving_requests_total{model="digits",version="3",protocol="v2",status="200"}'
        values: '0+100x40'
      - series: 'pillars_serving_requests_total{model="digits",version="3",protocol="v2",status="400"}'
        values: '0+50x40'
      - series: 'pillars_serving_requests_total{model="digits",version="3",protocol="v2",status="500"}'
        values: '0x10 0+20x15 300x15'
    alert_rule_test:
      - {eval_time: 10m, alertname: PillarsModelErrorRatioHigh, exp_alerts: []}
      - eval_time: 22m
        alertname: PillarsModelErrorRatioHigh
        exp_alerts:
          - exp_labels: {severity: critical, model: digits}
            exp_annotations:
              summary: "Model digits: 11.76% server errors"
              description: "More than 0.05 of requests end in a server error."
      - {eval_time: 40m, alertname: PillarsModelErrorRatioHigh, exp_alerts: []}

  - name: a model server that cannot be scraped fires and resolves
    interval: 1m
    input_series:
      - series: 'up{job="pillars-model-server",instance="127.0.0.1:8080"}'
        values: '1x5 0x5 1x5'
    alert_rule_test:
      - {eval_time: 5m, alertname: PillarsModelServerDown, exp_alerts: []}
      - eval_time: 8m
        alertname: PillarsModelServerDown
        exp_alerts:
          - exp_labels: {severity: critical, job: pillars-model-server, instance: "127.0.0.1:8080"}
            exp_annotations:
              summary: "Model server 127.0.0.1:8080 is down"
              description: "Prometheus cannot scrape the model server."
      - {eval_time: 12m, alertname: PillarsModelServerDown, exp_alerts: []}
"""


def test_rules_pass_promtool_check(tmp_path):
    promtool = require_tool("promtool")
    (tmp_path / "rules.yml").write_text(rules_file())
    result = subprocess.run([promtool, "check", "rules", str(tmp_path / "rules.yml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 8 rules found" in result.stdout


def test_each_alert_fires_and_resolves_in_promtool_unit_tests(tmp_path):
    promtool = require_tool("promtool")
    (tmp_path / "rules.yml").write_text(rules_file())
    (tmp_path / "tests.yml").write_text(PROMTOOL_TESTS)
    result = subprocess.run([promtool, "test", "rules", "tests.yml"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_helm_rendering_keeps_prometheus_templates_escaped():
    groups = yaml.safe_load(helm_rules_file())
    drift = groups[1]["rules"][0]
    assert drift["expr"].endswith(">= {{ .Values.monitoring.rules.driftShare }}")
    assert drift["annotations"]["summary"].startswith('Model {{ "{{ $labels.model }}" }}')


def test_chart_rules_file_is_the_fresh_render_of_the_source():
    from pathlib import Path

    committed = Path(__file__).resolve().parents[2] / "helm" / "pillars" / "files" / "alert-rules.yaml"
    assert committed.read_text() == helm_rules_file(), "run: pillars alerts --helm -o helm/pillars/files/alert-rules.yaml"


def test_chart_renders_the_same_rules_as_the_local_stack(tmp_path):
    from pathlib import Path

    from pillars.serving.monitoring.alerts import rule_groups

    helm = require_tool("helm")
    chart = Path(__file__).resolve().parents[2] / "helm" / "pillars"
    rendered = subprocess.run([helm, "template", "t", str(chart), "--show-only", "templates/monitoring.yaml"],
                              capture_output=True, text=True, check=True).stdout
    rule = next(d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "PrometheusRule")
    groups = {g["name"]: g for g in rule["spec"]["groups"]}
    for group in rule_groups():
        assert groups[group["name"]] == group
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    check = subprocess.run([require_tool("promtool"), "check", "rules", str(tmp_path / "rules.yml")],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
