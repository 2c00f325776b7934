"""Console fixtures: the console as a real process on a free loopback port, and Debian's chromium via Playwright."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.processes import ServerProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"


def artifacts_dir(tmp_path: Path) -> Path:
    """Where screenshots go: ``PILLARS_TEST_ARTIFACTS`` (e.g. ``test-artifacts/``), else the test's tmp dir."""
    base = os.environ.get("PILLARS_TEST_ARTIFACTS")
    folder = Path(base) / "console" if base else tmp_path / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@dataclass
class Console:
    """A running console process."""

    url: str
    home: Path
    process: ServerProcess


def start_console(home: Path, env: dict[str, str], args: list[str] = ()) -> Console:
    """``pillars console`` on a free loopback port, returned once ``/healthz`` answers."""
    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    process = ServerProcess([sys.executable, "-m", "pillars.pipelines.cli", "console", "--port", str(port), *args],
                            log_path=home / "console.log", env={"PILLARS_HOME": str(home), **env}, cwd=home)
    url = f"http://127.0.0.1:{port}"
    process.wait_http(f"{url}/healthz", timeout=120)
    return Console(url, home, process)


@dataclass
class BrowserWatch:
    """Every request a page made and every error it logged."""

    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def attach(self, page: Any) -> None:
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("console", lambda m: self.errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Debian chromium driven by Playwright (never ``playwright install``).

    Module scope: Playwright's sync API runs an asyncio loop in this thread while it is open, and
    ``asyncio.run`` in later tests refuses to start beside a running loop."""
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        message = "chromium is not installed (make test installs it: apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield browser
        finally:
            browser.close()
