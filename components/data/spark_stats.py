"""The train split's statistics on Spark, equal to what the pandas engine computes with numpy, exact at any size,
in a few numpy passes over the data.

Per column (values as double): count, mean, population std, min, max, the quantiles
:data:`pillars.components.data.profile.QUANTILES` as ``numpy.quantile`` computes them (linear interpolation) and
the histogram of :func:`pillars.components.data.profile.histogram_counts`, all over the finite values as
:func:`pillars.components.data.tables.numpy_column_stats` takes them; and the median ``numpy.nanmedian`` gives
(the ``median`` fill: there infinite values count, missing ones do not).

Exact order statistics without sorting a column or holding it. Spark's exact ``percentile`` keeps every distinct
value on one executor (it never finished half a million rows on a 1 GB driver); ``percentile_approx`` merges
its summaries object by object (its two passes were 26 s of a 62 s step at 500k rows, and at 8 M rows the
merged summaries of 32 columns ran a 2 GB heap out of memory). Instead, every pass is an Arrow pass
(``mapInArrow``) with numpy per record batch:

1. **profile**: per column the count, min, max, mean and sum of squared deviations (batches merged as Chan et
   al.'s parallel variance), the infinite values at each end, and a seeded sample of about
   :data:`SAMPLE_ROWS` rows;
2. each order statistic wanted gets a value range (a *bracket*) from the sample: the sample's values
   :data:`Z` standard errors either side of its rank (the whole column when the sample is the column);
3. **count**: per bracket the values below it and inside it (and, in the first count, the display histograms).
   A bracket the sample expects to hold at most :data:`COLLECT_LIMIT` values has them collected in the same
   pass (distinct values and counts), and the ``k``-th value is read off them on the driver; a wider one gets
   a histogram of its values over :data:`REFINE_BINS` equal bins, is narrowed to the bins that hold its ranks
   (one bin of margin either side) and counted again. A bracket that missed its ranks (the sample misled it)
   becomes the column's whole range and is counted again.

A quantile is then interpolated with the same float64 operations as numpy (:func:`numpy_quantile`). Every
step counts exactly, so a sample that guessed badly costs passes, never the answer. Up to about 700,000 rows a
call takes two passes (a median's bracket holds about 2.4 % of the values, collected at once); a larger table
three, whatever its size (the narrowed brackets hold about 0.3 % of the first).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from pillars.components.data.profile import HISTOGRAM_BINS, QUANTILES, histogram_counts

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame

SAMPLE_ROWS = 65_536
"""Rows sampled (seeded, each with the same chance) to place the brackets: 2 MB a column on the driver."""
Z = 6.0
"""Standard errors of a sample quantile's rank either side of a bracket: a miss (one more pass) at about one
wanted rank in 10^8."""
REFINE_BINS = 1_024
"""Bins of the histogram a bracket is narrowed with."""
COLLECT_LIMIT = 16_384
"""Values inside a bracket up to which they are collected (their distinct values and counts) rather than
narrowed further."""
MAX_ROUNDS = 8
"""Counting passes at most; a bracket still wide then (values packed closer than a bin can split) is collected."""
_PROFILE_SCHEMA = ("column int, n long, mean double, m2 double, lo double, hi double, neg long, pos long, "
                   "sample array<double>")
_SCAN_SCHEMA = "item int, below long, inside long, bins array<long>, values array<double>, counts array<long>"


class ColumnProfile(NamedTuple):
    """One column's finite values: count, mean, sum of squared deviations, min and max (0.0 with no value),
    the ``-inf`` and ``+inf`` values beside them, and a sorted sample."""

    count: int
    mean: float
    m2: float
    lo: float
    hi: float
    neg: int
    pos: int
    sample: np.ndarray


class _Bracket(NamedTuple):
    column: int
    lo: float
    hi: float


class _Wanted(NamedTuple):
    """Order statistics ``first`` and ``last`` (0-based, among the column's finite values) of one column."""

    column: int
    first: int
    last: int


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


def column_stats(frame: DataFrame, columns: Sequence[str], rows: int) -> list[dict[str, Any]]:
    """Per column of ``frame`` (values cast to double): count, mean, std, min, max, quantiles and histogram
    counts, as :func:`pillars.components.data.tables.numpy_column_stats` gives them for the same values.

    ``rows`` is the frame's row count (it sizes the sample; a wrong one costs time, not the answer).
    """
    if not columns:
        return []
    profiles = profile_columns(frame, columns, rows)
    wanted = [_Wanted(c, *quantile_ranks(p.count, q)) for c, p in enumerate(profiles) if p.count for q in QUANTILES]
    ranges = [(p.lo, p.hi) for p in profiles]
    value_at, counts = _order_statistics(frame, columns, profiles, wanted, ranges)
    stats = []
    for c, p in enumerate(profiles):
        if not p.count:
            stats.append({"count": 0, "mean": 0.0, "std": 0.0, "min": 0.0, "max": 0.0,
                          "quantiles": [0.0] * len(QUANTILES), "counts": counts[c]})
            continue
        stats.append({"count": p.count, "mean": p.mean, "std": math.sqrt(p.m2 / p.count), "min": p.lo,
                      "max": p.hi, "quantiles": [numpy_quantile(p.count, q, lambda k, c=c: value_at[c, k])
                                                 for q in QUANTILES], "counts": counts[c]})
    return stats


def medians(frame: DataFrame, columns: Sequence[str], rows: int) -> list[float]:
    """``numpy.nanmedian`` of each column of ``frame`` (values cast to double, missing ones skipped); 0.0 for a
    column without a value. ``rows``: the frame's row count, as for :func:`column_stats`."""
    if not columns:
        return []
    profiles = profile_columns(frame, columns, rows)
    wanted = []
    for c, p in enumerate(profiles):  # the middle ranks among all non-missing values, as finite ranks
        finite = [k - p.neg for k in _median_ranks(p.count + p.neg + p.pos) if 0 <= k - p.neg < p.count]
        if finite:
            wanted.append(_Wanted(c, min(finite), max(finite)))
    value_at, _ = _order_statistics(frame, columns, profiles, wanted, None)

    def at(c: int, p: ColumnProfile, k: int) -> float:
        return -math.inf if k < p.neg else math.inf if k >= p.neg + p.count else value_at[c, k - p.neg]

    return [numpy_median(p.count + p.neg + p.pos, lambda k, c=c, p=p: at(c, p, k)) if p.count + p.neg + p.pos
            else 0.0 for c, p in enumerate(profiles)]


def _double_columns(frame: DataFrame, columns: Sequence[str]) -> DataFrame:
    from pyspark.sql import functions as F

    return frame.select(*[F.col(f"`{c}`").cast("double").alias(f"c{i}") for i, c in enumerate(columns)])


def _as_numpy(batch: pa.RecordBatch, i: int) -> np.ndarray:
    """Column ``i`` of a record batch as float64, a missing value as NaN."""
    return np.asarray(batch.column(i).to_numpy(zero_copy_only=False), dtype=np.float64)


def _list_array(parts: Sequence[np.ndarray], dtype: Any) -> pa.Array:
    """One Arrow list per array, without going through Python lists."""
    import pyarrow as pa

    offsets = np.zeros(len(parts) + 1, dtype=np.int32)
    offsets[1:] = np.cumsum([len(p) for p in parts])
    values = np.concatenate(parts) if parts else np.empty(0)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values.astype(dtype, copy=False)))


def profile_columns(frame: DataFrame, columns: Sequence[str], rows: int, seed: int = 0) -> list[ColumnProfile]:
    """One pass: each column's :class:`ColumnProfile`, its sample about :data:`SAMPLE_ROWS` rows (all when the
    frame has no more; seeded per partition)."""
    share = min(1.0, SAMPLE_ROWS / max(rows, 1))
    width = len(columns)

    def profile(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow as pa
        from pyspark import TaskContext

        context = TaskContext.get()
        rng = np.random.default_rng([seed, context.partitionId() if context is not None else 0])
        n = np.zeros(width, dtype=np.int64)
        mean, m2 = np.zeros(width), np.zeros(width)
        lo, hi = np.full(width, np.inf), np.full(width, -np.inf)
        neg, pos = np.zeros(width, dtype=np.int64), np.zeros(width, dtype=np.int64)
        sample: list[list[np.ndarray]] = [[] for _ in range(width)]
        for batch in batches:
            keep = rng.random(batch.num_rows) < share if share < 1.0 else None
            for c in range(width):
                x = _as_numpy(batch, c)
                finite = np.isfinite(x)
                if not finite.all():
                    neg[c] += np.count_nonzero(x == -np.inf)
                    pos[c] += np.count_nonzero(x == np.inf)
                kept = finite if keep is None else finite & keep
                if kept.any():
                    sample[c].append(x[kept])
                x = x[finite]
                if not x.size:
                    continue
                batch_mean = x.mean()
                batch_m2 = float(np.square(x - batch_mean).sum())
                total = n[c] + x.size
                delta = batch_mean - mean[c]
                mean[c] += delta * x.size / total
                m2[c] += batch_m2 + delta * delta * n[c] * x.size / total
                n[c] = total
                lo[c], hi[c] = min(lo[c], x.min()), max(hi[c], x.max())
        yield pa.RecordBatch.from_arrays(
            [pa.array(list(range(width)), pa.int32()), pa.array(n), pa.array(mean), pa.array(m2), pa.array(lo),
             pa.array(hi), pa.array(neg), pa.array(pos),
             _list_array([np.concatenate(s) if s else np.empty(0) for s in sample], np.float64)],
            names=["column", "n", "mean", "m2", "lo", "hi", "neg", "pos", "sample"])

    parts = _double_columns(frame, columns).mapInArrow(profile, _PROFILE_SCHEMA).collect()
    profiles = []
    for c in range(width):
        count, mean_c, m2_c, lo_c, hi_c, neg_c, pos_c = 0, 0.0, 0.0, math.inf, -math.inf, 0, 0
        samples = []
        for part in (r for r in parts if r["column"] == c):
            neg_c, pos_c = neg_c + part["neg"], pos_c + part["pos"]
            if part["sample"]:
                samples.append(np.asarray(part["sample"], dtype=np.float64))
            if not part["n"]:
                continue
            total = count + part["n"]
            delta = part["mean"] - mean_c
            mean_c += delta * part["n"] / total
            m2_c += part["m2"] + delta * delta * count * part["n"] / total
            count = total
            lo_c, hi_c = min(lo_c, part["lo"]), max(hi_c, part["hi"])
        if not count:
            lo_c = hi_c = 0.0
        profiles.append(ColumnProfile(count, float(mean_c), float(m2_c), float(lo_c), float(hi_c), int(neg_c),
                                      int(pos_c), np.sort(np.concatenate(samples)) if samples else np.empty(0)))
    return profiles


def _guess(p: ColumnProfile, w: _Wanted) -> _Bracket:
    """The bracket of ``w``'s ranks from the sample: exact when the sample is the column."""
    m = len(p.sample)
    if m == p.count:
        return _Bracket(w.column, float(p.sample[w.first]), float(p.sample[w.last]))
    if not m:
        return _Bracket(w.column, p.lo, p.hi)
    share = m / p.count
    q = min(max(w.first / p.count, 0.0), 1.0)
    margin = Z * math.sqrt(m * q * (1.0 - q)) + 2.0
    first, last = math.floor(w.first * share - margin), math.ceil(w.last * share + margin)
    return _Bracket(w.column, float(p.sample[first]) if first >= 0 else p.lo,
                    float(p.sample[last]) if last < m else p.hi)


def _narrow(b: _Bracket, counted: _Counted, w: _Wanted) -> _Bracket:
    """The bins of ``b``'s histogram that hold ``w``'s ranks, with one bin of margin either side (a value on a
    bin's edge may have been put in its neighbour)."""
    cumulative = np.cumsum(counted.bins)
    first = int(np.searchsorted(cumulative, w.first - counted.below, side="right"))
    last = int(np.searchsorted(cumulative, w.last - counted.below, side="right"))
    width = (b.hi - b.lo) / REFINE_BINS
    lo = b.lo if first <= 1 else max(b.lo, b.lo + (first - 1) * width)
    hi = b.hi if last + 2 >= REFINE_BINS else min(b.hi, b.lo + (last + 2) * width)
    return _Bracket(b.column, lo, hi)


def _order_statistics(frame: DataFrame, columns: Sequence[str], profiles: Sequence[ColumnProfile],
                      wanted: Sequence[_Wanted], ranges: Sequence[tuple[float, float]] | None
                      ) -> tuple[dict[tuple[int, int], float], list[list[int]]]:
    """``{(column, k): value}`` for each wanted order statistic, and (when ``ranges`` gives each column's min
    and max) the display histogram counts per column, from the first pass.

    A bracket expected to hold at most :data:`COLLECT_LIMIT` values has them collected in the pass that
    counts it; the others are narrowed until they are small, then collected."""
    brackets = [_guess(profiles[w.column], w) for w in wanted]
    collect = [_expected_inside(profiles[w.column], b) <= COLLECT_LIMIT for w, b in zip(wanted, brackets)]
    value_at: dict[tuple[int, int], float] = {}
    pending = list(range(len(wanted)))
    histograms: list[list[int]] = []
    for round_ in range(MAX_ROUNDS + 1):
        if not pending and (round_ or ranges is None):
            break
        last = round_ == MAX_ROUNDS  # still wide (values packed closer than a bin can split): collected now
        flags = [collect[j] or last for j in pending]
        counted, found = _pass(frame, columns, [brackets[j] for j in pending], flags, ranges if round_ == 0 else None)
        histograms = histograms or found
        again = []
        for j, flag, c in zip(pending, flags, counted):
            w, b = wanted[j], brackets[j]
            if not (c.below <= w.first and w.last < c.below + c.inside):  # the sample misled it
                whole = _Bracket(w.column, profiles[w.column].lo, profiles[w.column].hi)
                if b == whole:
                    raise RuntimeError(f"the values of column {columns[w.column]!r} changed between two passes")
                brackets[j], collect[j] = whole, False
                again.append(j)
            elif b.lo == b.hi:  # one value holds both ranks
                value_at[w.column, w.first] = value_at[w.column, w.last] = b.lo
            elif flag:
                ends = np.cumsum(c.counts)
                for k in (w.first, w.last):
                    value_at[w.column, k] = float(c.values[int(np.searchsorted(ends, k - c.below, side="right"))])
            else:
                narrowed = _narrow(b, c, w)
                brackets[j], collect[j] = narrowed, c.inside <= COLLECT_LIMIT or narrowed == b
                again.append(j)
        pending = again
    return value_at, histograms


def _expected_inside(p: ColumnProfile, b: _Bracket) -> float:
    """About how many of the column's values ``b`` holds, by the sample."""
    m = len(p.sample)
    if not m:
        return float(p.count)
    inside = np.searchsorted(p.sample, b.hi, side="right") - np.searchsorted(p.sample, b.lo, side="left")
    return float(inside) * p.count / m


class _Counted(NamedTuple):
    """A bracket's values below it and inside it, and of those inside either a :data:`REFINE_BINS` histogram
    or (collected) the distinct values, sorted, with their counts."""

    below: int
    inside: int
    bins: np.ndarray
    values: np.ndarray
    counts: np.ndarray


def _pass(frame: DataFrame, columns: Sequence[str], brackets: Sequence[_Bracket], collect: Sequence[bool],
          ranges: Sequence[tuple[float, float]] | None) -> tuple[list[_Counted], list[list[int]]]:
    """One Arrow pass over ``columns``' finite values: each bracket :class:`_Counted` (collected where
    ``collect`` says so), and the display histogram of each column when ``ranges`` gives their min and max
    (else an empty list)."""
    lows = [b.lo for b in brackets]
    highs = [b.hi for b in brackets]
    owners = [b.column for b in brackets]
    keeps = list(collect)
    width = len(columns)
    used = sorted(set(owners) | (set(range(width)) if ranges is not None else set()))
    refine_bins = REFINE_BINS

    def scan(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow as pa

        below = np.zeros(len(owners), dtype=np.int64)
        inside = np.zeros(len(owners), dtype=np.int64)
        bins = [np.zeros(0 if keep else refine_bins, dtype=np.int64) for keep in keeps]
        kept: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in owners]
        display = np.zeros((width, HISTOGRAM_BINS), dtype=np.int64)
        for batch in batches:
            values = {}
            for c in used:
                x = _as_numpy(batch, c)
                values[c] = x[np.isfinite(x)]
            for j, c in enumerate(owners):
                x, lo, hi = values[c], lows[j], highs[j]
                below[j] += np.count_nonzero(x < lo)
                x = x[(x >= lo) & (x <= hi)]
                inside[j] += x.size
                if not x.size:
                    continue
                if keeps[j]:
                    kept[j].append(np.unique(x, return_counts=True))
                else:
                    scale = refine_bins / (hi - lo) if hi > lo else 0.0
                    slots = np.clip(np.floor((x - lo) * scale), 0, refine_bins - 1).astype(np.int64)
                    bins[j] += np.bincount(slots, minlength=refine_bins)
            if ranges is not None:
                for c, (lo, hi) in enumerate(ranges):
                    display[c] += histogram_counts(values[c], lo, hi)
        distinct = [_merge_distinct(k) for k in kept]
        yield pa.RecordBatch.from_arrays(
            [pa.array(list(range(len(owners))) + [-1], pa.int32()), pa.array(np.append(below, 0)),
             pa.array(np.append(inside, 0)), _list_array([*bins, np.empty(0)], np.int64),
             _list_array([d[0] for d in distinct] + [np.empty(0)], np.float64),
             _list_array([d[1] for d in distinct] + [display.ravel() if ranges is not None else np.empty(0)],
                         np.int64)],
            names=["item", "below", "inside", "bins", "values", "counts"])

    below = np.zeros(len(brackets), dtype=np.int64)
    inside = np.zeros(len(brackets), dtype=np.int64)
    bins = [np.zeros(0 if keep else REFINE_BINS, dtype=np.int64) for keep in keeps]
    parts: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in brackets]
    display = np.zeros((width, HISTOGRAM_BINS), dtype=np.int64)
    for row in _double_columns(frame, columns).mapInArrow(scan, _SCAN_SCHEMA).collect():
        if row["item"] < 0:
            if ranges is not None:
                display += np.asarray(row["counts"], dtype=np.int64).reshape(width, HISTOGRAM_BINS)
            continue
        j = row["item"]
        below[j] += row["below"]
        inside[j] += row["inside"]
        if keeps[j]:
            parts[j].append((np.asarray(row["values"], dtype=np.float64), np.asarray(row["counts"], dtype=np.int64)))
        else:
            bins[j] += np.asarray(row["bins"], dtype=np.int64)
    counted = []
    for j in range(len(brackets)):
        values, counts = _merge_distinct(parts[j])
        counted.append(_Counted(int(below[j]), int(inside[j]), bins[j], values, counts))
    return counted, display.tolist() if ranges is not None else []


def _merge_distinct(parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values (sorted) and their counts, from several such pairs."""
    if not parts:
        return np.empty(0), np.empty(0, dtype=np.int64)
    values, index = np.unique(np.concatenate([v for v, _ in parts]), return_inverse=True)
    counts = np.bincount(index, weights=np.concatenate([n for _, n in parts]), minlength=len(values))
    return values, counts.astype(np.int64)
