"""A challenger in shadow: it sees the champion's traffic off the request path, and is judged on the same labels.

With ``--shadow_uri`` the server loads a second model (it must take the same inputs) and hands it every
answered request's inputs through a bounded queue; one background thread runs it, so a request never waits
for the shadow and a full queue drops shadow rows (counted), never requests. The thread answers what waits in
the queue in one forward pass (at most :data:`MAX_BATCH_REQUESTS` requests, :data:`MAX_BATCH_ROWS` rows;
inputs that do not stack go one request at a time). For each request id the shadow's
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
MAX_BATCH_REQUESTS = 64
MAX_BATCH_ROWS = 1024
"""The shadow answers the requests waiting in its queue together, up to these many requests and rows (the
server's own ``--max_rows`` default): one forward pass instead of one per request."""


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
        stopping = False
        while not stopping and (item := self._queue.get()) is not None:
            items = [item]  # what waits is answered in one forward pass, as the champion's micro-batches are
            rows = len(item[2])
            while len(items) < MAX_BATCH_REQUESTS and rows < MAX_BATCH_ROWS:
                try:
                    following = self._queue.get_nowait()
                except queue.Empty:
                    break
                if following is None:
                    stopping = True
                    break
                items.append(following)
                rows += len(following[2])
            try:
                self._answer_batch(items)
            finally:
                with self._lock:
                    self._pending -= len(items)

    def _answer_batch(self, items: list[tuple[str, dict[str, Any], np.ndarray]]) -> None:
        """One forward pass over the requests' rows when their inputs stack (same names, same row shapes), else
        one per request; each request's predictions are remembered under its id."""
        if len(items) > 1:
            try:
                merged = {name: np.concatenate([inputs[name] for _, inputs, _ in items])
                          for name in items[0][1]}
            except (ValueError, TypeError, KeyError):  # variable-length or non-array inputs: one pass each
                merged = None
            predictions = None
            if merged is not None:
                try:
                    predictions = predictions_of(self.predictor.predict_checked(merged))
                except Exception:  # one request's rows fail the pass: answered one by one below, failures counted
                    predictions = None
            if predictions is not None and len(predictions) == sum(len(champion) for _, _, champion in items):
                bounds = np.cumsum([len(champion) for _, _, champion in items])[:-1]
                for (request_id, _, champion), part in zip(items, np.split(predictions, bounds), strict=True):
                    self._record(request_id, part, champion)
                return
        for request_id, inputs, champion in items:
            predictions = self._predict(inputs, len(champion))
            if predictions is not None:
                self._record(request_id, predictions, champion)

    def _predict(self, inputs: dict[str, Any], rows: int) -> np.ndarray | None:
        try:
            return predictions_of(self.predictor.predict_checked(inputs))
        except Exception as e:  # the shadow must never affect serving: log once, keep counting drops
            if self.failed is None:
                self.failed = f"{type(e).__name__}: {e}"
                logger.error("model %s: shadow version %s failed, its rows are dropped: %s", self.model,
                             self.version, self.failed)
            with self._lock:
                self.dropped += rows
            return None

    def _record(self, request_id: str, predictions: np.ndarray, champion: np.ndarray) -> None:
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
