"""Starting and stopping real server processes in tests: free ports, readiness, process-group kill."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from pillars.pipelines.local.stack import free_port  # noqa: F401 (re-exported for the tests)


class ServerProcess:
    """A subprocess in its own process group, stopped with every child it started."""

    def __init__(self, cmd: Sequence[str], log_path: Path, env: dict[str, str] | None = None,
                 cwd: str | Path | None = None, inherit_env: bool = True) -> None:
        self.cmd = list(cmd)
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            self.cmd, stdout=self._log, stderr=subprocess.STDOUT,
            env={**(os.environ if inherit_env else {}), **(env or {})},
            cwd=cwd, start_new_session=True,
        )

    @property
    def pgid(self) -> int:
        return self.proc.pid  # start_new_session makes the child its group's leader

    def log(self) -> str:
        """Everything the process has printed so far."""
        return self.log_path.read_text(errors="replace")

    def wait_log(self, needle: str, count: int, timeout: float = 10.0) -> str:
        """The log once ``needle`` occurs ``count`` times in it. A server writes a request's log line after it
        answers, so a test that reads the log right after a response can be a line early."""
        deadline = time.monotonic() + timeout
        while (log := self.log()).count(needle) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return log

    def wait_http(self, url: str, timeout: float = 60.0, status: int = 200) -> None:
        """Wait until ``GET url`` answers ``status``; fail with the process log if it dies or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.cmd[0]} exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                if httpx.get(url, timeout=2.0).status_code == status:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"{url} not ready after {timeout}s:\n{self.log()[-4000:]}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the whole process group, then SIGKILL what is left; assert nothing survives."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and group_alive(self.pgid):
                time.sleep(0.1)
                self.proc.poll()
            if not group_alive(self.pgid):
                break
        self.proc.wait(timeout=timeout)
        self._log.close()
        assert not group_alive(self.pgid), f"processes of group {self.pgid} survived"


def group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` is still running (zombies excluded)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False
