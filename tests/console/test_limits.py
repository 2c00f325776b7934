"""The console's limits on a real console process: chunked bodies cannot grow its memory, wrong tokens
are rate-limited per address."""

from __future__ import annotations

import select
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import mlflow

from tests.console.conftest import start_console

TOKEN = "console-token-for-the-limit-tests"
OFFERED = 100 * 1024 * 1024  # each request offers 100 MB, chunked (no Content-Length)
CHUNK = b"x" * 65536


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def chunked_post(url: str, path: str) -> tuple[int, int]:
    """POST ``OFFERED`` bytes as chunks until the server answers or closes; (status, bytes sent)."""
    parts = urlsplit(url)
    sent = 0
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nTransfer-Encoding: chunked\r\n"
                     "Content-Type: application/x-www-form-urlencoded\r\n\r\n".encode())
        sock.sendall(b"6\r\ntoken=\r\n")
        frame = f"{len(CHUNK):x}\r\n".encode() + CHUNK + b"\r\n"
        while sent < OFFERED:
            readable, writable, _ = select.select([sock], [sock], [], 30)
            if readable:
                break  # the answer came: stop offering
            try:
                sent += sock.send(frame) if writable else 0
            except (BrokenPipeError, ConnectionResetError):
                break
        answer = b""
        try:
            while b"\r\n" not in answer and (data := sock.recv(4096)):
                answer += data
        except ConnectionResetError:
            pass
    return int(answer.split()[1]) if answer.startswith(b"HTTP/1.1") else 0, sent


def test_chunked_posts_cannot_grow_the_console_and_wrong_tokens_get_429(local_store, tmp_path):
    mlflow.search_experiments()  # the embedded store's tables, as a first command would make them
    (tmp_path / "token").write_text(TOKEN)
    console = start_console(tmp_path / ".pillars", {}, ["--token-file", str(tmp_path / "token")])
    try:
        pid = console.process.proc.pid
        assert chunked_post(console.url, "/login")[0] == 413  # warm: the code path is loaded
        before = rss_bytes(pid)
        results = [chunked_post(console.url, path) for path in ("/login", "/login", "/login", "/pipelines/training")]
        growth = rss_bytes(pid) - before
        print(f"chunked POSTs (status, bytes the client got to send): {results}; "
              f"console RSS {before / 2**20:.1f} MiB -> growth {growth / 2**20:.1f} MiB")
        assert [status for status, _ in results[:3]] == [413] * 3
        assert results[3][0] == 401  # no token: refused before the body is read
        assert growth < 16 * 2**20, f"the console grew by {growth / 2**20:.0f} MiB"
        assert httpx.get(f"{console.url}/healthz").text == "ok"

        statuses = []
        started = time.monotonic()
        with httpx.Client(base_url=console.url) as client:
            for _ in range(300):
                statuses.append(client.get("/models", headers={"Authorization": "Bearer wrong-token-guess"}).status_code)
            limited = client.get("/models", headers={"Authorization": f"Bearer {TOKEN}"})
        seconds = time.monotonic() - started
        print(f"300 wrong bearer tokens in {seconds:.2f} s: {statuses.count(401)} x 401, {statuses.count(429)} x 429")
        assert statuses[:5] == [401] * 5 and set(statuses[5:]) == {429}
        assert limited.status_code == 429 and 1 <= int(limited.headers["retry-after"]) <= 60
    finally:
        console.process.stop()
