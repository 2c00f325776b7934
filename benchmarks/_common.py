"""What the benchmarks share: the closed-loop load driver, and writing results as JSON.

A benchmark runs as a script (``python benchmarks/NAME.py``), so this folder is first on ``sys.path`` and
``from _common import drive`` finds this module.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any


async def drive(send: Callable[[], Awaitable[None]], concurrency: int, requests: int, seconds: float) -> dict:
    """Run ``send`` from ``concurrency`` workers until ``requests`` are done or ``seconds`` pass."""
    for _ in range(min(50, requests)):
        await send()
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    remaining = requests

    async def worker() -> None:
        nonlocal remaining, errors
        while remaining > 0 and time.perf_counter() < deadline:
            remaining -= 1
            started = time.perf_counter()
            try:
                await send()
            except Exception:  # counted, not hidden: a benchmark with errors is reported as such
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {"concurrency": concurrency, "requests": len(latencies), "errors": errors,
            "rps": len(latencies) / elapsed,
            "p50_ms": 1000 * latencies[len(latencies) // 2],
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]}


def write_results(results: Any, path: Path | None, indent: int = 1) -> None:
    """Write ``results`` as JSON to ``path`` (the benchmark's ``--json``/``--out``); nothing when it is None."""
    if path is not None:
        path.write_text(json.dumps(results, indent=indent))
