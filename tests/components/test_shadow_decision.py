"""The shadow challenger's decision rule: a worse challenger is never promoted, a better one is once the labels
say so, and too few labels decide nothing."""

from __future__ import annotations

import numpy as np
import pytest

from pillars.components.evaluation.shadow import decide


def _outcomes(n: int, accuracy: float, rng: np.random.Generator) -> np.ndarray:
    return rng.random(n) < accuracy


def test_too_few_labels_wait():
    decision = decide(np.ones(50, bool), np.zeros(50, bool), min_labels=200)
    assert decision.action == "wait" and "50 labelled rows of the 200" in decision.reason


@pytest.mark.parametrize("challenger_accuracy", [0.8, 0.85, 0.88])
def test_a_worse_challenger_is_never_promoted(challenger_accuracy):
    for seed in range(200):
        rng = np.random.default_rng(seed)
        champion = _outcomes(2000, 0.9, rng)
        challenger = _outcomes(2000, challenger_accuracy, rng)
        for n in (200, 500, 1000, 2000):  # judged again as labels arrive
            assert decide(champion[:n], challenger[:n]).action != "promote", (seed, n)


def test_an_equally_good_challenger_is_rarely_promoted_even_judged_again_and_again():
    promoted = 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        champion, challenger = _outcomes(2000, 0.9, rng), _outcomes(2000, 0.9, rng)
        promoted += any(decide(champion[:n], challenger[:n]).action == "promote" for n in (200, 500, 1000, 2000))
    assert promoted <= 200 * 0.03, promoted  # alpha 0.01 per look, four looks


def test_a_clearly_worse_challenger_is_rejected_and_a_clearly_better_one_promoted():
    rng = np.random.default_rng(0)
    champion = _outcomes(1000, 0.9, rng)
    worse = decide(champion, _outcomes(1000, 0.8, rng))
    assert worse.action == "reject" and worse.reason.startswith("worse: challenger 0.")
    better = decide(champion, champion | _outcomes(1000, 0.6, rng))
    assert better.action == "promote" and better.challenger_accuracy > better.champion_accuracy


def test_no_significant_gain_by_the_label_budget_is_a_rejection():
    same = np.random.default_rng(1).random(5000) < 0.9
    decision = decide(same, same.copy(), max_labels=5000)
    assert decision.action == "reject" and "no significant gain" in decision.reason


def test_a_gain_below_the_margin_waits():
    champion = np.zeros(1000, bool)
    champion[:900] = True
    challenger = champion.copy()
    challenger[900:920] = True  # +2 points, all on discordant rows: significant
    assert decide(champion, challenger, margin=0.0).action == "promote"
    assert decide(champion, challenger, margin=0.05).action == "wait"
