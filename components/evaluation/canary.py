"""The decision on a canary that KServe serves beside the champion on a share of the traffic: promote, roll
back or wait.

In shadow (:mod:`pillars.components.evaluation.shadow`) both models answer the same rows, so they are compared
pair by pair. A canary splits the traffic instead: each request is answered by one version only, so the rule
compares what each version did on its own share over the same window (:class:`VersionFigures`, read from
Prometheus by :mod:`pillars.components.deploy.canary`):

- **wait** while either version answered fewer than ``min_requests`` requests in the window;
- **roll back** when the canary is unhealthy: its error ratio (5xx, gRPC INTERNAL/UNAVAILABLE) is significantly
  higher than the champion's (Fisher's exact test, one-sided p < ``alpha``) and higher by more than
  ``error_margin``; or its p99 latency is more than ``latency_ratio`` times the champion's and at least
  ``latency_floor_s`` slower;
- **roll back** when its quality is worse: with at least ``min_labels`` scored labels each (feedback), its
  realised accuracy is significantly lower (one-sided z test of two proportions, p < ``alpha``), or
  ``max_labels`` labels each have not shown it within ``accuracy_margin`` of the champion; without labels,
  its estimated accuracy (CBPE) is more than ``estimate_margin`` below the champion's;
- **promote** when it is healthy and its quality is shown: realised accuracy not worse than the champion's by
  ``accuracy_margin`` (non-inferiority: the one-sided test that it is worse by the margin or more rejects at
  ``alpha``), or, without enough labels, estimated accuracy within ``estimate_margin``;
- otherwise **wait**: healthy, but no quality signal yet (neither enough labels nor an estimate from both).

Realised accuracy is preferred to the estimate whenever both versions have the labels: the estimate is the
model's own calibrated confidence, the labels are the truth. A model with neither (a regressor whose labels
have not come) is never promoted by this rule: it waits, and a person decides. ``alpha`` is
:data:`pillars.components.evaluation.shadow.ALPHA`, for the same reason (the rule is applied again as data
arrive). Each check's finding is one line; the decision's ``reason`` joins the lines that decided it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy.stats import fisher_exact, norm

from pillars.components.evaluation.shadow import ALPHA

ACTIONS = ("promote", "rollback", "wait")


@dataclass(frozen=True)
class VersionFigures:
    """What one served version did over the window (counts as Prometheus' ``increase`` gives them, rounded).

    Attributes:
        version: the registry version.
        requests: inference requests answered.
        errors: of those, server errors (HTTP 5xx, gRPC INTERNAL or UNAVAILABLE).
        p99_seconds: the p99 request latency (None: no request timed in the window).
        estimated_accuracy: the CBPE estimate (None: not exported, no calibration or too few rows).
        scored: feedback labels joined with a prediction of this version and scored.
        correct: of those, rows the version predicted right.
    """

    version: str
    requests: int
    errors: int
    p99_seconds: float | None = None
    estimated_accuracy: float | None = None
    scored: int = 0
    correct: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.errors <= self.requests or not 0 <= self.correct <= self.scored:
            raise ValueError(f"version {self.version}: need 0 <= errors <= requests and 0 <= correct <= scored, got "
                             f"errors={self.errors}, requests={self.requests}, correct={self.correct}, "
                             f"scored={self.scored}")

    @property
    def error_ratio(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def realised_accuracy(self) -> float | None:
        return self.correct / self.scored if self.scored else None


@dataclass(frozen=True)
class CanaryRule:
    """The thresholds of :func:`decide_canary` (stated in the decision's reasons)."""

    min_requests: int = 200
    min_labels: int = 200
    max_labels: int = 5000
    accuracy_margin: float = 0.02
    """Non-inferiority margin on realised accuracy (0.02: at most 2 points worse)."""
    estimate_margin: float = 0.03
    """Largest drop of the estimated accuracy that still promotes: CBPE tracks the realised accuracy within 3
    points (docs/benchmarks.md), so a smaller gap is not evidence of a worse model."""
    error_margin: float = 0.01
    latency_ratio: float = 1.5
    latency_floor_s: float = 0.01
    alpha: float = ALPHA

    def __post_init__(self) -> None:
        if self.min_requests < 1 or self.min_labels < 1 or self.max_labels < self.min_labels:
            raise ValueError("need min_requests >= 1 and 1 <= min_labels <= max_labels")
        if not 0 < self.alpha < 1 or min(self.accuracy_margin, self.estimate_margin, self.error_margin,
                                         self.latency_floor_s) < 0 or self.latency_ratio < 1:
            raise ValueError("need 0 < alpha < 1, margins >= 0 and latency_ratio >= 1")


@dataclass(frozen=True)
class CanaryDecision:
    """``action`` is ``promote``, ``rollback`` or ``wait``; ``reason`` says why in one line; ``findings`` is every
    check's line (for a person reading the whole analysis)."""

    action: str
    reason: str
    findings: tuple[str, ...]
    champion: VersionFigures
    canary: VersionFigures


def _z_pvalue(successes_a: int, n_a: int, successes_b: int, n_b: int, shift: float) -> float:
    """One-sided p-value that ``p_a - p_b > shift`` (Wald z test of two proportions)."""
    p_a, p_b = successes_a / n_a, successes_b / n_b
    se = math.sqrt(p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b)
    gap = p_a - p_b - shift
    if se == 0:
        return 0.0 if gap > 0 else 1.0
    return float(norm.sf(gap / se))


def _health(champion: VersionFigures, canary: VersionFigures, rule: CanaryRule) -> tuple[list[str], list[str]]:
    """(failures, findings) of the error ratio and latency checks."""
    failures, findings = [], []
    table = [[canary.errors, canary.requests - canary.errors], [champion.errors, champion.requests - champion.errors]]
    p = float(fisher_exact(table, alternative="greater").pvalue) if canary.errors else 1.0
    errors = (f"error ratio {canary.error_ratio:.4f} ({canary.errors}/{canary.requests}) vs champion "
              f"{champion.error_ratio:.4f} ({champion.errors}/{champion.requests}), Fisher p={p:.2g}")
    if p < rule.alpha and canary.error_ratio - champion.error_ratio > rule.error_margin:
        failures.append(f"more errors: {errors}")
    else:
        findings.append(errors)
    if canary.p99_seconds is None or champion.p99_seconds is None:
        findings.append("p99 latency not known for both versions")
    else:
        latency = f"p99 {canary.p99_seconds * 1000:.1f} ms vs champion {champion.p99_seconds * 1000:.1f} ms"
        if (canary.p99_seconds > rule.latency_ratio * champion.p99_seconds
                and canary.p99_seconds - champion.p99_seconds >= rule.latency_floor_s):
            failures.append(f"slower: {latency} (more than {rule.latency_ratio:g}x and "
                            f"{rule.latency_floor_s * 1000:g} ms)")
        else:
            findings.append(latency)
    return failures, findings


def _quality(champion: VersionFigures, canary: VersionFigures, rule: CanaryRule) -> tuple[str, str]:
    """(``ok``, ``fail`` or ``pending``, the line saying why) from realised accuracy, else the estimate."""
    if min(canary.scored, champion.scored) >= rule.min_labels:
        acc_c, acc_s = canary.realised_accuracy, champion.realised_accuracy
        figures = (f"realised accuracy {acc_c:.4f} on {canary.scored} labels vs champion {acc_s:.4f} on "
                   f"{champion.scored}")
        worse = _z_pvalue(champion.correct, champion.scored, canary.correct, canary.scored, 0.0)
        if worse < rule.alpha:
            return "fail", f"worse: {figures}, z test p={worse:.2g}"
        within = _z_pvalue(canary.correct, canary.scored, champion.correct, champion.scored, -rule.accuracy_margin)
        if within < rule.alpha:
            return "ok", f"not worse by {rule.accuracy_margin:g}: {figures}, non-inferiority p={within:.2g}"
        if min(canary.scored, champion.scored) >= rule.max_labels:
            return "fail", (f"not shown within {rule.accuracy_margin:g} of the champion after {rule.max_labels} "
                            f"labels each: {figures}, non-inferiority p={within:.2g}")
        return "pending", f"not yet shown within {rule.accuracy_margin:g}: {figures}, non-inferiority p={within:.2g}"
    labels = f"labels {canary.scored} (canary) and {champion.scored} (champion) of the {rule.min_labels} needed"
    if canary.estimated_accuracy is None or champion.estimated_accuracy is None:
        return "pending", f"no quality signal yet: {labels}; estimated accuracy not exported by both"
    figures = (f"estimated accuracy {canary.estimated_accuracy:.4f} vs champion {champion.estimated_accuracy:.4f} "
               f"({labels})")
    if canary.estimated_accuracy < champion.estimated_accuracy - rule.estimate_margin:
        return "fail", f"worse: {figures}, more than {rule.estimate_margin:g} below"
    return "ok", f"{figures}, within {rule.estimate_margin:g}"


def decide_canary(champion: VersionFigures, canary: VersionFigures, rule: CanaryRule = CanaryRule()
                  ) -> CanaryDecision:
    """Judge a canary on what it and the champion did over the same window (see the module docstring).

    Raises:
        ValueError: both figures are of the same version.
    """
    if champion.version == canary.version:
        raise ValueError(f"the canary and the champion are the same version ({canary.version})")
    head = f"canary v{canary.version} vs champion v{champion.version}"
    if min(canary.requests, champion.requests) < rule.min_requests:
        reason = (f"{head}: {canary.requests} (canary) and {champion.requests} (champion) requests in the window, "
                  f"{rule.min_requests} needed each")
        return CanaryDecision("wait", reason, (reason,), champion, canary)
    failures, findings = _health(champion, canary, rule)
    state, quality = _quality(champion, canary, rule)
    if state == "fail":
        failures.append(quality)
    else:
        findings.append(quality)
    lines = tuple(failures + findings)
    if failures:
        return CanaryDecision("rollback", f"{head}: {'; '.join(failures)}", lines, champion, canary)
    if state == "ok":
        return CanaryDecision("promote", f"{head}: {'; '.join(findings)}", lines, champion, canary)
    return CanaryDecision("wait", f"{head}: {quality}", lines, champion, canary)
