"""The local stack's Prometheus and Alertmanager configurations pass the tools' own checks."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest
import yaml

from pillars.components.errors import ConfigError
from pillars.pipelines.local.stack import (WEB_USER, Ports, Timing, alertmanager_config, parse_ports, prometheus_config,
                                     web_config, write_secret)
from pillars.serving.monitoring.alerts import rules_file
from tests.conftest import require_tool


@pytest.mark.parametrize("timing", [Timing(), Timing.fast()], ids=["default", "fast"])
def test_prometheus_config_and_rules_pass_promtool(tmp_path, timing):
    password = tmp_path / "web.password"
    password.write_text("pw")
    config = prometheus_config(Ports(), timing, password)
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    (tmp_path / "rules.yml").write_text(rules_file(timing.alerts))
    result = subprocess.run([require_tool("promtool"), "check", "config", str(tmp_path / "prometheus.yml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 8 rules found" in result.stdout
    (alertmanager,) = config["alerting"]["alertmanagers"]
    assert alertmanager["basic_auth"] == {"username": WEB_USER, "password_file": str(password)}


def test_the_web_config_passes_promtool_and_holds_a_bcrypt_hash_only(tmp_path):
    import bcrypt

    config = web_config("the password", cost=4)
    (tmp_path / "web.yml").write_text(yaml.safe_dump(config))
    result = subprocess.run([require_tool("promtool"), "check", "web-config", str(tmp_path / "web.yml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    (user, hashed), = config["basic_auth_users"].items()
    assert user == WEB_USER and "the password" not in (tmp_path / "web.yml").read_text()
    assert bcrypt.checkpw(b"the password", hashed.encode()) and not bcrypt.checkpw(b"guess", hashed.encode())


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


def test_the_trigger_token_file_is_created_owner_only_and_never_reused(tmp_path):
    path = tmp_path / "trigger.token"
    path.write_text("old token")
    path.chmod(0o644)
    old = os.open(path, os.O_RDONLY)  # someone who opened the old, readable file
    umask = os.umask(0)  # the most permissive umask: the mode must come from the create itself
    try:
        write_secret(path, "new token")
    finally:
        os.umask(umask)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.read_text() == "new token"
        assert os.read(old, 100) == b"old token"  # a new file: the old descriptor never sees the secret
    finally:
        os.close(old)
