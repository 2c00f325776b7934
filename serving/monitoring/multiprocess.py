"""Metrics of a server with several worker processes (``--workers N``), merged on ``/metrics``.

With ``PROMETHEUS_MULTIPROC_DIR`` set (by :mod:`pillars.serving.workers`, before any worker imports
prometheus-client) every counter and histogram of every worker (ours and KServe's) is written to that folder
and a scrape, whichever worker answers it, reads them all: request counts and latencies are sums over the
workers. Without it (one process), ``/metrics`` is the default registry, as before.

Drift is computed per worker: each worker's window holds the rows that worker served (a uniform sample of
the traffic, since connections are spread over the workers). Its series (:class:`DriftStats`) are copied
every second into multiprocess gauges labelled with the worker's ``pid`` (mode ``liveall``: a dead
worker's series go away), so every scrape shows every live worker's drift; the alert takes the ``max``
over them (``max by (namespace, model, version) (pillars_drift_share)``). ``pillars_input_out_of_range_total``
is a counter summed over the workers. A series that a worker stops exporting (the version before a hot
reload) is set to NaN, which no alert threshold matches.
"""

from __future__ import annotations

import math
import os
import threading
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, multiprocess
from prometheus_client.registry import Collector

from pillars.serving.monitoring.metrics import DRIFT

MIRROR_INTERVAL_S = 1.0
"""Seconds between two copies of a worker's drift series into the shared folder."""


def multiprocess_dir() -> str | None:
    """The shared metrics folder when this process is one of several workers, else None."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def scrape_registry() -> Collector:
    """What ``/metrics`` serves: every worker's metrics merged, or this process's registry."""
    folder = multiprocess_dir()
    if folder is None:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=folder)
    return registry


def mark_worker_dead(pid: int) -> None:
    """Drop a dead worker's live gauges (its counters keep counting in the sums)."""
    multiprocess.mark_process_dead(pid)


class DriftMirror:
    """Copies this worker's :data:`~pillars.serving.monitoring.metrics.DRIFT` series into multiprocess
    metrics every :data:`MIRROR_INTERVAL_S` seconds (a daemon thread)."""

    def __init__(self, source: Collector = DRIFT) -> None:
        self._source = source
        self._gauges: dict[str, Gauge] = {}
        self._counters: dict[str, Counter] = {}
        self._counted: dict[tuple[str, tuple[str, ...]], float] = {}
        self._exported: set[tuple[str, tuple[str, ...]]] = set()
        self._stop = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._loop, name="pillars-drift-mirror", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(MIRROR_INTERVAL_S):
            self.copy()

    def copy(self) -> None:
        """One copy of every drift series (gauges set, counters advanced by what they grew)."""
        exported: set[tuple[str, tuple[str, ...]]] = set()
        for family in self._source.collect():
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                labels = tuple(sample.labels.values())
                if family.type == "counter":
                    self._count(family, labels, sample.value, sample.labels)
                    continue
                self._gauge(family, sample.labels).labels(*labels).set(sample.value)
                exported.add((family.name, labels))
        for name, labels in self._exported - exported:
            self._gauges[name].labels(*labels).set(math.nan)
        self._exported = exported

    def _gauge(self, family: Any, labels: dict[str, str]) -> Gauge:
        gauge = self._gauges.get(family.name)
        if gauge is None:
            gauge = self._gauges[family.name] = Gauge(family.name, family.documentation, list(labels),
                                                      registry=None, multiprocess_mode="liveall")
        return gauge

    def _count(self, family: Any, labels: tuple[str, ...], value: float, label_names: dict[str, str]) -> None:
        counter = self._counters.get(family.name)
        if counter is None:
            counter = self._counters[family.name] = Counter(family.name, family.documentation, list(label_names),
                                                            registry=None)
        key = (family.name, labels)
        before = self._counted.get(key, 0.0)
        grown = value - before if value >= before else value  # a new monitor (hot reload) starts at 0
        if grown > 0:
            counter.labels(*labels).inc(grown)
        self._counted[key] = value
