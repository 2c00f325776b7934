"""Input and prediction drift against the training data profile, measured off the request path.

The hot path (:meth:`DriftMonitor.observe`, called once per forward pass in the batcher's worker
thread) only copies the batch into a fixed-size ring buffer and counts values outside the train
split's ``[min, max]`` with one vectorised comparison. A background thread recomputes the statistics
every ``interval_s`` seconds, and only when new rows arrived:

- **Jensen-Shannon distance** (base 2, so 0 = identical, 1 = disjoint) between the window's histogram
  on the profile's bin edges and the profile's counts. Two overflow bins are added, below the first
  and above the last edge, with zero reference mass: values outside the training range are drift
  and must not hide in the outer bins. JS distance needs no smoothing (it is finite with empty bins).
- **PSI** on the same bins, with proportions floored at ``PSI_EPSILON`` (1e-4) so empty bins (the
  overflow bins always are, in the reference) give a large but finite term.
- **Two-sample KS test** (``scipy.stats.ks_2samp``'s statistic and asymptotic p-value, vectorised over
  features) of the window against the
  profile's ``reference_sample`` rows when the profile keeps one. Each feature is tested at the
  threshold without multiple-testing correction, as Evidently does: the drift *share* rule below is
  what guards against one feature's false alarm, and Bonferroni over 30 features would need a shift
  ~30x less likely before any feature flags.
- The **predicted distribution**: JS distance of the window's predicted-class shares against the
  profile's label shares (classifiers), or of the predicted values' histogram against the label
  histogram (regressors).

Defaults and why:

- ``method="jsd"`` with ``threshold=0.1``: NannyML's default for Jensen-Shannon; it is bounded,
  symmetric and defined for empty bins, so one number means the same for every feature.
  ``psi`` defaults to 0.25 (the conventional "major shift" band: < 0.1 none, 0.1-0.25 moderate);
  ``ks`` to p < 0.05.
- ``share=0.5``: the model drifts when at least half of its features drift (Evidently's default), so
  one noisy feature does not page anyone.
- ``window=1000`` rows, ``min_rows=500``: the window histogram of a 10-bin profile has sampling noise;
  for in-distribution data the expected JS distance is about ``sqrt(9 / (8 n ln 2))``: 0.057 at 500
  rows (0.078 at its 95th percentile), 0.04 at 1000. Below 500 rows nothing is reported.
- ``interval_s=5``: well inside a 15-30 s Prometheus scrape interval, and the computation (a few ms
  for tabular models) runs at most once per interval.

What is compared is the task's *drift features* (:meth:`pillars.components.model.predictor.Predictor.drift_rows`:
a table's columns, a text's token count and out-of-vocabulary share, ...), against the model's
``data_profile.json``: ``{"rows", "schema": [{"name", "type"}], "features": {name: {count, mean, std, min,
max, quantiles, histogram}}, "label": label profile or null, "reference_sample": rows of the features,
"kind": task kind}``. Prediction drift is measured for classification (``class_index``) and regression
(``value``) only.

Models with more than :data:`pillars.serving.monitoring.metrics.MAX_FEATURE_LABELS` inputs (images) are measured per
input value, but exported as one series ``feature="all"``: the mean JS distance and PSI over all
values, the smallest KS p-value, and the model's drift flag.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pillars.serving.monitoring.statistics import js_distance, js_distances, ks_pvalues, overflow_histogram, overflow_histograms, psi, psis, with_overflow

logger = logging.getLogger(__name__)

METHODS: tuple[str, ...] = ("jsd", "psi", "ks")
DEFAULT_THRESHOLDS: dict[str, float] = {"jsd": 0.1, "psi": 0.25, "ks": 0.05}
PREDICTED = {"classification": "class_index", "regression": "value"}
"""The output whose distribution is compared with the training labels, by task kind."""


@dataclass(frozen=True)
class DriftConfig:
    """How drift is decided (see the module docstring for the reasoning behind the defaults)."""

    method: str = "jsd"
    threshold: float | None = None  # None: the method's default from DEFAULT_THRESHOLDS
    share: float = 0.5
    window: int = 1000
    min_rows: int = 500
    interval_s: float = 5.0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"drift method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not 0.0 < self.share <= 1.0:
            raise ValueError(f"drift share must be in (0, 1], got {self.share}")
        if self.window < 1 or not 1 <= self.min_rows <= self.window:
            raise ValueError(f"need 1 <= drift min_rows ({self.min_rows}) <= drift window ({self.window})")
        if self.interval_s <= 0:
            raise ValueError(f"drift interval must be positive, got {self.interval_s}")
        if self.threshold is not None and not 0.0 < self.threshold <= (1.0 if self.method != "psi" else np.inf):
            raise ValueError(f"a {self.method} drift threshold must be in (0, 1]"
                             f"{' (a p-value)' if self.method == 'ks' else ''}, got {self.threshold}")

    @property
    def limit(self) -> float:
        """The threshold in effect for ``method``."""
        return DEFAULT_THRESHOLDS[self.method] if self.threshold is None else self.threshold


@dataclass(frozen=True)
class DriftReport:
    """One computation over the window: per-feature statistics and the model's verdict."""

    rows: int
    jsd: np.ndarray
    psi: np.ndarray
    ks_pvalue: np.ndarray | None
    drifted: np.ndarray  # bool per feature
    share: float
    detected: bool
    prediction_jsd: float
    weighted_share: float = 0.0
    """Importance-weighted share of drifted features (equal weights when the model carries no importances)."""


# ---- the monitor ---------------------------------------------------------------------------------------

class DriftMonitor:
    """A sliding window of served rows and predictions, compared with the training profile.

    Args:
        profile: the data profile (:func:`pillars.components.data.profile.build_profile`).
        feature_names: the drift features' names, in column order (all must be in the profile).
        kind: the task's kind; predictions are compared for ``classification`` and ``regression``.
        classes: class names of a classifier (index order of ``class_index``).
        config: method, thresholds, window and interval.
        importance: per feature name, how much the model relies on it (permutation importance at training,
            :mod:`pillars.components.evaluation.importance`); drifted features are weighed by it in
            ``weighted_share``. None (a model trained before importances were kept, or a task whose drift
            features are not input columns): equal weights, so ``weighted_share`` is the plain share.

    Raises:
        ValueError: the profile does not describe every input of the model.
    """

    def __init__(self, profile: dict[str, Any], feature_names: Sequence[str], kind: str,
                 classes: Sequence[str] | None, config: DriftConfig,
                 importance: dict[str, float] | None = None) -> None:
        features = profile.get("features", {})
        missing = [name for name in feature_names if name not in features]
        if missing:
            raise ValueError(f"the data profile lacks {len(missing)} of the model's features "
                             f"(first: {missing[0]!r})")
        self.config = config
        self.feature_names = list(feature_names)
        self.kind = kind
        self.n_features = len(self.feature_names)
        self.importance = _weights(importance, self.feature_names)
        """Normalised importances in feature order (None: equal weights)."""
        stats = [features[name] for name in self.feature_names]
        self.low = np.array([s["min"] for s in stats], dtype=np.float32)
        self.high = np.array([s["max"] for s in stats], dtype=np.float32)
        self._edges = [np.asarray(s["histogram"]["edges"], dtype=np.float64) for s in stats]
        self._reference = [with_overflow(s["histogram"]["counts"]) for s in stats]
        same_bins = len({len(e) for e in self._edges}) == 1
        self._edge_matrix = np.stack(self._edges) if same_bins else None
        self._reference_matrix = np.stack(self._reference) if same_bins else None
        sample = np.asarray(profile.get("reference_sample") or [], dtype=np.float64)
        self._sample = sample if sample.ndim == 2 and sample.shape[1] == self.n_features and len(sample) else None
        self.method = config.method
        if self.method == "ks" and self._sample is None:
            logger.warning("the data profile keeps no reference sample: drift method ks falls back to jsd")
            self.method = "jsd"
        self._threshold = DEFAULT_THRESHOLDS["jsd"] if self.method != config.method else config.limit
        self._label_reference, self._label_edges = self._prediction_reference(profile.get("label") or {}, classes)

        self._lock = threading.Lock()
        self._inputs = np.zeros((config.window, self.n_features), dtype=np.float32)
        self._predictions = np.zeros(config.window, dtype=np.float64)
        self._position = 0
        self._filled = 0
        self._seen = 0
        self._out_of_range = np.zeros(self.n_features, dtype=np.int64)
        self.report: DriftReport | None = None
        self.failed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._names_seen: tuple[str, ...] | None = None
        self._columns: list[int] | None = None

    def _prediction_reference(self, label: dict[str, Any], classes: Sequence[str] | None
                              ) -> tuple[np.ndarray | None, np.ndarray | None]:
        if self.kind not in PREDICTED:
            return None, None
        if self.kind == "classification":
            counts = label.get("counts") or label.get("shares")
            if counts is None or len(counts) != len(classes or []):
                return None, None
            return np.asarray(counts, dtype=np.float64), None
        histogram = label.get("histogram")
        if not histogram:
            return None, None
        return with_overflow(histogram["counts"]), np.asarray(histogram["edges"], dtype=np.float64)

    # -- hot path -------------------------------------------------------------------------------------

    def observe_named(self, names: Sequence[str], rows: np.ndarray, outputs: dict[str, np.ndarray]) -> None:
        """:meth:`observe` for the task's drift features of a batch, named (columns in any order).

        A batch that lacks one of the monitor's features turns monitoring off (logged once).
        """
        if self.failed:
            return
        names = tuple(names)
        if names != self._names_seen:
            position = {name: i for i, name in enumerate(names)}
            missing = [n for n in self.feature_names if n not in position]
            if missing:
                self.failed = True
                logger.error("drift tracking is off: the task's drift features lack %s of the profile's "
                             "(first: %r)", len(missing), missing[0])
                return
            order = [position[n] for n in self.feature_names]
            self._names_seen, self._columns = names, (None if order == list(range(len(names))) else order)
        self.observe(rows if self._columns is None else rows[:, self._columns], outputs)

    def fail(self, reason: str) -> None:
        """Turn monitoring off, logging why once (for a failure outside :meth:`observe`)."""
        if not self.failed:
            self.failed = True
            logger.error("drift tracking failed on the request path and is now off: %s", reason)

    def observe(self, rows: np.ndarray, outputs: dict[str, np.ndarray]) -> None:
        """Add one forward pass: ``[N, n_features]`` drift features and the model's outputs. Cheap: copies only.

        Never raises: monitoring must not fail a request. A failure is logged once and turns the
        monitor off.
        """
        if self.failed or rows.ndim != 2 or rows.shape[1] != self.n_features:
            return
        try:
            self._observe(rows, outputs)
        except Exception:
            self.failed = True
            logger.exception("drift tracking failed on the request path and is now off")

    def _observe(self, rows: np.ndarray, outputs: dict[str, np.ndarray]) -> None:
        predicted = outputs.get(PREDICTED[self.kind]) if self.kind in PREDICTED else None
        outside = rows < self.low
        outside |= rows > self.high
        outside_counts = outside.sum(axis=0) if outside.any() else None  # in range: skip the per-feature sum
        window = self.config.window
        n = len(rows)
        if n > window:
            rows, predicted = rows[-window:], (predicted[-window:] if predicted is not None else None)
        with self._lock:
            if outside_counts is not None:
                self._out_of_range += outside_counts
            first = min(len(rows), window - self._position)
            self._inputs[self._position:self._position + first] = rows[:first]
            self._inputs[:len(rows) - first] = rows[first:]
            if predicted is not None:
                self._predictions[self._position:self._position + first] = predicted[:first]
                self._predictions[:len(rows) - first] = predicted[first:]
            self._position = (self._position + len(rows)) % window
            self._filled = min(window, self._filled + len(rows))
            self._seen += n

    # -- what the metrics read ------------------------------------------------------------------------

    @property
    def window_rows(self) -> int:
        """Rows currently in the window (at most ``config.window``)."""
        return self._filled

    def out_of_range_counts(self) -> np.ndarray:
        """Per-feature count of served values outside the train split's [min, max], since start."""
        with self._lock:
            return self._out_of_range.copy()

    # -- background computation -----------------------------------------------------------------------

    def compute(self) -> DriftReport | None:
        """Compare the current window with the profile; None while it holds fewer than ``min_rows`` rows."""
        with self._lock:
            filled = self._filled
            if filled < self.config.min_rows:
                return None
            inputs = self._inputs[:filled].copy()
            predictions = self._predictions[:filled].copy()
        if self._edge_matrix is not None:  # every feature has the same number of bins: one pass
            counts = overflow_histograms(inputs, self._edge_matrix)
            jsd = js_distances(counts, self._reference_matrix)
            psi_values = psis(self._reference_matrix, counts)
        else:
            pairs = [(overflow_histogram(inputs[:, j], self._edges[j]), self._reference[j])
                     for j in range(self.n_features)]
            jsd = np.array([js_distance(c, r) for c, r in pairs])
            psi_values = np.array([psi(r, c) for c, r in pairs])
        pvalues = None
        if self._sample is not None:
            pvalues = ks_pvalues(inputs, self._sample)
        if self.method == "jsd":
            drifted = jsd > self._threshold
        elif self.method == "psi":
            drifted = psi_values > self._threshold
        else:
            assert pvalues is not None
            drifted = pvalues < self._threshold
        share = float(drifted.mean())
        weighted = share if self.importance is None else float(self.importance[drifted].sum())
        report = DriftReport(rows=filled, jsd=jsd, psi=psi_values, ks_pvalue=pvalues, drifted=drifted, share=share,
                             detected=share >= self.config.share,
                             prediction_jsd=self._prediction_drift(predictions), weighted_share=weighted)
        self.report = report
        return report

    def _prediction_drift(self, predictions: np.ndarray) -> float:
        if self._label_reference is None:
            return 0.0
        if self._label_edges is None:
            n_classes = len(self._label_reference)
            index = predictions.astype(np.int64)
            counts = np.bincount(index[(index >= 0) & (index < n_classes)], minlength=n_classes)
        else:
            counts = overflow_histogram(predictions, self._label_edges)
        return js_distance(counts, self._label_reference)

    def start(self) -> None:
        """Recompute in a daemon thread every ``interval_s`` seconds while new rows arrive."""
        self._thread = threading.Thread(target=self._loop, name="pillars-drift", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the background thread (it finishes its current computation)."""
        self._stop.set()

    def _loop(self) -> None:
        computed_at = 0
        was_detected = False
        while not self._stop.wait(self.config.interval_s):
            seen = self._seen
            if seen == computed_at:
                continue
            started = time.perf_counter()
            try:
                report = self.compute()
            except Exception:  # never let a statistics bug take the server down; retried next interval
                logger.exception("drift computation failed")
                continue
            computed_at = seen
            if report is None:
                continue
            if report.detected != was_detected:
                log = logger.warning if report.detected else logger.info
                log("drift %s: %.0f%% of features drifted (method %s, threshold %g), prediction JS distance %.3f",
                    "detected" if report.detected else "cleared", 100 * report.share, self.method,
                    self._threshold, report.prediction_jsd)
                was_detected = report.detected
            logger.debug("drift computed over %d rows in %.2f ms", report.rows,
                         1000 * (time.perf_counter() - started))


def _weights(importance: dict[str, float] | None, names: Sequence[str]) -> np.ndarray | None:
    """Importances in feature order, normalised to sum 1 (None: none given, or none above 0).

    Raises:
        ValueError: an importance is negative or not a number.
    """
    if not importance:
        return None
    values = np.array([float(importance.get(name, 0.0)) for name in names], dtype=np.float64)
    if not np.all(np.isfinite(values)) or (values < 0).any():
        raise ValueError("feature importances must be finite numbers >= 0")
    total = values.sum()
    return values / total if total > 0 else None
