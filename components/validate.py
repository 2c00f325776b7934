"""Step 4, the gate: a candidate passes only if it clears the thresholds AND is not worse than the champion.

The primary metric, its direction and the default thresholds come from the task. The champion is scored
on the candidate's own test split when it is a model of the same task with the same signature (a fair
comparison after the data changed); otherwise its logged test metric is used. An error while asking the
registry stops the gate (fail closed).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping

import numpy as np

from pillars.components.errors import ConfigError
from pillars.components.evaluate import split_metrics
from pillars.components.predictor import Predictor, load_predictor
from pillars.components.prepare_data import load_metadata, load_split, task_of
from pillars.components.register import champion_version, downloaded_version
from pillars.components.registry import client
from pillars.components.task import Examples, Preprocessing, Signature, Task
from pillars.components.tracking import configure_tracking

logger = logging.getLogger("pillars.validate")


@dataclasses.dataclass
class GateDecision:
    """Whether the candidate may become champion, and why."""

    approved: bool
    reasons: list[str]
    champion_version: str | None = None
    champion_score: float | None = None


def parse_thresholds(text: str, task: Task | None) -> dict[str, float]:
    """Thresholds from a JSON object string (``{"accuracy": 0.9}``); the task's defaults when empty."""
    if not text.strip():
        return dict(task.thresholds) if task is not None else {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"thresholds must be a JSON object like '{{\"accuracy\": 0.9}}': {e}") from e
    if not isinstance(data, dict) or not all(isinstance(v, (int, float)) for v in data.values()):
        raise ConfigError(f"thresholds must map metric names to numbers, got {text!r}")
    return {str(k): float(v) for k, v in data.items()}


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
        champion_score: the champion's primary metric on the same test data, None when there is no champion.
        champion_version: for the reasons.
    """
    if margin < 0:
        raise ConfigError(f"margin must be >= 0, got {margin}")
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
    if champion_score is None or not np.isfinite(champion_score):
        reasons.append("no champion to compare with")
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


def champion_score(model_name: str, task: Task, reference: str, prep: Preprocessing, test: Examples
                   ) -> tuple[str | None, float | None, str]:
    """The champion's primary metric: scored on ``test`` when it is comparable (:func:`comparable`),
    else its logged value.

    Returns:
        ``(version, score, how)``; ``(None, None, ...)`` when there is no champion.
    """
    version = champion_version(model_name)
    if version is None:
        return None, None, "no champion"
    signature = Signature.from_dict(json.loads(json.dumps(task.signature(prep).to_dict())))
    with downloaded_version(model_name, version) as folder:  # removed once scored
        predictor = load_predictor(folder)
        if comparable(predictor, reference, signature, prep):
            return version, split_metrics(predictor, test)[task.primary_metric], "scored on the same test split"
    c = client()
    run_id = c.get_model_version(model_name, version).run_id
    logged = c.get_run(run_id).data.metrics.get(f"test_{task.primary_metric}")
    return version, logged, "another task or signature: its logged test metric"


def run_gate(metrics_json: str, metadata_path: str, test_path: str, model_name: str, thresholds: str,
             margin: float, tracking_uri: str = "") -> GateDecision:
    """Apply :func:`gate` to the candidate's metrics against thresholds and the registry's champion."""
    configure_tracking(tracking_uri or None)
    metadata = load_metadata(metadata_path)
    task = task_of(metadata)
    version, score, how = champion_score(model_name, task, metadata["task"], metadata["prep"], load_split(test_path))
    decision = gate(json.loads(metrics_json), task, parse_thresholds(thresholds, task), margin, score, version)
    if version is not None:
        decision.reasons.append(f"champion {how}")
    logger.info("gate for %s: %s (%s)", model_name, "approved" if decision.approved else "rejected",
                "; ".join(decision.reasons))
    return decision
