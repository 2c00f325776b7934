"""A registered model name belongs to one task and input signature: promote (CLI and console), rollback,
deploy and the gate refuse a version or a run of another, against a real ``mlflow server``; versions are
parsed strictly before anything moves; an odd model name never breaks a listing."""

from __future__ import annotations

import uuid
from urllib.parse import quote

import mlflow
import pytest
from fastapi.testclient import TestClient

from pillars.components import registry
from pillars.components.deploy.rollout import resolve_version
from pillars.components.errors import ConfigError, RegistryError
from pillars.components.registry.register import promote, register_model
from pillars.components.registry import LockTiming, RegistryUnavailable, TaskMismatch
from pillars.components.settings import Settings
from pillars.components.task import load_task, task_reference
from pillars.components.registry.tracking import ensure_experiment
from pillars.components.evaluation.gate import check_task_owner, gate, retry_unavailable
from pillars.console.app import create_app
from pillars.console.settings import ConsoleSettings
from pillars.console.versions import promote_version
from pillars.pipelines.cli import main
from tests.models import save_classifier

FAST = LockTiming(lease=60.0, wait=120.0)
CANCER, DIABETES = task_reference("breast_cancer"), task_reference("diabetes")  # as registrations record them
INPUTS_A = registry.signature_key([{"name": "input-0", "shape": [3]}])
INPUTS_B = registry.signature_key([{"name": "input-0", "shape": [10]}])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_classifier(tmp_path_factory.mktemp("model") / "model", hidden_sizes=[4])


@pytest.fixture
def name(tracking_uri):
    return f"own-{uuid.uuid4().hex[:8]}"


def _register(model_dir, name: str, task: str, signature: str | None = INPUTS_A, score: float = 0.9) -> str:
    with mlflow.start_run(experiment_id=ensure_experiment(name)) as run:
        mlflow.log_metric("test_accuracy", score)
    tags = {"task": task, **({registry.SIGNATURE_TAG: signature} if signature else {})}
    return register_model(model_dir, None, name, run.info.run_id, tags)


def _champion_moves(name: str) -> list[tuple[str | None, str | None]]:
    return [(e.from_version, e.to_version) for e in registry.history(name, registry.CHAMPION)]


def _error(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("pillars: error:")]
    assert len(lines) == 1, lines
    return lines[0]


def test_no_version_of_another_task_or_signature_becomes_champion(name, model_dir, capsys):
    v1 = _register(model_dir, name, "breast_cancer")
    v2 = _register(model_dir, name, "diabetes")
    v3 = _register(model_dir, name, "breast_cancer", INPUTS_B)
    v4 = _register(model_dir, name, "breast_cancer")
    promote(name, v1, "first", timing=FAST)
    moves = _champion_moves(name)

    # promote: the function every path uses, the CLI, the console's action
    with pytest.raises(TaskMismatch, match=f"cannot promote v{v2}: v{v2} is for task diabetes, champion v{v1} "
                                           "for task breast_cancer"):
        promote(name, v2, "manual", timing=FAST)
    assert main(["models", "promote", name, v3]) == 2
    assert _error(capsys) == (f"pillars: error: {name}: cannot promote v{v3}: v{v3} takes other inputs than "
                              f"champion v{v1} (both task breast_cancer)")
    with pytest.raises(TaskMismatch, match="is for task diabetes"):
        promote_version(name, v2, v1, "in the console")
    # rollback and deploy
    assert main(["models", "rollback", name, "--to", v2]) == 2
    assert _error(capsys) == (f"pillars: error: {name}: cannot roll back to v{v2}: v{v2} is for task diabetes, "
                              f"champion v{v1} for task breast_cancer")
    assert registry.alias_version(name, registry.CHALLENGER) == v4
    registry.move_alias(name, registry.CHALLENGER, v3, "test: the other signature is the challenger")
    with pytest.raises(TaskMismatch, match=f"cannot deploy v{v3}"):
        resolve_version(name, registry.CHALLENGER)
    assert main(["deploy", f"{name}@challenger", "--dry-run"]) == 2
    assert f"cannot deploy v{v3}" in _error(capsys)
    assert resolve_version(name, registry.CHAMPION) == v1
    assert registry.alias_version(name, registry.CHAMPION) == v1 and _champion_moves(name) == moves

    # the same task and signature still moves; an explicit replacement is recorded as one
    assert main(["models", "promote", name, v4]) == 0
    assert promote(name, v2, "diabetes now", timing=FAST, replace_task=True)
    last = registry.history(name, registry.CHAMPION)[-1]
    assert (last.from_version, last.to_version) == (v4, v2)
    assert last.why == (f"diabetes now; replaces the task (v{v2} is for task diabetes, champion v{v4} for task "
                        "breast_cancer; replace_task=true)")
    # a rollback after the replacement would bring the other task back: refused too
    with pytest.raises(TaskMismatch, match=f"cannot roll back to v{v4}"):
        registry.rollback(name, "undo", timing=FAST)


def test_a_run_for_another_task_is_refused_unless_it_replaces_the_task(name, model_dir, tmp_path, monkeypatch,
                                                                     capfd):
    v1 = _register(model_dir, name, DIABETES)
    assert check_task_owner(name, DIABETES, INPUTS_A) == (None, None)  # no champion yet
    promote(name, v1, "first", timing=FAST)
    monkeypatch.setenv("PILLARS_HOME", str(tmp_path / ".pillars"))
    assert main(["run", "training", "--task", "breast_cancer", "--param", f"model_name={name}"]) == 2
    err = capfd.readouterr().err
    assert err.splitlines()[-1] == (f"pillars: error: model {name!r} belongs to another task: this run is for task "
                                    f"breast_cancer, champion v{v1} for task diabetes; use another model_name, or "
                                    "pass --param replace_task=true to replace its task")
    assert "prepare-data" not in err, "refused before any step"
    assert len(registry.search_versions(name)) == 1, "nothing registered"
    assert check_task_owner(name, DIABETES, INPUTS_A) == (v1, None)
    assert check_task_owner(name, DIABETES, None) == (v1, None)  # signature not known yet (the CLI)
    with pytest.raises(TaskMismatch) as refused:
        check_task_owner(name, CANCER, INPUTS_A)
    assert str(refused.value) == (f"model {name!r} belongs to another task: this run is for task breast_cancer, "
                                  f"champion v{v1} for task diabetes; use another model_name, or pass "
                                  "--param replace_task=true to replace its task")
    with pytest.raises(TaskMismatch, match="takes other inputs"):
        check_task_owner(name, DIABETES, INPUTS_B)
    version, replaced = check_task_owner(name, CANCER, INPUTS_A, replace_task=True)
    assert version == v1 and "champion v1 for task diabetes" in replaced


def test_a_champion_whose_score_cannot_be_read_fails_the_gate_closed():
    task = load_task("breast_cancer")
    for unreadable in (None, float("nan")):
        with pytest.raises(RegistryError, match="score of champion v3 .accuracy. cannot be read"):
            gate({"accuracy": 0.5}, task, {}, 0.0, unreadable, "3")
    assert gate({"accuracy": 0.95}, task, {}, 0.0, None, None).reasons == ["no champion to compare with"]


def test_the_gate_retries_a_registry_outage_but_never_a_parameter_error():
    calls = []

    def bad_parameter():
        calls.append("config")
        raise ConfigError("margin must be a finite number >= 0, got -1")

    with pytest.raises(ConfigError):
        retry_unavailable(bad_parameter, pause_s=0)
    assert calls == ["config"]

    def outage_then_answer():
        calls.append("outage")
        if calls.count("outage") < 3:
            raise RegistryUnavailable("down")
        return "decided"

    assert retry_unavailable(outage_then_answer, pause_s=0) == "decided"
    assert calls.count("outage") == 3


@pytest.mark.parametrize("bad", ["05", "+6", " 3", "3.0", "0", "٣"])
def test_a_version_is_parsed_strictly_before_anything_moves(name, model_dir, capsys, bad):
    for _ in range(2):
        _register(model_dir, name, "breast_cancer")
    promote(name, "2", "first", timing=FAST)
    moves = _champion_moves(name)
    for command in (["models", "rollback", name, "--to", bad], ["models", "promote", name, bad]):
        assert main(command) == 2
        assert _error(capsys) == ("pillars: error: a model version is a whole number from 1 without leading "
                                  f"zeros or sign, got {bad!r}")
    assert registry.alias_version(name, registry.CHAMPION) == "2" and _champion_moves(name) == moves
    assert main(["models", "rollback", name, "--to", "1"]) == 0


def test_an_odd_model_name_never_breaks_a_listing(tracking_uri, model_dir, tmp_path, capsys):
    suffix = uuid.uuid4().hex[:6]
    odd = [f"o'reilly-{suffix}", f'say "hi"-{suffix}', f"both'\"q-{suffix}", f"both_'q-{suffix}"]
    for n in odd:
        _register(model_dir, n, "breast_cancer")
    _register(model_dir, odd[0], "breast_cancer")
    assert main(["models", "list"]) == 0
    listed = capsys.readouterr().out
    for n, latest in zip(odd, ("2", "1", "1", "1")):
        assert f"{n:<30} latest v{latest}" in listed, listed
        rows = registry.list_versions(n)
        assert [r.version for r in rows] == [str(v) for v in range(int(latest), 0, -1)]
        assert {registry.client().get_model_version(n, r.version).name for r in rows} == {n}
        assert main(["models", "show", n]) == 0
        assert capsys.readouterr().out.startswith(f"{n} v{latest}")
    app = create_app(ConsoleSettings(host="127.0.0.1"), None, Settings(home=tmp_path / ".pillars"))
    client = TestClient(app, base_url="http://127.0.0.1:8700")
    page = client.get("/models")
    assert page.status_code == 200 and "reilly" in page.text
    assert [client.get(f"/models/{quote(n, safe='')}").status_code for n in odd] == [200] * len(odd)


def test_a_version_tagged_with_a_task_name_is_the_same_task_as_its_entry_point():
    """Registrations outside the pipeline (and Pillars 0.1) tag the installed name; the pipeline tags
    ``module:attribute``: both name one task, so neither refuses the other."""
    from pillars.components.registry import Identity, canonical_task, mismatch

    assert canonical_task("breast_cancer") == "pillars.tasks.tabular:breast_cancer"
    assert canonical_task("not_installed") == "not_installed" and canonical_task(None) is None
    named = Identity(canonical_task("breast_cancer"), None)
    assert mismatch(named, Identity("pillars.tasks.tabular:breast_cancer", None), "run", "champion") is None
    assert mismatch(named, Identity("pillars.tasks.tabular:diabetes", None), "run", "champion")
