"""Adaptive micro-batching: concurrent requests merged into one forward pass.

Requests put their (already validated) rows on an asyncio queue. One collector task takes what is
queued, up to ``max_batch_size`` rows, and runs one forward pass in a single worker thread, so the
event loop keeps accepting requests meanwhile; results are split back by row ranges.

Bounded: rows submitted and not yet answered are capped (``max_queued_rows``); past that, ``submit``
raises :class:`pillars.serving.errors.Overloaded` (503 / RESOURCE_EXHAUSTED) at once instead of queueing
work the server cannot finish in time.

Adaptive: while the previous forward pass served one request, a new batch starts at once (no added
latency for a lone client). Under load, the collector waits up to ``max_latency_ms`` for more rows,
and requests that arrive during a forward pass are merged into the next one anyway.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from pillars.serving.errors import Overloaded

logger = logging.getLogger("pillars.serving")

Outputs = dict[str, np.ndarray]
ForwardFn = Callable[[np.ndarray], Outputs]
BatchHook = Callable[[np.ndarray, Outputs, int, float], None]


@dataclass
class _Item:
    rows: np.ndarray
    future: asyncio.Future[Outputs] = field(repr=False)


class Batcher:
    """Merges concurrent ``submit`` calls into batched calls of ``forward``.

    Args:
        forward: runs the model on a ``[N, ...]`` batch and returns arrays whose first axis is ``N``.
        max_batch_size: most rows per forward pass (a single larger request still runs, alone).
        max_latency_ms: most time a batch waits for more rows once the server is under load.
        on_batch: called in the worker thread after each pass with (inputs, outputs, requests, seconds).
        max_queued_rows: most rows waiting or running at once; more are refused (a lone request of any
            size is always taken).
    """

    def __init__(self, forward: ForwardFn, max_batch_size: int = 64, max_latency_ms: float = 2.0,
                 on_batch: BatchHook | None = None, max_queued_rows: int = 4096) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if max_queued_rows < 1:
            raise ValueError(f"max_queued_rows must be at least 1, got {max_queued_rows}")
        if max_latency_ms < 0:
            raise ValueError(f"max_latency_ms must be >= 0, got {max_latency_ms}")
        self.forward = forward
        self.max_batch_size = max_batch_size
        self.max_latency = max_latency_ms / 1000.0
        self.on_batch = on_batch
        self.max_queued_rows = max_queued_rows
        self._pending_rows = 0
        self._closed = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pillars-forward")
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task[None] | None = None
        self._carry: _Item | None = None
        self._last_requests = 1

    @property
    def pending_rows(self) -> int:
        """Rows submitted and not answered yet."""
        return self._pending_rows

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran: nothing is answered any more."""
        return self._closed

    async def submit(self, rows: np.ndarray) -> Outputs:
        """Predict ``rows`` as part of the next batch; returns this request's slice of the outputs.

        Raises:
            Overloaded: ``max_queued_rows`` rows are already waiting or running.
        """
        if self._pending_rows and self._pending_rows + len(rows) > self.max_queued_rows:
            raise Overloaded(f"the server is busy: {self._pending_rows} rows are queued (limit "
                             f"{self.max_queued_rows}, --max_queued_rows); retry later")
        if self._task is None or self._task.done():
            self._queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="pillars-batcher")
        future: asyncio.Future[Outputs] = asyncio.get_running_loop().create_future()
        assert self._queue is not None
        self._pending_rows += len(rows)
        try:
            self._queue.put_nowait(_Item(rows, future))
            return await future
        finally:
            self._pending_rows -= len(rows)

    def run_sync(self, rows: np.ndarray) -> Outputs:
        """One unbatched forward pass in the caller's thread (warm-up, in-process benchmarks)."""
        return self.forward(rows)

    def close(self) -> None:
        """Stop the collector and the worker thread."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _collect(self) -> list[_Item]:
        assert self._queue is not None
        first = self._carry or await self._queue.get()
        self._carry = None
        items, rows = [first], len(first.rows)
        deadline = time.monotonic() + self.max_latency
        while rows < self.max_batch_size:
            if not self._queue.empty():
                item = self._queue.get_nowait()
            elif self._last_requests > 1 and self.max_latency > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            else:
                break
            if rows + len(item.rows) > self.max_batch_size:
                self._carry = item  # first of the next batch
                break
            items.append(item)
            rows += len(item.rows)
        return items

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self._collect()
            items = [item for item in items if not item.future.done()]  # cancelled by a gone client
            if not items:
                continue
            self._last_requests = len(items)
            batch = items[0].rows if len(items) == 1 else np.concatenate([i.rows for i in items])
            try:
                outputs = await loop.run_in_executor(self._executor, self._forward, batch, len(items))
            except Exception as e:  # delivered to every waiting request, which maps it to a status
                for item in items:
                    if not item.future.done():
                        item.future.set_exception(e)
                continue
            start = 0
            for item in items:
                stop = start + len(item.rows)
                if not item.future.done():
                    item.future.set_result({k: v[start:stop] for k, v in outputs.items()})
                start = stop

    def _forward(self, batch: np.ndarray, n_requests: int) -> Outputs:
        started = time.perf_counter()
        outputs = self.forward(batch)
        seconds = time.perf_counter() - started
        if self.on_batch is not None:
            self.on_batch(batch, outputs, n_requests, seconds)
        logger.debug("batch rows=%d requests=%d seconds=%.6f", len(batch), n_requests, seconds)
        return outputs
