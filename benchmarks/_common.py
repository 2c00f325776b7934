"""What the benchmarks share: the closed-loop load driver, writing results as JSON, and a synthetic table.

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


def write_table(folder: Path, rows: int, features: int, seed: int, chunk: int = 250_000,
                missing_share: float = 0.0) -> int:
    """A synthetic classification table (``x0..``, ``label``) as Parquet files of ``chunk`` rows, so memory stays
    one chunk; ``missing_share`` of column ``x1`` is NaN. Returns the bytes written."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=features)
    written = 0
    for part, start in enumerate(range(0, rows, chunk)):
        n = min(chunk, rows - start)
        x = rng.normal(size=(n, features)).astype(np.float32)
        y = (x @ weights + rng.normal(0, 1, size=n) > 0).astype(np.int64)
        if missing_share:
            x[rng.random(n) < missing_share, 1] = np.nan
        columns = {f"x{i}": x[:, i] for i in range(features)} | {"label": y}
        path = folder / f"part-{part:05d}.parquet"
        pq.write_table(pa.table(columns), path)
        written += path.stat().st_size
    return written
