"""Ground truth: labels sent back for served predictions, joined by request id, stored durably, scored per version.

Every response carries a request id (the V2 ``id``, echoed or generated; V1 answers ``"id"`` beside its
predictions). :class:`PredictionMemory` remembers, for the last ``capacity`` rows, each request id's served
version, predictions and (for inputs of at most :data:`MAX_KEPT_VALUES` values per row) its inputs. A
feedback batch (``POST /v2/models/NAME/feedback``, :mod:`pillars.serving.protocol.feedback`) gives labels by
id; :meth:`FeedbackLog.record`:

- checks the whole batch first (ids are strings; a label is a class name or class index for a classifier, a
  number for a regressor; a request of N rows takes a list of N labels) and refuses it whole, naming the
  first bad item, so nothing is half written;
- counts an id already labelled (before, or earlier in the batch) once: later labels for it are dropped;
- scores a label whose id the memory still holds against the prediction served for it (per version:
  rows, correct rows, squared error); a label for an id the server no longer remembers (evicted, or served
  before a restart) is kept for retraining but not scored;
- stores one JSON line per label before answering, so an acknowledged label survives a crash: appended and
  fsynced to ``<feedback_dir>/<model>.jsonl``, or, with ``--feedback_dir s3://bucket/prefix``, as one new
  object per batch under ``prefix/<model>/`` (:mod:`pillars.components.data.feedback` has both layouts). At
  start the store is read back: the ids seen and the per-version totals are restored, so a restart loses no
  label and the realised metric continues.

Each line: ``{"id", "model", "version" (null when not remembered), "scored", "rows", "labels" [per row],
"predictions" [per row, or null], "correct" (classifier, scored only), "squared_error" (regressor, scored
only), "inputs" ({name: rows} or null), "received" (unix seconds)}`` — what
:func:`pillars.components.data.feedback.feedback_examples` reads as extra training rows.

The store is bounded: at most ``max_labels`` labels (refused past that, 413 naming the cap) and each batch
at most ``max_batch`` items. Realised metrics are counters so Prometheus divides them
(``pillars_feedback_correct_rows_total / pillars_feedback_scored_rows_total`` is the realised accuracy).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, Metric

from pillars.components.data.feedback import FeedbackStore, FeedbackStoreError, feedback_store
from pillars.serving.errors import BadFeedback, FeedbackNotStored, TooMuchFeedback
from pillars.serving.monitoring.per_model import PerModelCollector

logger = logging.getLogger(__name__)

MAX_KEPT_VALUES = 4096
"""Inputs with more values per row than this (audio, large images) are not remembered: their labels are
scored, but kept without inputs."""
MAX_ID_LENGTH = 256
SCORED_KINDS = ("classification", "regression")
"""Kinds whose labels are scored (accuracy; squared error). Other kinds' labels are kept, not scored."""


@dataclass(frozen=True)
class Remembered:
    """What was served for one request id."""

    version: str
    predictions: np.ndarray
    """Per row: the class index (classifier) or the value (regressor)."""
    inputs: dict[str, np.ndarray] | None


class PredictionMemory:
    """The last ``capacity`` rows' predictions by request id (oldest requests forgotten first)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, Remembered] = OrderedDict()
        self._rows = 0
        self._lock = threading.Lock()

    def remember(self, request_id: str, version: str, predictions: np.ndarray,
                 inputs: Mapping[str, Any] | None) -> None:
        kept = None
        if inputs is not None and all(isinstance(v, np.ndarray) and v[:1].size <= MAX_KEPT_VALUES
                                      for v in inputs.values()):
            kept = dict(inputs)
        item = Remembered(version, predictions, kept)
        with self._lock:
            old = self._items.pop(request_id, None)
            if old is not None:
                self._rows -= len(old.predictions)
            self._items[request_id] = item
            self._rows += len(predictions)
            while self._rows > self.capacity and len(self._items) > 1:
                _, evicted = self._items.popitem(last=False)
                self._rows -= len(evicted.predictions)

    def get(self, request_id: str) -> Remembered | None:
        with self._lock:
            return self._items.get(request_id)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


@dataclass
class Totals:
    """Scored rows of one version: realised accuracy is ``correct / rows``, RMSE ``sqrt(squared_error / rows)``."""

    rows: int = 0
    correct: int = 0
    squared_error: float = 0.0


@dataclass
class Outcome:
    """What one feedback batch did."""

    scored: int = 0
    """Labels joined with a remembered prediction and scored."""
    unscored: int = 0
    """Labels kept, whose id the server does not remember (or whose kind is not scored)."""
    duplicates: int = 0
    """Labels for ids already labelled: dropped."""
    ids: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, int]:
        return {"scored": self.scored, "unscored": self.unscored, "duplicates": self.duplicates}


class FeedbackLog:
    """The durable labels of one served model and its realised metric per version.

    Args:
        model: the served model's name.
        store: where the labels are kept: a :class:`FeedbackStore`, or a location :func:`feedback_store` reads
            (``--feedback_dir``: a folder, ``s3://bucket/prefix``, or a ``.jsonl`` file, created with its
            folder on the first label).
        kind: the task's kind (``classification`` and ``regression`` are scored).
        classes: a classifier's class names (labels may be given by name or index).
        max_labels: most labels the file may hold.
        max_batch: most items one batch may carry.

    Raises:
        FeedbackStoreError: the store exists but cannot be read.
    """

    def __init__(self, model: str, store: FeedbackStore | Path | str, kind: str, classes: Sequence[str] | None,
                 max_labels: int, max_batch: int) -> None:
        self.model = model
        self.store = store if isinstance(store, FeedbackStore) else feedback_store(store, model)
        self.kind = kind
        self.classes = list(classes or [])
        self.max_labels = max_labels
        self.max_batch = max_batch
        self.totals: dict[str, Totals] = {}
        self.outcomes = {"scored": 0, "unscored": 0, "duplicate": 0}
        self.shadow_pairs: dict[str, list[int]] = {}
        """Per shadow version, paired labelled rows: [both right, only the champion, only the shadow, neither]."""
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._load()

    def _load(self) -> None:
        for where, number, line in self.store.lines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                logger.warning("%s: ignoring unreadable line %d", where, number)
                continue
            if record["id"] in self._seen:  # two replicas labelled it: counted once
                continue
            self._seen.add(record["id"])
            self._count(record)
        if self._seen:
            logger.info("model %s: %d feedback labels read back from %s", self.model, len(self._seen),
                        self.store.where)

    def _count(self, record: Mapping[str, Any]) -> None:
        if not record.get("scored"):
            self.outcomes["unscored"] += 1
            return
        self.outcomes["scored"] += 1
        totals = self.totals.setdefault(str(record["version"]), Totals())
        totals.rows += int(record["rows"])
        totals.correct += int(record.get("correct", 0))
        totals.squared_error += float(record.get("squared_error", 0.0))
        shadow = record.get("shadow")
        if shadow and self.kind == "classification":
            pairs = self.shadow_pairs.setdefault(str(shadow["version"]), [0, 0, 0, 0])
            for truth, champion, challenger in zip(record["labels"], record["predictions"], shadow["predictions"],
                                                   strict=True):
                pairs[(champion != truth) * 2 + (challenger != truth)] += 1

    @property
    def labels(self) -> int:
        with self._lock:
            return len(self._seen)

    def record(self, body: Any, memory: PredictionMemory, shadow: PredictionMemory | None = None) -> Outcome:
        """Check, join, score and durably store one feedback batch (see the module docstring).

        Raises:
            BadFeedback: the body is not ``{"labels": [{"id": ..., "label": ...}, ...]}`` or a label does not
                fit the model (naming the item, the id and the wrong type or value); nothing is stored.
            TooMuchFeedback: more than ``max_batch`` items, or the store would pass ``max_labels``.
        """
        items = _items(body, self.max_batch)
        checked = [(request_id, self._check_labels(request_id, label, i)) for i, (request_id, label)
                   in enumerate(items)]
        now = time.time()
        outcome = Outcome()
        with self._lock:
            records = []
            fresh: set[str] = set()
            for request_id, labels in checked:
                if request_id in self._seen or request_id in fresh:
                    outcome.duplicates += 1
                    continue
                fresh.add(request_id)
                records.append(self._join(request_id, labels, memory.get(request_id), now,
                                          shadow.get(request_id) if shadow is not None else None))
            if len(self._seen) + len(records) > self.max_labels:
                raise TooMuchFeedback(f"the feedback store of model {self.model} holds {len(self._seen)} labels; "
                                      f"{len(records)} more would pass its cap of {self.max_labels} "
                                      "(--feedback_max_labels)")
            if records:
                try:
                    self.store.append(b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n"
                                               for r in records))
                except FeedbackStoreError as e:
                    logger.error("model %s: cannot store feedback in %s: %s", self.model, self.store.where, e)
                    raise FeedbackNotStored(f"the feedback store {self.store.where} cannot be written "
                                            f"({e.strerror or e}); nothing of this batch was kept, send it "
                                            "again") from e
            for record in records:
                self._seen.add(record["id"])
                self._count(record)
                if record["scored"]:
                    outcome.scored += 1
                else:
                    outcome.unscored += 1
                outcome.ids.append(record["id"])
            self.outcomes["duplicate"] += outcome.duplicates
        return outcome

    def _check_labels(self, request_id: str, label: Any, index: int) -> list[Any]:
        """The item's labels as a list (one per row), each checked against the model's kind."""
        labels = label if isinstance(label, list) else [label]
        if not labels:
            raise BadFeedback(f"labels[{index}] (id {request_id!r}): label is an empty list")
        return [self._check_label(request_id, value, index) for value in labels]

    def _check_label(self, request_id: str, value: Any, index: int) -> Any:
        where = f"labels[{index}] (id {request_id!r})"
        if self.kind == "classification":
            if isinstance(value, str):
                if value not in self.classes:
                    raise BadFeedback(f"{where}: unknown class {value!r}; the classes are {self.classes[:20]}")
                return value
            if isinstance(value, int) and not isinstance(value, bool):
                if not 0 <= value < len(self.classes):
                    raise BadFeedback(f"{where}: class index {value} is outside 0..{len(self.classes) - 1}")
                return self.classes[value]
            raise BadFeedback(f"{where}: label must be a class name (string) or class index (integer), "
                              f"got {type(value).__name__} {value!r:.40}")
        if self.kind == "regression":
            if isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
                return float(value)
            raise BadFeedback(f"{where}: label must be a finite number, got {type(value).__name__} {value!r:.40}")
        if value is None or isinstance(value, (dict,)):
            raise BadFeedback(f"{where}: label must be a value, got {type(value).__name__}")
        return value

    def _join(self, request_id: str, labels: list[Any], served: Remembered | None, now: float,
              shadow: Remembered | None = None) -> dict[str, Any]:
        record: dict[str, Any] = {"id": request_id, "model": self.model, "version": None, "scored": False,
                                  "rows": len(labels), "labels": labels, "predictions": None, "inputs": None,
                                  "received": round(now, 3)}
        if served is None:
            return record
        record["version"] = served.version
        if served.inputs is not None and len(labels) == len(served.predictions):
            record["inputs"] = {k: v.tolist() for k, v in served.inputs.items()}
        if self.kind not in SCORED_KINDS:
            return record
        if len(labels) != len(served.predictions):
            raise BadFeedback(f"id {request_id!r}: the request had {len(served.predictions)} row(s), the "
                              f"feedback gives {len(labels)} label(s)")
        predictions = served.predictions.reshape(-1)
        record["scored"] = True
        if self.kind == "classification":
            record["predictions"] = [self.classes[int(i)] for i in predictions]
            record["correct"] = sum(p == t for p, t in zip(record["predictions"], labels, strict=True))
            if shadow is not None and len(shadow.predictions) == len(labels):
                names = [self.classes[int(i)] for i in shadow.predictions.reshape(-1)]
                record["shadow"] = {"version": shadow.version, "predictions": names,
                                    "correct": sum(p == t for p, t in zip(names, labels, strict=True))}
        else:
            record["predictions"] = [float(v) for v in predictions]
            record["squared_error"] = float(sum((p - t) ** 2 for p, t in zip(record["predictions"], labels,
                                                                               strict=True)))
        return record

    def counts(self) -> tuple[dict[str, Totals], dict[str, int]]:
        """A consistent copy of the totals per version and the label outcomes (what a scrape exports)."""
        with self._lock:
            return ({v: Totals(t.rows, t.correct, t.squared_error) for v, t in self.totals.items()},
                    dict(self.outcomes))

    def realised(self) -> dict[str, dict[str, float | int]]:
        """Per version: scored rows and the realised metric (accuracy, or RMSE)."""
        with self._lock:
            result: dict[str, dict[str, float | int]] = {}
            for version, t in self.totals.items():
                metric = ({"accuracy": t.correct / t.rows} if self.kind == "classification"
                          else {"rmse": float(np.sqrt(t.squared_error / t.rows))}) if t.rows else {}
                result[version] = {"rows": t.rows, **metric}
            return result


def _items(body: Any, max_batch: int) -> list[tuple[str, Any]]:
    """``(id, label)`` of each item of ``{"labels": [...]}``, checked for shape and size only."""
    if not isinstance(body, dict) or not isinstance(body.get("labels"), list):
        raise BadFeedback('feedback must be a JSON object {"labels": [{"id": "...", "label": ...}, ...]}')
    labels = body["labels"]
    if len(labels) > max_batch:
        raise TooMuchFeedback(f"{len(labels)} labels in one batch; at most {max_batch} (--feedback_max_batch)")
    items = []
    for i, item in enumerate(labels):
        if not isinstance(item, dict) or "id" not in item or "label" not in item:
            raise BadFeedback(f'labels[{i}] must be an object with "id" and "label"')
        request_id = item["id"]
        if not isinstance(request_id, str) or not request_id or len(request_id) > MAX_ID_LENGTH:
            raise BadFeedback(f"labels[{i}]: id must be a non-empty string of at most {MAX_ID_LENGTH} characters, "
                              f"got {type(request_id).__name__}")
        items.append((request_id, item["label"]))
    return items


class FeedbackStats(PerModelCollector[FeedbackLog]):
    """The served models' feedback logs, read at scrape time (counters restored from the file at start)."""

    def register_model(self, model: str, log: FeedbackLog | None) -> None:
        self.put(model, log)

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "version"]
        scored = CounterMetricFamily("pillars_feedback_scored_rows",
                                     "Rows whose label was joined with the served prediction and scored.",
                                     labels=labels)
        correct = CounterMetricFamily("pillars_feedback_correct_rows",
                                      "Scored rows whose prediction was right (classifiers): realised accuracy is "
                                      "correct / scored.", labels=labels)
        squared = CounterMetricFamily("pillars_feedback_squared_error",
                                      "Summed squared error of scored rows (regressors): realised RMSE is "
                                      "sqrt(squared_error / scored).", labels=labels)
        outcomes = CounterMetricFamily("pillars_feedback_labels",
                                       "Feedback labels by outcome: scored, unscored (id not remembered: kept for "
                                       "retraining), duplicate (dropped).", labels=["model", "outcome"])
        for model, log in self.entries():
            totals, counts = log.counts()
            for outcome, count in counts.items():
                outcomes.add_metric([model, outcome], count)
            for version, t in totals.items():
                scored.add_metric([model, version], t.rows)
                if log.kind == "classification":
                    correct.add_metric([model, version], t.correct)
                else:
                    squared.add_metric([model, version], t.squared_error)
        yield from (scored, correct, squared, outcomes)


FEEDBACK = FeedbackStats()
REGISTRY.register(FEEDBACK)
