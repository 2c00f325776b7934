"""The decision on a challenger run in shadow beside the champion: promote, reject or wait.

Both models answer the same requests; on the rows that got a label (feedback), each is right or wrong.
The rule judges the challenger on those paired rows only (the same rows, so traffic that is easy or hard for
both does not decide it), with McNemar's exact test on the discordant rows (one model right, the other
wrong):

- fewer than ``min_labels`` paired labelled rows: **wait** (no decision from a handful of labels);
- the challenger is significantly better (one-sided p < ``alpha``) and better by at least ``margin``
  in accuracy: **promote**;
- the challenger is significantly worse, or ``max_labels`` rows gave no significant gain: **reject**;
- otherwise **wait** for more labels.

A challenger that is worse is never promoted: promotion needs it to win significantly more discordant
rows than it loses. ``alpha`` defaults to :data:`ALPHA` (0.01) because the rule is applied again as labels arrive
(each look is a chance of a false promotion; four looks at 0.01 stay under 4 %). The reason of each decision is
one line, for the alias history.

The model server runs the challenger in shadow and scores it (:mod:`pillars.serving.monitoring.shadow`);
``pillars models decide-shadow`` moves the alias on a promote, with this reason in the alias history.
The canary on a cluster, where traffic is split and no row is answered by both, is judged by the sibling
rule :mod:`pillars.components.evaluation.canary` with the same ``alpha``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest


ALPHA = 0.01
"""Significance of every test of a challenger (shadow or canary): the rules are applied again as data arrive."""


@dataclass(frozen=True)
class ShadowDecision:
    """``action`` is ``promote``, ``reject`` or ``wait``; ``reason`` says why, with the figures."""

    action: str
    reason: str
    labels: int
    champion_accuracy: float | None
    challenger_accuracy: float | None


def decide(champion_correct: np.ndarray, challenger_correct: np.ndarray, min_labels: int = 200,
           max_labels: int = 5000, margin: float = 0.0, alpha: float = ALPHA) -> ShadowDecision:
    """Judge a shadow challenger on paired labelled rows (whether each model was right on each row).

    Raises:
        ValueError: the two arrays differ in length, or the settings are out of range.
    """
    a = np.asarray(champion_correct, dtype=bool).reshape(-1)
    b = np.asarray(challenger_correct, dtype=bool).reshape(-1)
    if len(a) != len(b):
        raise ValueError(f"need one outcome per labelled row for both models, got {len(a)} and {len(b)}")
    if min_labels < 1 or max_labels < min_labels or not 0 < alpha < 1 or margin < 0:
        raise ValueError("need 1 <= min_labels <= max_labels, 0 < alpha < 1 and margin >= 0")
    n = len(a)
    if n < min_labels:
        return ShadowDecision("wait", f"{n} labelled rows of the {min_labels} needed", n, None, None)
    acc_a, acc_b = float(a.mean()), float(b.mean())
    wins, losses = int((b & ~a).sum()), int((a & ~b).sum())
    figures = (f"challenger {acc_b:.4f} vs champion {acc_a:.4f} on {n} labelled rows "
               f"({wins} rows only the challenger got right, {losses} only the champion)")
    discordant = wins + losses
    better = binomtest(wins, discordant, 0.5, alternative="greater").pvalue if discordant else 1.0
    worse = binomtest(losses, discordant, 0.5, alternative="greater").pvalue if discordant else 1.0
    if better < alpha and acc_b - acc_a >= margin:
        return ShadowDecision("promote", f"better: {figures}; McNemar p={better:.2g}", n, acc_a, acc_b)
    if worse < alpha:
        return ShadowDecision("reject", f"worse: {figures}; McNemar p={worse:.2g}", n, acc_a, acc_b)
    if n >= max_labels:
        return ShadowDecision("reject", f"no significant gain after {n} labelled rows: {figures}", n, acc_a, acc_b)
    return ShadowDecision("wait", f"not yet significant: {figures}", n, acc_a, acc_b)
