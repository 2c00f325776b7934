"""Step 4, the gate: a candidate passes only if it clears the thresholds AND is not worse than the champion.

The primary metric, its direction and the default thresholds come from the task. A registered model
name belongs to one task and input signature: a candidate of another is refused (:func:`check_task_owner`)
unless the run says ``replace_task``, and is then gated on the thresholds alone. The champion is scored
on the candidate's own test split when it is comparable (a fair comparison after the data changed);
otherwise its logged test metric is used. An error while asking the registry, or a champion whose score
cannot be read, stops the gate (fail closed: never "no champion"). The parameters are checked before
anything else (:func:`parse_thresholds`, :func:`check_margin`); the CLI checks them before any step.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Final, TypeVar

import numpy as np

from pillars.components.errors import ConfigError, RegistryError
from pillars.components.evaluation.evaluate import split_metrics
from pillars.components.evaluation.scoring import Split
from pillars.components.model.predictor import Predictor, load_predictor
from pillars.components.records import GateDecision, as_test_metric
from pillars.components.data.splits import load_metadata
from pillars.components.registry.register import champion_version, downloaded_version
from pillars.components.parameters import parse_json_object
from pillars.components.registry import (Identity, RegistryUnavailable, TaskMismatch, client, identity, mismatch,
                                         signature_key)
from pillars.components.task import Preprocessing, Signature, Task
from pillars.components.registry.tracking import configure_tracking

logger = logging.getLogger(__name__)


def parse_thresholds(text: str, task: Task | None) -> dict[str, float]:
    """Thresholds from a JSON object string (``{"accuracy": 0.9}``); the task's defaults when empty.

    An empty object ``{}`` is refused: it would let any model through the thresholds, which is never
    what leaving them out means (leave the parameter empty for the task's defaults).

    Raises:
        ConfigError: not a JSON object of finite numbers, or ``{}``.
    """
    if not text.strip():
        return dict(task.thresholds) if task is not None else {}
    data = parse_json_object("thresholds", text, '{"accuracy": 0.9}')
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in data.values()):
        raise ConfigError(f"thresholds must map metric names to finite numbers, got {text!r}")
    if not data:
        raise ConfigError("thresholds {} sets no minimum at all; leave thresholds empty for the task's defaults, "
                          "or name at least one metric, e.g. {\"accuracy\": 0.9}")
    return {str(k): float(v) for k, v in data.items()}


MAX_MARGIN: Final = 1.0
"""The largest ``margin`` on a higher-is-better primary metric (accuracy, f1, r2: at most 1 apart)."""


def check_margin(margin: float, task: Task | None) -> float:
    """``margin`` when it is a finite number >= 0, and at most :data:`MAX_MARGIN` when the task's primary
    metric is higher-is-better (``task`` None: that bound is checked when the task is known).

    Raises:
        ConfigError: naming the bad margin.
    """
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin) or margin < 0:
        raise ConfigError(f"margin must be a finite number >= 0, got {margin!r}")
    if task is not None and not task.lower_is_better and margin > MAX_MARGIN:
        raise ConfigError(f"margin must be at most {MAX_MARGIN:g} for {task.primary_metric} (higher is better), "
                          f"got {margin:g}: a larger margin approves any model")
    return float(margin)


def lower_is_better(task: Task) -> frozenset[str]:
    """The metric names where lower is better for ``task`` (its primary metric when it says so)."""
    names = set(task.lower_is_better_metrics) | {"overfit_gap"}
    if task.lower_is_better:
        names.add(task.primary_metric)
    return frozenset(names)


def gate(
    metrics: Mapping[str, float],
    task: Task,
    thresholds: Mapping[str, float],
    margin: float = 0.0,
    champion_score: float | None = None,
    champion_version: str | None = None,
) -> GateDecision:
    """Decide on a candidate.

    Args:
        metrics: the candidate's test metrics (``accuracy``, ``rmse``, ...).
        task: gives the primary metric and the metrics' directions.
        thresholds: minimum values (maximum for lower-is-better metrics such as ``rmse`` and ``overfit_gap``)
            the candidate must meet.
        margin: how much worse than the champion on the primary metric the candidate may be (>= 0).
        champion_score: the champion's primary metric on the same test data.
        champion_version: the champion. Both None: there is no champion; a version without a finite
            score is an unreadable champion.

    Raises:
        ConfigError: a bad margin, a threshold on a metric the candidate does not have.
        RegistryError: there is a champion but its score is missing or not finite (fail closed: an
            unreadable champion never reads as "no champion").
    """
    check_margin(margin, task)
    reasons, ok = [], True
    lower_names = lower_is_better(task)
    for name, limit in thresholds.items():
        if name not in metrics:
            raise ConfigError(f"threshold on unknown metric {name!r}; metrics are: {', '.join(sorted(metrics))}")
        value = metrics[name]
        lower = name in lower_names
        passed = value <= limit if lower else value >= limit
        ok &= passed
        reasons.append(f"{name}={value:.4f} {'<=' if lower else '>='} {limit} {'passed' if passed else 'FAILED'}")
    primary = task.primary_metric
    if primary not in metrics:
        raise ConfigError(f"the task's primary metric {primary!r} is not among the metrics: "
                          f"{', '.join(sorted(metrics))}")
    candidate = metrics[primary]
    if champion_version is None and champion_score is None:
        reasons.append("no champion to compare with")
    elif champion_score is None or not np.isfinite(champion_score):
        raise RegistryError(f"the score of champion v{champion_version or '?'} ({primary}) cannot be read "
                            f"(got {champion_score}); the gate fails closed")
    else:
        better = candidate <= champion_score + margin if task.lower_is_better else candidate >= champion_score - margin
        ok &= better
        reasons.append(f"{primary}={candidate:.4f} vs champion v{champion_version} {champion_score:.4f} "
                       f"(margin {margin}) {'not worse' if better else 'WORSE'}")
    return GateDecision(bool(ok), reasons, champion_version, champion_score)


def comparable(predictor: Predictor, reference: str, signature: Signature, prep: Preprocessing) -> bool:
    """Whether a loaded model answers the same task with the same signature (and class names) as the
    candidate, so that scoring it on the candidate's test split is fair."""
    return (predictor.config.task == reference and predictor.signature == signature
            and predictor.prep.get("classes") == prep.get("classes"))


def champion_score(model_name: str, task: Task, reference: str, prep: Preprocessing, test: Split,
                   version: str | None = None) -> tuple[str | None, float | None, str]:
    """The champion's primary metric: scored on ``test`` when it is comparable (:func:`comparable`),
    else its logged value.

    Args:
        test: the candidate's test split (in memory, an ``.npz`` file, or shards, streamed).
        version: the champion already read (default: read it now).

    Returns:
        ``(version, score, how)``; ``(None, None, ...)`` when there is no champion; ``score`` None when
        its logged metric is missing (which :func:`gate` refuses).
    """
    version = version or champion_version(model_name)
    if version is None:
        return None, None, "no champion"
    signature = Signature.from_dict(json.loads(json.dumps(task.signature(prep).to_dict())))
    with downloaded_version(model_name, version) as folder:  # removed once scored
        predictor = load_predictor(folder)
        if comparable(predictor, reference, signature, prep):
            return version, split_metrics(predictor, test)[task.primary_metric], "scored on the same test split"
    c = client()
    run_id = c.get_model_version(model_name, version).run_id
    logged = c.get_run(run_id).data.metrics.get(as_test_metric(task.primary_metric)) if run_id else None
    return version, logged, "its logged test metric (other class names)"


def check_task_owner(model_name: str, reference: str, signature: str | None, replace_task: bool = False
                     ) -> tuple[str | None, str | None]:
    """Whether a run for task ``reference`` (input signature digest ``signature``, None: not known yet)
    may register under ``model_name``: a registered name belongs to its champion's task and signature.

    Returns:
        ``(champion, replaced)``: the champion read (None: none), and when ``replace_task`` lets the run
        replace a champion of another task or signature, the reason (else None).

    Raises:
        TaskMismatch: the champion is for another task or signature and ``replace_task`` is False.
        RegistryUnavailable: the registry failed.
    """
    version = champion_version(model_name)
    if version is None:
        return None, None
    why = mismatch(identity(model_name, version), Identity(reference, signature), "this run", f"champion v{version}")
    if why is None:
        return version, None
    if not replace_task:
        raise TaskMismatch(f"model {model_name!r} belongs to another task: {why}; use another model_name, or "
                           "pass --param replace_task=true to replace its task")
    return version, why


T = TypeVar("T")


def retry_unavailable(call: Callable[[], T], attempts: int = 3, pause_s: float = 10.0) -> T:
    """``call()``, tried again after ``pause_s`` while the registry is unavailable (an outage passes); any
    other error (a bad parameter, a task mismatch, a missing score) at once, never retried."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except RegistryUnavailable as e:
            if attempt == attempts:
                raise
            logger.warning("registry unavailable (%s); trying again in %.0fs", e, pause_s)
            time.sleep(pause_s)
    raise AssertionError("unreachable")


def run_gate(metrics_json: str, metadata_path: str, test_path: str, model_name: str, thresholds: str,
             margin: float, tracking_uri: str = "", replace_task: bool = False) -> GateDecision:
    """Apply :func:`gate` to the candidate's metrics against thresholds and the registry's champion.

    The parameters are checked first; a registry outage is retried here (the step itself is not
    retried, so a parameter error or a task mismatch fails the run at once).

    Args:
        replace_task: the candidate may replace a champion of another task or signature; it is then
            gated on the thresholds alone (the champion's score means nothing for it).
    """
    configure_tracking(tracking_uri or None)
    metadata = load_metadata(metadata_path)
    task = metadata.task_instance()
    limits = parse_thresholds(thresholds, task)
    check_margin(margin, task)
    signature = signature_key(task.signature(metadata.prep).to_dict()["inputs"])

    def decide() -> GateDecision:
        version, replaced = check_task_owner(model_name, metadata.task, signature, replace_task)
        if replaced is not None:
            decision = gate(json.loads(metrics_json), task, limits, margin, None, None)
            decision.reasons[-1] = f"replaces the task of champion v{version} (replace_task=true): {replaced}"
            decision.champion_version = version
            return decision
        version, score, how = champion_score(model_name, task, metadata.task, metadata.prep,
                                             test_path, version)
        decision = gate(json.loads(metrics_json), task, limits, margin, score, version)
        if version is not None:
            decision.reasons.append(f"champion {how}")
        return decision

    decision = retry_unavailable(decide)
    logger.info("gate for %s: %s (%s)", model_name, "approved" if decision.approved else "rejected",
                decision.reasons_text())
    return decision
