"""The local stack's Prometheus and Alertmanager configurations pass the tools' own checks."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from pillars.components.errors import ConfigError
from pillars.pipelines.stack import Ports, Timing, alertmanager_config, parse_ports, prometheus_config
from pillars.serving.alerts import rules_file
from tests.conftest import require_tool


@pytest.mark.parametrize("timing", [Timing(), Timing.fast()], ids=["default", "fast"])
def test_prometheus_config_and_rules_pass_promtool(tmp_path, timing):
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(prometheus_config(Ports(), timing)))
    (tmp_path / "rules.yml").write_text(rules_file(timing.alerts))
    result = subprocess.run([require_tool("promtool"), "check", "config", str(tmp_path / "prometheus.yml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout


def test_alertmanager_routes_retrain_alerts_to_the_trigger_with_the_token(tmp_path):
    token = tmp_path / "token"
    token.write_text("t")
    config = alertmanager_config(Ports(trigger=9999), Timing(), token)
    (tmp_path / "am.yml").write_text(yaml.safe_dump(config))
    result = subprocess.run([require_tool("amtool"), "check-config", str(tmp_path / "am.yml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    routed = subprocess.run([require_tool("amtool"), "config", "routes", "test", "--config.file", str(tmp_path / "am.yml"),
                             "pillars_action=retrain", "model=digits"], capture_output=True, text=True)
    assert routed.stdout.strip() == "pillars-trigger"
    other = subprocess.run([require_tool("amtool"), "config", "routes", "test", "--config.file", str(tmp_path / "am.yml"),
                            "alertname=PillarsModelLatencyHigh"], capture_output=True, text=True)
    assert other.stdout.strip() == "log-only"
    hook = config["receivers"][1]["webhook_configs"][0]
    assert hook["url"] == "http://127.0.0.1:9999/alerts"
    assert hook["http_config"]["authorization"]["credentials_file"] == str(token)


def test_port_overrides():
    assert parse_ports("mlflow=5001, prometheus=9191").prometheus == 9191
    with pytest.raises(ConfigError, match="name=port"):
        parse_ports("grafana=3000")
