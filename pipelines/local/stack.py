"""``pillars up`` / ``pillars down``: the whole loop on one machine, with the real servers.

``up`` starts, each as a process of its own with its log under ``<home>/stack/logs``:

1. ``mlflow server`` on the embedded store (``<home>/mlflow.db``): the registry UI;
2. the model server for ``models:/NAME@champion``, reloading when the champion moves, keeping feedback
   labels under ``<home>/feedback``;
3. the retraining trigger (``pillars trigger``), with a fresh bearer token; its runs take those labels as
   extra training rows (``--param feedback``);
4. Alertmanager, routing alerts labelled ``pillars_action="retrain"`` to the trigger;
5. Prometheus, scraping the model server and the trigger, with the alert rules of ``pillars.serving.monitoring.alerts``;
6. the console (``pillars console``, loopback), showing the runs, the registry and the model server.

``down`` stops every process group ``up`` started. Ports and state live in ``<home>/stack/state.json``.

Every server binds loopback. Prometheus and Alertmanager ask for basic auth (user ``pillars``, a random
password made per ``up``, kept owner-only in ``<home>/stack/web.password``; their ``--web.config.file``
holds its bcrypt hash), so another user of the machine can neither read them nor post alerts that
would reach the trigger with its token. Prometheus sends alerts to Alertmanager with that password
and answers no cross-origin request (``--web.cors.origin`` matches no origin). Alertmanager 0.25 has
no CORS setting: it answers ``Access-Control-Allow-Origin: *`` to authenticated requests, but an
unauthenticated request or preflight gets 401 without CORS headers.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import yaml

from pillars.components.errors import ConfigError, PillarsError
from pillars.components.settings import Settings
from pillars.serving.monitoring.alerts import AlertSettings, rules_file


WEB_USER = "pillars"
"""The basic-auth user of the stack's Prometheus and Alertmanager."""
BCRYPT_COST = 10
"""bcrypt work factor of the web config's hash; the password is 32 random bytes, so the cost guards
nothing a guess could find, and each server caches a checked password."""
NO_CORS_ORIGIN = "a^"
"""Prometheus ``--web.cors.origin``: a regular expression no origin matches (text after its end)."""
SERVICES = ("mlflow", "model-server", "trigger", "alertmanager", "prometheus", "console")
"""What ``up`` starts, in order."""


class StackError(PillarsError, RuntimeError):
    """A part of the local stack did not start; the message names it and its log."""


@dataclasses.dataclass
class Ports:
    """Loopback ports of the stack's servers."""

    mlflow: int = 5000
    http: int = 8080
    grpc: int = 8081
    trigger: int = 9095
    alertmanager: int = 9093
    prometheus: int = 9090
    console: int = 8700


@dataclasses.dataclass
class Timing:
    """How quickly the loop reacts; :meth:`fast` is for demos and tests (seconds, not minutes)."""

    scrape: str = "15s"
    evaluation: str = "15s"
    group_wait: str = "30s"
    group_interval: str = "5m"
    repeat_interval: str = "4h"
    alerts: AlertSettings = AlertSettings()
    drift_interval_s: float = 5.0
    reload_interval_s: float = 10.0
    cooldown_s: float = 3600.0

    @classmethod
    def fast(cls) -> Timing:
        return cls(scrape="1s", evaluation="1s", group_wait="1s", group_interval="2s", repeat_interval="1h",
                   alerts=AlertSettings(drift_for="5s", latency_for="30s", errors_for="30s", down_for="10s",
                                        window="30s"),
                   drift_interval_s=1.0, reload_interval_s=1.0, cooldown_s=600.0)


def prometheus_config(ports: Ports, timing: Timing, password_file: Path) -> dict[str, Any]:
    """Prometheus scraping the model server and the trigger, alerting through Alertmanager (basic auth,
    the password read from ``password_file``)."""
    return {
        "global": {"scrape_interval": timing.scrape, "evaluation_interval": timing.evaluation},
        "rule_files": ["rules.yml"],
        "alerting": {"alertmanagers": [{
            "basic_auth": {"username": WEB_USER, "password_file": str(password_file)},
            "static_configs": [{"targets": [f"127.0.0.1:{ports.alertmanager}"]}]}]},
        "scrape_configs": [
            {"job_name": timing.alerts.server_job, "static_configs": [{"targets": [f"127.0.0.1:{ports.http}"]}]},
            {"job_name": "pillars-trigger", "static_configs": [{"targets": [f"127.0.0.1:{ports.trigger}"]}]},
        ],
    }


def write_secret(path: Path, text: str) -> Path:
    """Write ``text`` to a new file readable by its owner only: created 0600 (never world-readable, not
    even for a moment); a file left there by an earlier stack is replaced."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def web_config(password: str, cost: int = BCRYPT_COST) -> dict[str, Any]:
    """A ``--web.config.file`` for Prometheus and Alertmanager: basic auth for :data:`WEB_USER` only."""
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode()
    return {"basic_auth_users": {WEB_USER: hashed}}


def web_auth(state: dict[str, Any] | None) -> tuple[str, str] | None:
    """(user, password) for the Prometheus and Alertmanager of a stack ``up`` recorded in ``state``;
    None for a state without them (or whose password file is gone)."""
    auth = (state or {}).get("web_auth")
    if not auth:
        return None
    try:
        return auth["username"], Path(auth["password_file"]).read_text().strip()
    except OSError:
        return None


def alertmanager_config(ports: Ports, timing: Timing, token_file: Path) -> dict[str, Any]:
    """Alertmanager routing ``pillars_action="retrain"`` alerts to the trigger (bearer token from a file)."""
    return {
        "route": {"receiver": "log-only", "group_by": ["alertname", "model"], "group_wait": timing.group_wait,
                  "group_interval": timing.group_interval, "repeat_interval": timing.repeat_interval,
                  "routes": [{"matchers": ['pillars_action="retrain"'], "receiver": "pillars-trigger"}]},
        "receivers": [
            {"name": "log-only"},
            {"name": "pillars-trigger", "webhook_configs": [{
                "url": f"http://127.0.0.1:{ports.trigger}/alerts", "send_resolved": False,
                "http_config": {"authorization": {"type": "Bearer", "credentials_file": str(token_file)}}}]},
        ],
    }


def _tool(*names: str) -> str:
    for name in names:
        path = shutil.which(name) or (str(Path(sys.executable).parent / name)
                                      if (Path(sys.executable).parent / name).exists() else None)
        if path:
            return path
    raise StackError(f"{names[0]} is not installed (Debian: apt-get install prometheus prometheus-alertmanager)")


class Stack:
    """The local stack's processes and files under ``<home>/stack``."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.home = (settings or Settings()).resolved_home()
        self.dir = self.home / "stack"
        self.state_file = self.dir / "state.json"

    def state(self) -> dict[str, Any] | None:
        """What ``up`` recorded, or None when the stack is down."""
        return json.loads(self.state_file.read_text()) if self.state_file.is_file() else None

    def up(self, model: str, ports: Ports = Ports(), timing: Timing = Timing(), params: list[str] | None = None,
           server_args: list[str] | None = None, console: bool = True,
           services: tuple[str, ...] = SERVICES) -> dict[str, Any]:
        """Start the stack for registered model ``model`` (its champion is served).

        Args:
            console: also start the console (False: the loop's servers only, e.g. for tests of the loop).
            services: the servers to start, of :data:`SERVICES` (tests of a part of the stack).

        Raises:
            StackError: the stack is already up, a tool is missing, or a server did not become ready
                (everything started so far is stopped again).
        """
        if self.state() is not None:
            raise StackError(f"the stack is already up (see {self.state_file}); run `pillars down` first")
        unknown = set(services) - set(SERVICES)
        if unknown:
            raise StackError(f"unknown services {sorted(unknown)}; the stack has {', '.join(SERVICES)}")
        tools = {"prometheus": _tool("prometheus"), "alertmanager": _tool("prometheus-alertmanager", "alertmanager"),
                 "mlflow": _tool("mlflow")}
        token_file, password_file, web_file = self._write_configs(ports, timing)
        auth = (WEB_USER, password_file.read_text())
        mlflow_url = f"http://127.0.0.1:{ports.mlflow}"
        env = {"MLFLOW_TRACKING_URI": mlflow_url, "PILLARS_HOME": str(self.home)}
        state: dict[str, Any] = {"model": model, "processes": {},
                                 "web_auth": {"username": WEB_USER, "password_file": str(password_file)}, "urls": {
            "mlflow": mlflow_url, "model_http": f"http://127.0.0.1:{ports.http}", "model_grpc": f"127.0.0.1:{ports.grpc}",
            "trigger": f"http://127.0.0.1:{ports.trigger}", "alertmanager": f"http://127.0.0.1:{ports.alertmanager}",
            "prometheus": f"http://127.0.0.1:{ports.prometheus}", "console": f"http://127.0.0.1:{ports.console}"}}
        urls = state["urls"]
        plan = self._plan(model, ports, timing, tools, urls, token_file, web_file, params, server_args)
        chosen = [name for name in services if console or name != "console"]
        plan = [step for step in plan if step[0] in chosen]
        for name in {"console"} - set(chosen):
            del urls[name]
        try:
            for name, cmd, ready in plan:
                log = self.dir / "logs" / f"{name}.log"
                with open(log, "wb") as out:
                    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=self.dir,
                                            env={**os.environ, **env}, start_new_session=True)
                state["processes"][name] = proc.pid
                self.state_file.write_text(json.dumps(state, indent=2))
                wait_ready(name, proc, ready, log, auth=auth if name in ("alertmanager", "prometheus") else None)
        except BaseException:
            self.down()
            raise
        return state

    def _write_configs(self, ports: Ports, timing: Timing) -> tuple[Path, Path, Path]:
        """The stack's folder (private), its secrets and the Prometheus, Alertmanager and rules files; returns
        the trigger's token file, the web password file and the web config file."""
        (self.dir / "logs").mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o700)
        token_file = write_secret(self.dir / "trigger.token", secrets.token_urlsafe(32))
        password_file = write_secret(self.dir / "web.password", secrets.token_urlsafe(32))
        web_file = write_secret(self.dir / "web-config.yml",
                                yaml.safe_dump(web_config(password_file.read_text()), sort_keys=False))
        (self.dir / "rules.yml").write_text(rules_file(timing.alerts))
        (self.dir / "prometheus.yml").write_text(
            yaml.safe_dump(prometheus_config(ports, timing, password_file), sort_keys=False))
        (self.dir / "alertmanager.yml").write_text(
            yaml.safe_dump(alertmanager_config(ports, timing, token_file), sort_keys=False))
        return token_file, password_file, web_file

    def _plan(self, model: str, ports: Ports, timing: Timing, tools: dict[str, str], urls: dict[str, str],
              token_file: Path, web_file: Path, params: list[str] | None,
              server_args: list[str] | None) -> list[tuple[str, list[str], str]]:
        """Each server of the stack in start order: its name, command line and readiness URL."""
        mlflow_url = urls["mlflow"]
        return [
            ("mlflow", [tools["mlflow"], "server", "--host", "127.0.0.1", "--port", str(ports.mlflow),
                        "--backend-store-uri", f"sqlite:///{self.home / 'mlflow.db'}",
                        "--artifacts-destination", str(self.home / "artifacts"), "--workers", "1"],
             f"{mlflow_url}/health"),
            ("model-server", [sys.executable, "-m", "pillars.serving", "--model_uri", f"models:/{model}@champion",
                              "--model_name", model, "--http_port", str(ports.http), "--grpc_port", str(ports.grpc),
                              "--reload_interval_s", str(timing.reload_interval_s),
                              "--drift_interval_s", str(timing.drift_interval_s),
                              "--feedback_dir", str(self.home / "feedback"), *(server_args or [])],
             f"{urls['model_http']}/v2/health/ready"),
            ("trigger", [sys.executable, "-m", "pillars.pipelines.cli", "trigger", "--port", str(ports.trigger),
                         "--token-file", str(token_file), "--cooldown", str(timing.cooldown_s),
                         "--param", f"tracking_uri={mlflow_url}", "--param", f"feedback={self.home / 'feedback'}",
                         *[a for p in (params or []) for a in ("--param", p)]],
             f"{urls['trigger']}/healthz"),
            ("alertmanager", [tools["alertmanager"], f"--config.file={self.dir / 'alertmanager.yml'}",
                              f"--storage.path={self.dir / 'alertmanager-data'}", f"--web.config.file={web_file}",
                              f"--web.listen-address=127.0.0.1:{ports.alertmanager}", "--cluster.listen-address="],
             f"{urls['alertmanager']}/-/ready"),
            ("prometheus", [tools["prometheus"], f"--config.file={self.dir / 'prometheus.yml'}",
                            f"--storage.tsdb.path={self.dir / 'prometheus-data'}", f"--web.config.file={web_file}",
                            f"--web.listen-address=127.0.0.1:{ports.prometheus}",
                            f"--web.cors.origin={NO_CORS_ORIGIN}"],
             f"{urls['prometheus']}/-/ready"),
            ("console", [sys.executable, "-m", "pillars.pipelines.cli", "console", "--port", str(ports.console)],
             f"{urls['console']}/healthz"),
        ]

    def down(self) -> list[str]:
        """Stop every process group of the stack (SIGTERM, then SIGKILL); returns the names stopped."""
        state = self.state()
        if state is None:
            return []
        stopped = []
        for name, pid in reversed(list(state["processes"].items())):
            if stop_group(pid):
                stopped.append(name)
        self.state_file.unlink(missing_ok=True)
        return stopped


def wait_ready(name: str, proc: subprocess.Popen, url: str, log: Path, timeout: float = 90.0,
               auth: tuple[str, str] | None = None) -> None:
    """Wait until ``GET url`` (with basic ``auth``) answers 200; raise :class:`StackError` naming ``name``
    and its log if the process exits first or the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise StackError(f"{name} exited with {proc.returncode} (log {log}): {' | '.join(tail)}")
        try:
            if httpx.get(url, timeout=2, auth=auth).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise StackError(f"{name} not ready at {url} after {timeout:.0f}s (log {log})")


def stop_group(pgid: int, timeout: float = 15.0) -> bool:
    """SIGTERM the group, wait, SIGKILL what is left. False when nothing was running."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        _reap(pgid)
        time.sleep(0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _reap(pgid)
    return True


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_ports(text: str) -> Ports:
    """``mlflow=5001,http=8090`` style overrides of the default ports."""
    ports = Ports()
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = item.partition("=")
        if key not in {f.name for f in dataclasses.fields(Ports)} or not value.isdigit():
            raise ConfigError(f"--ports takes name=port pairs of {', '.join(f.name for f in dataclasses.fields(Ports))}; "
                              f"got {item!r}")
        setattr(ports, key, int(value))
    return ports
