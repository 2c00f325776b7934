"""A challenger in shadow: it sees the champion's traffic off the request path, and is judged on the same labels.

With ``--shadow_uri`` the server loads a second model (it must take the same inputs) and hands it every
answered request's inputs through a bounded queue; one background thread runs it, so a request never waits
for the shadow and a full queue drops shadow rows (counted), never requests. For each request id the shadow's
predictions are remembered next to the champion's; when a label arrives through the feedback route, both are
scored on it (:class:`pillars.serving.monitoring.feedback.FeedbackLog` writes the shadow's prediction and
whether it was right into the label's line, so a restart keeps the pairs), and
:func:`pillars.components.evaluation.shadow.decide` says promote, reject or wait from the paired outcomes
(``GET /v2/models/NAME/shadow``). ``pillars models decide-shadow NAME --server URL`` moves the registry alias
on a promote (the model server itself never writes to the registry).

Series: ``pillars_shadow_rows_total`` (rows the shadow answered), ``pillars_shadow_agreement_rows_total`` (rows
where it predicted what the champion did), ``pillars_shadow_dropped_rows_total`` (rows dropped, queue full),
labelled ``model`` and ``shadow_version``.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, Metric

from pillars.components.evaluation.shadow import ShadowDecision, decide
from pillars.components.model.predictor import Predictor
from pillars.serving.monitoring.feedback import PredictionMemory
from pillars.serving.monitoring.per_model import PerModelCollector

logger = logging.getLogger(__name__)

PREDICTION_OUTPUTS = ("class_index", "value")


def predictions_of(outputs: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """What feedback scores: the class index (classifier) or the value (regressor)."""
    for name in PREDICTION_OUTPUTS:
        if name in outputs:
            return np.asarray(outputs[name])
    return None


@dataclass(frozen=True)
class ShadowCounts:
    """A shadow runner's counters at one moment."""

    rows: int
    agreement: int
    dropped: int


class ShadowRunner:
    """Runs ``predictor`` on the champion's requests in a background thread.

    Args:
        model: the served model's name (metric label).
        version: the shadow's version.
        predictor: the shadow model, loaded.
        memory_rows: rows of shadow predictions remembered by request id.
        queue_requests: most requests waiting for the shadow (past it, dropped).
    """

    def __init__(self, model: str, version: str, predictor: Predictor, memory_rows: int,
                 queue_requests: int = 1024) -> None:
        self.model = model
        self.version = version
        self.predictor = predictor
        self.memory = PredictionMemory(memory_rows)
        self.rows = 0
        self.agreement = 0
        self.dropped = 0
        self.failed: str | None = None
        self._pending = 0
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[str, dict[str, Any], np.ndarray] | None] = queue.Queue(queue_requests)
        self._thread = threading.Thread(target=self._run, name="pillars-shadow", daemon=True)
        self._thread.start()

    def submit(self, request_id: str, inputs: dict[str, Any], champion: np.ndarray) -> None:
        """Queue one answered request for the shadow (never blocks: a full queue drops it)."""
        with self._lock:
            self._pending += 1
        try:
            self._queue.put_nowait((request_id, inputs, champion))
        except queue.Full:
            with self._lock:
                self.dropped += len(champion)
                self._pending -= 1

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                self._answer(*item)
            finally:
                with self._lock:
                    self._pending -= 1

    def _answer(self, request_id: str, inputs: dict[str, Any], champion: np.ndarray) -> None:
        try:
            predictions = predictions_of(self.predictor.predict_checked(inputs))
        except Exception as e:  # the shadow must never affect serving: log once, keep counting drops
            if self.failed is None:
                self.failed = f"{type(e).__name__}: {e}"
                logger.error("model %s: shadow version %s failed, its rows are dropped: %s", self.model,
                             self.version, self.failed)
            with self._lock:
                self.dropped += len(champion)
            return
        if predictions is None:
            return
        self.memory.remember(request_id, self.version, predictions, None)
        with self._lock:
            self.rows += len(predictions)
            self.agreement += int((predictions.reshape(-1) == champion.reshape(-1)).sum())

    def counts(self) -> ShadowCounts:
        """Rows answered, rows that agreed with the champion and rows dropped, read together."""
        with self._lock:
            return ShadowCounts(self.rows, self.agreement, self.dropped)

    def idle(self) -> bool:
        """Whether every submitted request has been answered (or dropped)."""
        with self._lock:
            return self._pending == 0

    def stop(self) -> None:
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass


def judge(pairs: list[int], min_labels: int, margin: float = 0.0) -> ShadowDecision:
    """:func:`pillars.components.evaluation.shadow.decide` on paired labelled rows counted as
    ``[both right, only the champion, only the shadow, neither]``."""
    both, champion_only, shadow_only, neither = pairs
    champion = np.repeat([True, True, False, False], pairs)
    challenger = np.repeat([True, False, True, False], [both, champion_only, shadow_only, neither])
    return decide(champion, challenger, min_labels=min_labels, max_labels=max(min_labels, 5000), margin=margin)


class ShadowStats(PerModelCollector[ShadowRunner]):
    """The shadow runners' counters, read at scrape time."""

    def register_model(self, model: str, runner: ShadowRunner | None) -> None:
        self.put(model, runner)

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "shadow_version"]
        rows = CounterMetricFamily("pillars_shadow_rows", "Rows the shadow challenger answered.", labels=labels)
        agreement = CounterMetricFamily("pillars_shadow_agreement_rows",
                                        "Rows where the shadow predicted what the champion served.", labels=labels)
        dropped = CounterMetricFamily("pillars_shadow_dropped_rows",
                                      "Rows the shadow did not answer (its queue was full, or it failed).",
                                      labels=labels)
        for model, runner in self.entries():
            counts = runner.counts()
            rows.add_metric([model, runner.version], counts.rows)
            agreement.add_metric([model, runner.version], counts.agreement)
            dropped.add_metric([model, runner.version], counts.dropped)
        yield from (rows, agreement, dropped)


SHADOW = ShadowStats()
REGISTRY.register(SHADOW)
