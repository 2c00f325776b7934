"""The canary's decision rule (traffic split, no paired rows): a worse or unhealthy canary is rolled back, a canary
shown not worse is promoted, and too little traffic or no quality signal decides nothing."""

from __future__ import annotations

import numpy as np
import pytest

from pillars.components.evaluation.canary import CanaryRule, VersionFigures, decide_canary


def _figures(version: str, accuracy: float | None = None, labels: int = 0, requests: int = 1000, errors: int = 0,
             p99: float | None = 0.005, estimated: float | None = None, rng: np.random.Generator | None = None
             ) -> VersionFigures:
    correct = 0 if accuracy is None else int((rng or np.random.default_rng(0)).binomial(labels, accuracy))
    return VersionFigures(version, requests, errors, p99, estimated, labels if accuracy is not None else 0, correct)


def test_too_little_traffic_waits_whatever_else_it_shows():
    decision = decide_canary(_figures("1", requests=5000), _figures("2", requests=150, errors=150))
    assert decision.action == "wait"
    assert decision.reason == ("canary v2 vs champion v1: 150 (canary) and 5000 (champion) requests in the window, "
                               "200 needed each")


def test_healthy_without_labels_or_estimate_waits_and_says_so():
    decision = decide_canary(_figures("1"), _figures("2"))
    assert decision.action == "wait" and "no quality signal yet" in decision.reason


def test_significantly_more_errors_roll_back_but_a_few_more_do_not():
    assert decide_canary(_figures("1", errors=5), _figures("2", errors=60)).action == "rollback"
    noisy = decide_canary(_figures("1", errors=5, estimated=0.9), _figures("2", errors=9, estimated=0.9))
    assert noisy.action == "promote", noisy.reason  # 0.9 % vs 0.5 %: within the stated margin of 1 point


def test_a_slower_canary_is_rolled_back_only_past_both_the_ratio_and_the_floor():
    slow = decide_canary(_figures("1", p99=0.020, estimated=0.9), _figures("2", p99=0.040, estimated=0.9))
    assert slow.action == "rollback" and slow.reason.endswith("slower: p99 40.0 ms vs champion 20.0 ms "
                                                              "(more than 1.5x and 10 ms)")
    fast_enough = decide_canary(_figures("1", p99=0.002, estimated=0.9), _figures("2", p99=0.006, estimated=0.9))
    assert fast_enough.action == "promote"  # 3x, but 4 ms: below the floor


@pytest.mark.parametrize("canary_accuracy", [0.80, 0.85])
def test_a_worse_canary_is_never_promoted_on_its_labels(canary_accuracy):
    for seed in range(100):
        rng = np.random.default_rng(seed)
        for labels in (200, 500, 1000, 2000):  # judged again as labels arrive
            decision = decide_canary(_figures("1", 0.9, labels, rng=rng), _figures("2", canary_accuracy, labels, rng=rng))
            assert decision.action != "promote", (seed, labels, decision.reason)


def test_an_equally_good_canary_is_promoted_once_the_labels_show_it_within_the_margin():
    rng = np.random.default_rng(3)
    early = decide_canary(_figures("1", 0.9, 200, rng=rng), _figures("2", 0.9, 200, rng=rng))
    assert early.action == "wait" and "not yet shown within 0.02" in early.reason
    promoted = sum(decide_canary(_figures("1", 0.9, 5000, rng=rng), _figures("2", 0.9, 5000, rng=rng)).action
                   == "promote" for _ in range(100))
    assert promoted >= 70, promoted  # the test's power at 5000 labels each: 0.84 (z 3.33 against 2.33)


def test_labels_that_never_show_it_within_the_margin_roll_it_back():
    champion = VersionFigures("1", 9000, 0, 0.005, None, 5000, 4500)
    canary = VersionFigures("2", 1000, 0, 0.005, None, 5000, 4440)  # 88.8 % vs 90 %: not worse at 0.01, not within
    decision = decide_canary(champion, canary)
    assert decision.action == "rollback" and "after 5000 labels each" in decision.reason


def test_labels_outrank_the_estimate():
    champion = VersionFigures("1", 1000, 0, 0.005, 0.95, 1000, 900)
    canary = VersionFigures("2", 1000, 0, 0.005, 0.70, 1000, 905)  # underconfident, but right as often
    decision = decide_canary(champion, canary, CanaryRule(accuracy_margin=0.05))
    assert decision.action == "promote" and "realised accuracy 0.9050" in decision.reason


def test_without_labels_the_estimate_decides_with_its_stated_margin():
    assert decide_canary(_figures("1", estimated=0.92), _figures("2", estimated=0.90)).action == "promote"
    worse = decide_canary(_figures("1", estimated=0.92), _figures("2", estimated=0.85))
    assert worse.action == "rollback"
    assert "worse: estimated accuracy 0.8500 vs champion 0.9200" in worse.reason and "more than 0.03 below" in worse.reason


def test_bad_figures_and_rules_are_refused():
    with pytest.raises(ValueError, match="errors <= requests"):
        VersionFigures("1", 10, 11)
    with pytest.raises(ValueError, match="same version"):
        decide_canary(_figures("1"), _figures("1"))
    with pytest.raises(ValueError, match="latency_ratio >= 1"):
        CanaryRule(latency_ratio=0.5)
