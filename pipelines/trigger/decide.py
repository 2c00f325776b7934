"""The decision on one alert: whether it starts a run, and the webhook answer's status.

:class:`Decider` de-duplicates alerts and keeps each model's cool-down; :func:`answer_status` turns the
decisions of one call into the status Alertmanager acts on (503: it retries; 422: refused for good).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pillars.components.errors import ConfigError
from pillars.components.registry.references import check_model_name

ACTION_LABEL = "pillars_action"
RETRAIN = "retrain"
MAX_BODY_BYTES = 1024 * 1024
DECISIONS = ("started", "duplicate", "cooldown", "resolved", "not_retrainable", "invalid", "unknown_model",
             "unavailable", "failed", "limited", "busy")
RETRY = ("failed", "unavailable", "limited", "busy")
"""Decisions that make the call answer 503, so Alertmanager sends the alerts again."""
REFUSED = ("invalid", "unknown_model")
"""Decisions that make the call answer 422 (when none asks for a retry): Alertmanager does not retry 4xx."""
LOG_NAME_CHARS = 60
"""Model-name characters kept in run log file names and log lines."""


@dataclasses.dataclass(frozen=True)
class Decision:
    """What the trigger did with one alert, and why (``key``: the alert's fingerprint and start)."""

    model: str
    action: str
    reason: str
    key: tuple[str, str] = ("", "")

REASON_CHARS = 300
"""Most characters of an alert's description kept in a decision's reason."""


def alert_reason(alert: Mapping[str, Any]) -> str:
    """Why a retraining alert fired, in one line: its name, its ``signal`` label (``weighted_drift``,
    ``prediction_drift``, ``estimated_accuracy``) and its description (which names the drifted features)."""
    labels = alert.get("labels") if isinstance(alert.get("labels"), Mapping) else {}
    annotations = alert.get("annotations") if isinstance(alert.get("annotations"), Mapping) else {}
    reason = f"{labels.get('alertname', 'alert')} firing"
    if labels.get("signal"):
        reason += f" (signal {str(labels['signal'])[:40]})"
    description = " ".join(str(annotations.get("description", "")).split())
    return f"{reason}: {description[:REASON_CHARS]}" if description else reason


class Decider:
    """De-duplication and per-model cool-down; thread-safe; bounded memory; time injectable for tests.

    ``decide`` reserves a ``started`` alert (its key and the model's start time) at once, so a second
    copy arriving while the first starts is a duplicate; :meth:`forget_start` drops the reservation
    when the start fails or is not attempted.
    """

    def __init__(self, cooldown: float, clock: Callable[[], float] = time.time, memory: int = 10_000) -> None:
        self.cooldown = cooldown
        self.clock = clock
        self.memory = memory
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._last_start: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def decide(self, alert: Mapping[str, Any]) -> Decision:
        """Whether ``alert`` (one entry of the webhook's ``alerts``) should start a run."""
        labels = alert.get("labels") or {}
        if not isinstance(labels, Mapping):
            labels = {}
        model = str(labels.get("model", ""))
        if alert.get("status") != "firing":
            return Decision(model, "resolved", "alert is not firing")
        if not model or labels.get(ACTION_LABEL) != RETRAIN:
            return Decision(model, "not_retrainable", f"needs a model label and {ACTION_LABEL}={RETRAIN}")
        try:
            check_model_name(model)
        except ConfigError as e:
            return Decision(model, "invalid", str(e))
        key = (str(alert.get("fingerprint", "")), str(alert.get("startsAt", "")))
        now = self.clock()
        with self._lock:
            if key[0] and key in self._seen:
                return Decision(model, "duplicate", f"alert {key[0]} since {key[1]} already started a run", key)
            last = self._last_start.get(model)
            if last is not None and now - last < self.cooldown:
                return Decision(model, "cooldown", f"last run {now - last:.0f}s ago; cool-down {self.cooldown:.0f}s",
                                key)
            if key[0]:
                self._seen[key] = now
                self._seen.move_to_end(key)
            self._last_start[model] = now
            self._last_start.move_to_end(model)
            self._bound(now)
        return Decision(model, "started", alert_reason(alert), key)

    def forget_start(self, model: str, key: tuple[str, str] = ("", "")) -> None:
        """A run failed to start (or was not attempted): the next copy of the alert may try again."""
        with self._lock:
            self._last_start.pop(model, None)
            self._seen.pop(key, None)

    def sizes(self) -> tuple[int, int]:
        """How many alerts and models are remembered."""
        with self._lock:
            return len(self._seen), len(self._last_start)

    def _bound(self, now: float) -> None:
        while self._last_start and now - next(iter(self._last_start.values())) >= self.cooldown:
            self._last_start.popitem(last=False)  # past its cool-down: nothing left to remember
        for memory in (self._seen, self._last_start):
            while len(memory) > self.memory:
                memory.popitem(last=False)

def answer_status(decisions: Sequence[str]) -> int:
    """503 when a decision may change on a retry, else 422 when an alert was refused for good, else 200."""
    if any(d in RETRY for d in decisions):
        return 503
    return 422 if any(d in REFUSED for d in decisions) else 200
