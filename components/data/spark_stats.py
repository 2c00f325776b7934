"""The train split's statistics on Spark, equal to what the pandas engine computes with numpy, in a fixed
number of passes over the data whatever its size.

Per column (float values as double): count, mean, population std, min, max (Spark's own aggregates), the
quantiles :data:`pillars.components.data.tables.QUANTILES` as ``numpy.quantile`` computes them (linear
interpolation), the histogram of :func:`pillars.components.data.profile.histogram_counts`, and the median
``numpy.nanmedian`` gives (the ``median`` fill).

Exact quantiles without sorting or holding a column (Spark's exact ``percentile`` keeps every distinct value
of every column as a boxed map entry on one executor, which never finished half a million rows on a 1 GB
driver):

1. one native aggregate: the count and ``percentile_approx`` (accuracy :data:`BRACKET_ACCURACY`) at each
   wanted quantile plus and minus a margin: a value range ("bracket") that holds the wanted ranks;
2. one Arrow pass (``mapInArrow``, numpy per record batch): per bracket, how many values fall below it and
   the few inside it (about ``4 n / BRACKET_ACCURACY + 4``), plus the histogram counts;
3. on the driver: the order statistics ``k`` and ``k + 1`` picked from each sorted bracket, interpolated as
   numpy does (:func:`numpy_quantile`).

A bracket that missed its ranks (the approximation's rank guarantee is not strict after merging partition
summaries) is scanned again over the whole column, so the answer is exact in every case.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from pillars.components.data.profile import HISTOGRAM_BINS, histogram_counts
from pillars.components.data.tables import QUANTILES

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame

BRACKET_ACCURACY = 10_000
"""``percentile_approx`` accuracy for the brackets: relative rank error 1e-4, so a bracket holds about
``4e-4 n`` values (1,200 per quantile and column at 3 M rows)."""
APPROX_ACCURACY = 10_000
"""Accuracy of the quantiles reported as approximate (beyond ``exact`` rows, see :func:`column_stats`): rank
error 1e-4, Spark's default. At 100,000 the partial aggregate of 32 columns' summaries grew into one row
that ran a 2 GB heap out of memory (8 M rows, 5.6 M of them train)."""
_SCAN_SCHEMA = "item int, below long, inside array<double>, counts array<long>"


class _Bracket(NamedTuple):
    column: int
    lo: float
    hi: float


def numpy_quantile(n: int, q: float, value_at: Callable[[int], float]) -> float:
    """``numpy.quantile(x, q)`` (method ``linear``) of ``n`` values, from ``value_at(k)``: the ``k``-th smallest.

    The same float64 operations as numpy's ``_quantile`` and ``_lerp``, so the result is bit-identical.
    """
    virtual = np.float64(n - 1) * np.float64(q)
    if virtual >= n - 1:
        return float(value_at(n - 1))
    k = int(np.floor(virtual))
    t = virtual - np.float64(k)
    a, b = np.float64(value_at(k)), np.float64(value_at(k + 1))
    diff = b - a
    return float(b - diff * (1 - t) if t >= 0.5 else a + diff * t)


def quantile_ranks(n: int, q: float) -> tuple[int, int]:
    """The order statistics :func:`numpy_quantile` reads for ``q`` of ``n`` values."""
    virtual = np.float64(n - 1) * np.float64(q)
    if virtual >= n - 1:
        return n - 1, n - 1
    k = int(np.floor(virtual))
    return k, k + 1


def numpy_median(n: int, value_at: Callable[[int], float]) -> float:
    """``numpy.median`` of ``n`` values from ``value_at(k)`` (the mean of the middle two when ``n`` is even)."""
    if n % 2:
        return float(value_at(n // 2))
    return float(np.mean(np.array([value_at(n // 2 - 1), value_at(n // 2)], dtype=np.float64)))


def _median_ranks(n: int) -> tuple[int, int]:
    return (n // 2, n // 2) if n % 2 else (n // 2 - 1, n // 2)


def column_stats(frame: DataFrame, columns: Sequence[str], rows: int, exact: bool) -> list[dict[str, Any]]:
    """Per column of ``frame`` (values cast to double): count, mean, std, min, max, quantiles and histogram
    counts, as :func:`pillars.components.data.tables.numpy_column_stats` gives them for the same values.

    ``rows`` is the frame's row count (it sizes the brackets; a wrong one costs a pass, not the answer).
    ``exact`` false: the quantiles are Spark's ``percentile_approx`` (accuracy :data:`APPROX_ACCURACY`), one
    pass fewer, for splits too large to be worth the exact answer.
    """
    from pyspark.sql import functions as F

    if not columns:
        return []
    accuracy = BRACKET_ACCURACY if exact else APPROX_ACCURACY
    probabilities = _bracket_probabilities(QUANTILES, rows) if exact else list(QUANTILES)
    aggregates = []
    for c in columns:
        x = f"CAST(`{c}` AS DOUBLE)"
        aggregates += [F.expr(f"count({x})"), F.expr(f"avg({x})"), F.expr(f"stddev_pop({x})"),
                       F.expr(f"min({x})"), F.expr(f"max({x})"), _percentiles(x, probabilities, accuracy)]
    row = list(frame.agg(*[a.alias(f"a{i}") for i, a in enumerate(aggregates)]).collect()[0])
    stats, approx = [], []
    for i in range(len(columns)):
        n, mean, std, lo, hi, values = row[6 * i: 6 * i + 6]
        stats.append({"count": int(n), "mean": float(mean or 0.0), "std": float(std or 0.0),
                      "min": float(lo or 0.0), "max": float(hi or 0.0),
                      "quantiles": [float(v) for v in values] if values and not exact else [0.0] * len(QUANTILES)})
        approx.append(values or [])
    brackets, ranks = [], []
    if exact:
        for i, s in enumerate(stats):
            for j, q in enumerate(QUANTILES):
                if s["count"]:
                    brackets.append(_bracket(i, approx[i], 2 * j, probabilities))
                    ranks.append(quantile_ranks(s["count"], q))
    counts, found = _scan(frame, columns, brackets, [(s["min"], s["max"]) for s in stats])
    for s, c in zip(stats, counts):
        s["counts"] = c
    if exact:
        picks = iter(_pick(frame, columns, brackets, found, ranks))
        for s in stats:
            if s["count"]:
                s["quantiles"] = [numpy_quantile(s["count"], q, next(picks)) for q in QUANTILES]
    return stats


def medians(frame: DataFrame, columns: Sequence[str], rows: int) -> list[float]:
    """``numpy.nanmedian`` of each column of ``frame`` (values cast to double, nulls skipped); 0.0 for a
    column without a value. ``rows``: the frame's row count, as for :func:`column_stats`."""
    from pyspark.sql import functions as F

    if not columns:
        return []
    probabilities = _bracket_probabilities((0.5,), rows)
    aggregates = []
    for c in columns:
        x = f"CAST(`{c}` AS DOUBLE)"
        aggregates += [F.expr(f"count({x})"), _percentiles(x, probabilities, BRACKET_ACCURACY)]
    row = list(frame.agg(*[a.alias(f"a{i}") for i, a in enumerate(aggregates)]).collect()[0])
    counts = [int(row[2 * i]) for i in range(len(columns))]
    brackets, ranks = [], []
    for i, n in enumerate(counts):
        if n:
            brackets.append(_bracket(i, row[2 * i + 1] or [], 0, probabilities))
            ranks.append(_median_ranks(n))
    _, found = _scan(frame, columns, brackets, None)
    picks = iter(_pick(frame, columns, brackets, found, ranks))
    return [numpy_median(n, next(picks)) if n else 0.0 for n in counts]


def _bracket_probabilities(quantiles: Sequence[float], rows: int) -> list[float]:
    """For each quantile, the probabilities below and above it whose approximate quantiles bracket its ranks:
    the approximation's rank error plus two ranks (``percentile_approx`` counts ranks its own way)."""
    margin = 2.0 / BRACKET_ACCURACY + 2.0 / max(rows, 1)
    return [p for q in quantiles for p in (max(0.0, q - margin), min(1.0, q + margin))]


def _percentiles(x: str, probabilities: Sequence[float], accuracy: int) -> Any:
    from pyspark.sql import functions as F

    return F.expr(f"percentile_approx({x}, array({', '.join(repr(float(p)) for p in probabilities)}), {accuracy})")


def _bracket(column: int, approx: Sequence[float], first: int, probabilities: Sequence[float]) -> _Bracket:
    """The value range from the approximate quantiles at ``probabilities[first]`` and ``[first + 1]``; open
    at an end where the probability is 0 or 1."""
    lo_p, hi_p = probabilities[first], probabilities[first + 1]
    lo = -math.inf if lo_p <= 0.0 or not approx else float(approx[first])
    hi = math.inf if hi_p >= 1.0 or not approx else float(approx[first + 1])
    return _Bracket(column, lo, hi)


def _scan(frame: DataFrame, columns: Sequence[str], brackets: Sequence[_Bracket],
          histograms: Sequence[tuple[float, float]] | None) -> tuple[list[list[int]], list[tuple[int, np.ndarray]]]:
    """One Arrow pass over ``columns``: per bracket the count of values below it and the sorted values inside
    it; per column (when ``histograms`` gives each one's min and max) the histogram counts."""
    from pyspark.sql import functions as F

    lows = np.array([b.lo for b in brackets], dtype=np.float64)
    highs = np.array([b.hi for b in brackets], dtype=np.float64)
    owners = [b.column for b in brackets]
    ranges = list(histograms) if histograms is not None else None
    width = len(columns)

    def scan(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow as pa

        below = np.zeros(len(owners), dtype=np.int64)
        inside: list[list[np.ndarray]] = [[] for _ in owners]
        counts = np.zeros((width, HISTOGRAM_BINS), dtype=np.int64)
        for batch in batches:
            values = [np.asarray(batch.column(i).to_numpy(zero_copy_only=False), dtype=np.float64)
                      for i in range(width)]
            for j, c in enumerate(owners):
                x = values[c]
                below[j] += np.count_nonzero(x < lows[j])
                kept = x[(x >= lows[j]) & (x <= highs[j])]
                if kept.size:
                    inside[j].append(kept)
            if ranges is not None:
                for c, (lo, hi) in enumerate(ranges):
                    x = values[c]
                    counts[c] += histogram_counts(x[np.isfinite(x)], lo, hi)
        yield pa.RecordBatch.from_pydict({
            "item": pa.array(list(range(len(owners))) + [-1], pa.int32()),
            "below": pa.array(below.tolist() + [0], pa.int64()),
            "inside": pa.array([np.concatenate(v).tolist() if v else [] for v in inside] + [[]],
                               pa.list_(pa.float64())),
            "counts": pa.array([[] for _ in owners] + [counts.ravel().tolist()], pa.list_(pa.int64()))})

    rows = frame.select(*[F.col(f"`{c}`").cast("double").alias(f"c{i}") for i, c in enumerate(columns)]) \
        .mapInArrow(scan, _SCAN_SCHEMA).collect()
    totals = np.zeros((width, HISTOGRAM_BINS), dtype=np.int64)
    below_total = np.zeros(len(owners), dtype=np.int64)
    parts: list[list[Any]] = [[] for _ in owners]
    for row in rows:
        if row["item"] < 0:
            totals += np.asarray(row["counts"], dtype=np.int64).reshape(width, HISTOGRAM_BINS)
        else:
            below_total[row["item"]] += row["below"]
            parts[row["item"]].extend(row["inside"])
    found = [(int(below_total[j]), np.sort(np.asarray(parts[j], dtype=np.float64))) for j in range(len(owners))]
    return totals.tolist(), found


def _pick(frame: DataFrame, columns: Sequence[str], brackets: Sequence[_Bracket],
          found: list[tuple[int, np.ndarray]], ranks: Sequence[tuple[int, int]]) -> list[Callable[[int], float]]:
    """Per bracket, ``value_at(k)`` for its ranks; a bracket that missed them is scanned again whole."""
    missed = [j for j, ((below, inside), (first, last)) in enumerate(zip(found, ranks))
              if not below <= first or not last < below + len(inside)]
    if missed:
        whole = [_Bracket(brackets[j].column, -math.inf, math.inf) for j in missed]
        _, again = _scan(frame, columns, whole, None)
        for j, result in zip(missed, again):
            found[j] = result
    return [(lambda k, below=below, inside=inside: float(inside[k - below])) for below, inside in found]
