"""The shape every per-model collector of the model server shares: one entry per served model, replaced on each
load or reload, read at scrape time.

A collector (:class:`prometheus_client.registry.Collector`) that subclasses :class:`PerModelCollector` keeps its
entries under one lock: :meth:`~PerModelCollector.put` registers (or, with None, stops exporting) a model's entry,
:meth:`~PerModelCollector.entry` reads one, and :meth:`~PerModelCollector.entries` is the snapshot ``collect``
iterates, taken under the lock and read outside it (a scrape never holds the lock while it formats series).
"""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

from prometheus_client.registry import Collector

Entry = TypeVar("Entry")


class PerModelCollector(Collector, Generic[Entry]):
    """One ``Entry`` per served model name; subclasses define ``collect``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, Entry] = {}

    def put(self, model: str, entry: Entry | None) -> None:
        """Export ``entry`` for ``model``, replacing the one before (None: stop exporting the model)."""
        with self._lock:
            if entry is None:
                self._entries.pop(model, None)
            else:
                self._entries[model] = entry

    def entry(self, model: str) -> Entry | None:
        with self._lock:
            return self._entries.get(model)

    def entries(self) -> list[tuple[str, Entry]]:
        """``(model, entry)`` of every model, as a snapshot."""
        with self._lock:
            return list(self._entries.items())
