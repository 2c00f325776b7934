"""Adaptive micro-batching: concurrent requests merged into one forward pass.

Requests put their (already validated) inputs on an asyncio queue: one array, or named arrays (one per
model input) with the same number of rows. One collector task takes what is queued, up to
``max_batch_size`` rows, and runs one forward pass in a single worker thread, so the event loop keeps
accepting requests meanwhile; results are split back by row ranges.

Only requests that can be concatenated are merged: the same inputs given, each with the same
per-instance shape (a ``-1`` dimension of the same length) and kind of dtype. A request that cannot
join the batch being collected waits, in order, for a batch of its own kind. When a merged pass fails
with one of the ``isolate`` errors (bad input found while encoding, such as an unknown id), its
requests are run again one by one, so only the request at fault gets the error.

Bounded: rows submitted and not yet answered are capped (``max_queued_rows``); past that, ``submit``
raises :class:`pillars.serving.errors.Overloaded` (503 / RESOURCE_EXHAUSTED) at once instead of queueing
work the server cannot finish in time. With ``max_queue_wait_ms``, admission also follows the wait itself:
while the oldest request of the latest forward pass waited longer than that for it, new requests are
refused the same way (before latency explodes, whatever the rows); the wait is measured again with every
pass and forgotten once nothing is pending.

Adaptive: while the previous forward pass served one request, a new batch starts at once (no added
latency for a lone client). Under load, the collector waits for more rows only while the observed
inter-arrival time says another request is due: it keeps a moving average of the time between two
submitted requests, and once the queue is empty it waits at most twice that average for the next one,
never past ``max_latency_ms`` after the batch started, and not at all when the average gap is longer than
the time left (the next request would come too late to join). So a burst is closed as soon as it
stops arriving, instead of idling until the deadline; requests that arrive during a forward pass are
merged into the next one anyway.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pillars.serving.errors import Overloaded

logger = logging.getLogger(__name__)

GAP_SMOOTHING = 0.3
"""Weight of the newest inter-arrival time in the moving average (the rest: the average so far)."""
GAP_PATIENCE = 2.0
"""With the queue empty, the collector waits at most this many average gaps for the next request."""

Outputs = dict[str, np.ndarray]
Inputs = np.ndarray | Mapping[str, np.ndarray]
ForwardFn = Callable[[Any], Outputs]
BatchHook = Callable[[int, Outputs, int, float], None]
"""Called with (rows, outputs, requests merged, seconds) after each forward pass."""


def rows_of(inputs: Inputs) -> int:
    """Rows (instances) of one request's inputs."""
    return len(inputs) if isinstance(inputs, np.ndarray) else len(next(iter(inputs.values())))


def merge_key(inputs: Inputs) -> tuple[Any, ...]:
    """Requests with equal keys can be concatenated row-wise: the same names, instance shapes, dtype kinds."""
    if isinstance(inputs, np.ndarray):
        return (("", inputs.shape[1:], inputs.dtype.kind),)
    return tuple(sorted((name, a.shape[1:], a.dtype.kind) for name, a in inputs.items()))


def concatenate(parts: list[Inputs]) -> Inputs:
    """One batch of several requests' inputs (all with the same :func:`merge_key`)."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    if isinstance(first, np.ndarray):
        return np.concatenate([np.asarray(p) for p in parts])
    return {name: np.concatenate([p[name] for p in parts if not isinstance(p, np.ndarray)]) for name in first}


@dataclass
class _Item:
    inputs: Inputs
    future: asyncio.Future[Outputs] = field(repr=False)
    rows: int = 0
    key: tuple[Any, ...] = ()
    queued_at: float = 0.0


class Batcher:
    """Merges concurrent ``submit`` calls into batched calls of ``forward``.

    Args:
        forward: runs the model on a batch (an ``[N, ...]`` array, or named ``[N, ...]`` arrays) and returns
            arrays whose first axis is ``N``.
        max_batch_size: most rows per forward pass (a single larger request still runs, alone).
        max_latency_ms: most time a batch waits for more rows once the server is under load.
        on_batch: called in the worker thread after each pass with (inputs, outputs, requests, seconds).
        max_queued_rows: most rows waiting or running at once; more are refused (a lone request of any
            size is always taken).
        isolate: errors after which the requests of a merged pass are run again one by one.
        max_queue_wait_ms: refuse new requests while the latest pass's oldest request waited longer than
            this for it (0: no limit but ``max_queued_rows``).
    """

    def __init__(self, forward: ForwardFn, max_batch_size: int = 64, max_latency_ms: float = 2.0,
                 on_batch: BatchHook | None = None, max_queued_rows: int = 4096,
                 isolate: tuple[type[BaseException], ...] = (), max_queue_wait_ms: float = 0.0) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if max_queued_rows < 1:
            raise ValueError(f"max_queued_rows must be at least 1, got {max_queued_rows}")
        if max_latency_ms < 0:
            raise ValueError(f"max_latency_ms must be >= 0, got {max_latency_ms}")
        if max_queue_wait_ms < 0:
            raise ValueError(f"max_queue_wait_ms must be >= 0, got {max_queue_wait_ms}")
        self.max_queue_wait = max_queue_wait_ms / 1000.0
        self._queue_wait = 0.0
        """How long the oldest request of the latest pass waited for it (seconds)."""
        self.forward = forward
        self.max_batch_size = max_batch_size
        self.max_latency = max_latency_ms / 1000.0
        self.on_batch = on_batch
        self.max_queued_rows = max_queued_rows
        self.isolate = isolate
        self._pending_rows = 0
        self._closed = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pillars-forward")
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task[None] | None = None
        self._waiting: deque[_Item] = deque()
        """Taken from the queue but not yet run: the next batch's first item, or items of another kind."""
        self._last_requests = 1
        self._last_arrival: float | None = None
        self._gap = self.max_latency
        """Moving average of the time between two submitted requests (each gap capped at ``max_latency``)."""

    @property
    def pending_rows(self) -> int:
        """Rows submitted and not answered yet."""
        return self._pending_rows

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran: nothing is answered any more."""
        return self._closed

    async def submit(self, inputs: Inputs) -> Outputs:
        """Predict ``inputs`` as part of the next batch; returns this request's slice of the outputs.

        Raises:
            Overloaded: ``max_queued_rows`` rows are already waiting or running.
        """
        rows = rows_of(inputs)
        if self._pending_rows and self._pending_rows + rows > self.max_queued_rows:
            raise Overloaded(f"the server is busy: {self._pending_rows} rows are queued (limit "
                             f"{self.max_queued_rows}, --max_queued_rows); retry later")
        if self.max_queue_wait and self._pending_rows and self._queue_wait > self.max_queue_wait:
            raise Overloaded(f"the server is busy: requests wait {1000 * self._queue_wait:.0f} ms for a forward "
                             f"pass (limit {1000 * self.max_queue_wait:g} ms, --max_queue_wait_ms); retry later")
        now = time.monotonic()
        if self._last_arrival is not None:
            gap = min(now - self._last_arrival, self.max_latency)
            self._gap += GAP_SMOOTHING * (gap - self._gap)
        self._last_arrival = now
        if self._task is None or self._task.done():
            self._queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="pillars-batcher")
        future: asyncio.Future[Outputs] = asyncio.get_running_loop().create_future()
        assert self._queue is not None
        self._pending_rows += rows
        try:
            self._queue.put_nowait(_Item(inputs, future, rows, merge_key(inputs), now))
            return await future
        finally:
            self._pending_rows -= rows
            if not self._pending_rows:
                self._queue_wait = 0.0  # idle: the next request is admitted

    def run_sync(self, inputs: Inputs) -> Outputs:
        """One unbatched forward pass in the caller's thread (warm-up, in-process benchmarks)."""
        return self.forward(inputs)

    def close(self) -> None:
        """Stop the collector and the worker thread."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _collect(self) -> list[_Item]:
        assert self._queue is not None
        first = self._waiting.popleft() if self._waiting else await self._queue.get()
        items, rows = [first], first.rows
        held: deque[_Item] = deque()  # stays waiting, in order of arrival
        while self._waiting and rows < self.max_batch_size:  # those that waited come first
            item = self._waiting.popleft()
            if item.key == first.key and rows + item.rows <= self.max_batch_size:
                items.append(item)
                rows += item.rows
            else:
                held.append(item)
        held.extend(self._waiting)
        deadline = time.monotonic() + self.max_latency
        while rows < self.max_batch_size:
            if not self._queue.empty():
                item = self._queue.get_nowait()
            elif self._last_requests > 1 and self.max_latency > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._gap > remaining:  # the next request is not due in time
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), min(remaining, GAP_PATIENCE * self._gap))
                except TimeoutError:
                    break
            else:
                break
            if item.key != first.key:
                held.append(item)  # another kind of request: it waits for a batch of its own
                continue
            if rows + item.rows > self.max_batch_size:
                held.append(item)  # first of the next batch
                break
            items.append(item)
            rows += item.rows
        self._waiting = held
        return items

    async def _run(self) -> None:
        while True:
            items = await self._collect()
            items = [item for item in items if not item.future.done()]  # cancelled by a gone client
            if not items:
                continue
            self._last_requests = len(items)
            self._queue_wait = time.monotonic() - min(item.queued_at for item in items)
            try:
                await self._answer(items)
            except self.isolate:  # bad input in a merged pass: run each request alone
                for item in items:
                    await self._answer([item])

    async def _answer(self, items: list[_Item]) -> None:
        """Run ``items`` as one pass and answer each; an ``isolate`` error of a merged pass is re-raised."""
        loop = asyncio.get_running_loop()
        batch = concatenate([i.inputs for i in items])
        try:
            outputs = await loop.run_in_executor(self._executor, self._forward, batch, len(items))
        except Exception as e:  # delivered to every waiting request, which maps it to a status
            if len(items) > 1 and isinstance(e, self.isolate):
                raise
            for item in items:
                if not item.future.done():
                    item.future.set_exception(e)
            return
        start = 0
        for item in items:
            stop = start + item.rows
            if not item.future.done():
                item.future.set_result({k: v[start:stop] for k, v in outputs.items()})
            start = stop

    def _forward(self, batch: Inputs, n_requests: int) -> Outputs:
        started = time.perf_counter()
        outputs = self.forward(batch)
        seconds = time.perf_counter() - started
        rows = rows_of(batch)
        if self.on_batch is not None:
            self.on_batch(rows, outputs, n_requests, seconds)
        logger.debug("batch rows=%d requests=%d seconds=%.6f", rows, n_requests, seconds)
        return outputs
