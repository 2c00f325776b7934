"""The registry against a real ``mlflow server``: the gate fails closed, promotion is compare-and-set,
rollback never flip-flops, a retried registration completes."""

from __future__ import annotations

import json
import threading
import time
import uuid

import mlflow
import numpy as np
import pytest

from pillars.components import registry
from pillars.components.errors import RegistryError
from pillars.components.records import GateDecision
from pillars.components.registry.register import promote, promote_gated, register_model
from pillars.components.registry import ChampionMoved, LockTiming, RegistryUnavailable
from pillars.components.task import load_task
from pillars.components.registry.tracking import ensure_experiment
from pillars.components.evaluation.gate import champion_score, gate
from pillars.pipelines.cli import main
from tests.models import TABULAR, save_classifier, tabular_prep
from tests.processes import free_port

FAST = LockTiming(lease=60.0, wait=120.0)


@pytest.fixture
def model_dir(tmp_path):
    return save_classifier(tmp_path / "model", hidden_sizes=[4])


@pytest.fixture
def name(tracking_uri):
    """A model name of this test's own on the shared server."""
    return f"toy-{uuid.uuid4().hex[:8]}"


def _register(model_dir, name: str, score: float | None = None) -> str:
    with mlflow.start_run(experiment_id=ensure_experiment(name)) as run:
        if score is not None:
            mlflow.log_metric("test_accuracy", score)
    return register_model(model_dir, None, name, run.info.run_id, {"task": "breast_cancer"})


def _champion_moves(name: str) -> list[tuple[str | None, str | None]]:
    return [(e.from_version, e.to_version) for e in registry.history(name, registry.CHAMPION)]


def test_a_missing_alias_or_model_on_the_server_means_no_champion(name, model_dir):
    assert registry.alias_version(name, registry.CHAMPION) is None  # no such model
    _register(model_dir, name)
    assert registry.alias_version(name, registry.CHAMPION) is None  # model, no champion
    assert registry.alias_version(name, registry.CHALLENGER) == "1"


def test_the_gate_fails_closed_when_the_registry_is_unreachable(name, model_dir, monkeypatch, tracking_uri):
    v1 = _register(model_dir, name, score=0.99)
    promote(name, v1, "first", timing=FAST)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there: the registry is down
    mlflow.set_tracking_uri(down)
    task = load_task("breast_cancer")
    test = {"input-0": np.ones((4, 3), dtype=np.float32), "label": np.array([0, 1, 0, 1])}
    with pytest.raises(RegistryUnavailable, match="cannot read alias 'champion'"):
        champion_score(name, task, TABULAR, tabular_prep(["a", "b", "c"]), test)
    with pytest.raises(RegistryUnavailable):
        promote(name, "2", "must not move", expected=None, timing=FAST)
    mlflow.set_tracking_uri(tracking_uri)
    assert registry.alias_version(name, registry.CHAMPION) == v1  # nothing moved
    assert _champion_moves(name) == [(None, "1")]
    # what the gate would have done with "no champion": approve on thresholds alone
    assert gate({"accuracy": 0.95}, task, {"accuracy": 0.9}).approved


def test_concurrent_promotions_against_the_same_champion_move_it_once(name, model_dir):
    v1, v2, v3 = (_register(model_dir, name) for _ in range(3))
    promote(name, v1, "first", timing=FAST)
    start = threading.Barrier(2)
    outcome: dict[str, object] = {}

    def run(version: str) -> None:
        start.wait()
        try:
            outcome[version] = promote(name, version, f"gated against v{v1}", expected=v1, timing=FAST)
        except Exception as e:  # noqa: BLE001 - kept for the assertion's message
            outcome[version] = e

    threads = [threading.Thread(target=run, args=(v,)) for v in (v2, v3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    winners = [v for v, result in outcome.items() if result is True]
    losers = [v for v, result in outcome.items() if isinstance(result, ChampionMoved)]
    assert len(winners) == 1 and len(losers) == 1, outcome
    assert registry.alias_version(name, registry.CHAMPION) == winners[0]
    assert _champion_moves(name) == [(None, v1), (v1, winners[0])]  # exactly one move from v1
    assert registry.alias_version(registry.lock_name(name, registry.CHAMPION), "x") is None  # lock released


def test_a_lock_abandoned_by_a_crashed_mover_is_taken_over_after_its_lease(name, model_dir):
    v1 = _register(model_dir, name)
    registry.client().create_registered_model(registry.lock_name(name, registry.CHAMPION), tags={
        registry.LOCK_TAG: json.dumps({"token": "crashed", "until": time.time() + 1.5})})
    started = time.monotonic()
    assert promote(name, v1, "first", expected=None, timing=FAST)
    assert time.monotonic() - started >= 1.0  # it waited for the lease, then took the lock over
    assert [row["name"] for row in registry.list_models() if row["name"].startswith(name)] == [name]


def test_the_worse_candidate_never_replaces_a_better_champion(name, model_dir):
    scores = {}
    for score in (0.90, 0.97, 0.93):  # v1 champion, v2 the best, v3 better than v1 only
        scores[_register(model_dir, name)] = score
    promote(name, "1", "first", timing=FAST)
    task = load_task("breast_cancer")

    def regate_for(version: str):
        def regate():
            champion = registry.alias_version(name, registry.CHAMPION)
            return gate({"accuracy": scores[version]}, task, {}, 0.0, scores[champion], champion)
        return regate

    start = threading.Barrier(2)
    results: dict[str, object] = {}

    def run(version: str) -> None:
        start.wait()
        results[version] = promote_gated(name, version, GateDecision(True, ["approved against v1"], "1"), regate_for(version),
                                         timing=FAST)

    threads = [threading.Thread(target=run, args=(v,)) for v in ("2", "3")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results["2"] is True, results
    assert registry.alias_version(name, registry.CHAMPION) == "2"
    moves = _champion_moves(name)
    assert ("2", "3") not in moves and moves[-1][1] == "2", moves
    # and deterministically: v3, gated against v1, finds v2 champion, is gated again and refused
    assert promote_gated(name, "3", GateDecision(True, ["approved against v1"], "1"), regate_for("3"), timing=FAST) is False
    assert registry.alias_version(name, registry.CHAMPION) == "2" and _champion_moves(name) == moves


def test_rollback_goes_back_and_never_flip_flops(name, model_dir, capsys):
    for _ in range(3):
        _register(model_dir, name)
    for v in ("1", "2", "3"):
        promote(name, v, f"promote v{v}", timing=FAST)
    assert registry.rollback(name, "canary errors", timing=FAST).to_version == "2"
    assert registry.rollback(name, "still bad", timing=FAST).to_version == "1"  # not back to 3
    with pytest.raises(RegistryError, match="no earlier champion that was not rolled back"):
        registry.rollback(name, "again", timing=FAST)
    assert registry.alias_version(name, registry.CHAMPION) == "1"
    assert set(registry.rolled_back(name)) == {"3", "2"}
    assert registry.rolled_back(name)["3"]["why"] == "canary errors"

    assert main(["models", "rollback", name, "--to", "3", "--why", "fixed upstream"]) == 0
    assert registry.alias_version(name, registry.CHAMPION) == "3"
    assert set(registry.rolled_back(name)) == {"2", "1"}  # chosen explicitly: no longer marked
    capsys.readouterr()
    assert main(["models", "history", name]) == 0
    out = capsys.readouterr().out
    assert "rollback from v3: canary errors" in out and "v2 rolled back (to v1): still bad" in out
    assert main(["models", "rollback", name, "--to", "9"]) != 0
    assert f"{name} has no version '9'" in capsys.readouterr().err


def test_a_retried_registration_still_sets_the_challenger(name, model_dir):
    with mlflow.start_run(experiment_id=ensure_experiment(name)) as run:
        pass
    # the first try registered the version and died before moving the alias
    c = registry.client()
    c.create_registered_model(name)
    c.create_model_version(name, f"{run.info.artifact_uri}/first-try", run_id=run.info.run_id)
    assert registry.alias_version(name, registry.CHALLENGER) is None
    assert register_model(model_dir, None, name, run.info.run_id, {}) == "1"
    assert registry.alias_version(name, registry.CHALLENGER) == "1"
    newer = _register(model_dir, name)
    assert register_model(model_dir, None, name, run.info.run_id, {}) == "1"  # a late retry
    assert registry.alias_version(name, registry.CHALLENGER) == newer  # keeps the newer challenger
