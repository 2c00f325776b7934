"""The drift statistics, as plain functions over histograms and samples (unit-tested against known values):
Jensen-Shannon distance and the population stability index over a profile's bins plus two overflow bins,
and the two-sample Kolmogorov-Smirnov p-value. :mod:`pillars.serving.monitoring.drift` applies them to a
window of requests."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PSI_EPSILON = 1e-4
"""Added to empty bins so the population stability index stays finite."""


def overflow_histogram(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts of ``values`` in ``[below, bin_1 .. bin_B, above]``: the profile's bins plus two overflow bins.

    The bins follow ``np.histogram``: ``[e_i, e_i+1)``, the last one closed on the right.
    """
    index = np.searchsorted(edges, values, side="right")
    index[values == edges[-1]] = len(edges) - 1
    return np.bincount(index, minlength=len(edges) + 1)


def with_overflow(reference_counts: Sequence[float]) -> np.ndarray:
    """Reference counts with the two (empty) overflow bins around them."""
    return np.concatenate([[0.0], np.asarray(reference_counts, dtype=np.float64), [0.0]])


def overflow_histograms(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """:func:`overflow_histogram` of every column at once: ``[n, F]`` values, ``[F, B+1]`` edges -> ``[F, B+2]``."""
    n_features, n_edges = edges.shape
    index = (values[:, :, None] >= edges[None, :, :]).sum(axis=2)  # = searchsorted(side="right") per column
    index[values == edges[:, -1]] = n_edges - 1
    flat = index + (n_edges + 1) * np.arange(n_features)
    return np.bincount(flat.ravel(), minlength=n_features * (n_edges + 1)).reshape(n_features, n_edges + 1)


def js_distances(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon distance (base 2, in [0, 1]) between count vectors, row by row (``[..., K]``).

    A row with no mass on either side has distance 0.
    """
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    p_sum, q_sum = p.sum(axis=-1, keepdims=True), q.sum(axis=-1, keepdims=True)
    empty = (p_sum[..., 0] <= 0) | (q_sum[..., 0] <= 0)
    p, q = p / np.where(p_sum > 0, p_sum, 1.0), q / np.where(q_sum > 0, q_sum, 1.0)
    m = 0.5 * (p + q)
    safe_m = np.where(m > 0, m, 1.0)

    def kl(a: np.ndarray) -> np.ndarray:
        return np.sum(np.where(a > 0, a * np.log2(np.where(a > 0, a, 1.0) / safe_m), 0.0), axis=-1)

    divergence = np.maximum(0.5 * kl(p) + 0.5 * kl(q), 0.0)
    return np.where(empty, 0.0, np.sqrt(divergence))


def js_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) between two count or probability vectors."""
    return float(js_distances(p, q))


def psis(expected: np.ndarray, actual: np.ndarray, epsilon: float = PSI_EPSILON) -> np.ndarray:
    """Population stability index of ``actual`` against ``expected`` counts, row by row (``[..., K]``),
    proportions floored at ``epsilon``. A row with no mass on either side has PSI 0."""
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    e_sum, a_sum = e.sum(axis=-1, keepdims=True), a.sum(axis=-1, keepdims=True)
    empty = (e_sum[..., 0] <= 0) | (a_sum[..., 0] <= 0)
    e = np.maximum(e / np.where(e_sum > 0, e_sum, 1.0), epsilon)
    a = np.maximum(a / np.where(a_sum > 0, a_sum, 1.0), epsilon)
    return np.where(empty, 0.0, np.sum((a - e) * np.log(a / e), axis=-1))


def psi(expected: np.ndarray, actual: np.ndarray, epsilon: float = PSI_EPSILON) -> float:
    """Population stability index of ``actual`` against ``expected`` (counts), proportions floored at ``epsilon``."""
    return float(psis(expected, actual, epsilon))


def ks_pvalues(window: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Two-sample Kolmogorov-Smirnov p-values, column by column, in one vectorised pass.

    The same statistic and asymptotic p-value as ``scipy.stats.ks_2samp(a, b, method="asymp")`` for each
    column (ties handled: the ECDFs are compared only after the last of equal values), but one sort for
    all columns: 784 pixels cost milliseconds instead of a second.

    Args:
        window: ``[n, F]`` served rows.
        reference: ``[m, F]`` reference rows.
    """
    from scipy.stats import kstwo

    n, m = len(window), len(reference)
    data = np.concatenate([window, reference]).astype(np.float64)
    order = np.argsort(data, axis=0, kind="stable")
    values = np.take_along_axis(data, order, axis=0)
    from_window = order < n
    gap = np.abs(np.cumsum(from_window, axis=0) / n - np.cumsum(~from_window, axis=0) / m)
    gap[:-1][values[1:] == values[:-1]] = 0.0  # only where a run of equal values ends
    statistic = gap.max(axis=0)
    big, small = max(n, m), min(n, m)
    return kstwo.sf(statistic, np.round(big * small / (big + small)))


def ks_pvalue(window: np.ndarray, reference: np.ndarray) -> float:
    """p-value of the two-sample KS test of two 1-D samples (see :func:`ks_pvalues`)."""
    return float(ks_pvalues(np.asarray(window)[:, None], np.asarray(reference)[:, None])[0])


def psi_band(value: float) -> str:
    """The conventional reading of a PSI value: ``none`` (< 0.1), ``moderate`` (< 0.25) or ``major``."""
    return "none" if value < 0.1 else "moderate" if value < 0.25 else "major"
