"""Registration in a real (embedded) MLflow store: idempotency, aliases, history, rollback, pyfunc."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest

from pillars.components import registry
from pillars.components.errors import RegistryError
from pillars.components.registry.register import promote, register_model
from pillars.components.registry.tracking import ensure_experiment
from tests.models import save_classifier


@pytest.fixture
def model_dir(tmp_path):
    return save_classifier(tmp_path / "model", hidden_sizes=[4])


def _run() -> str:
    with mlflow.start_run(experiment_id=ensure_experiment("toy")) as run:
        return run.info.run_id


def test_registering_a_run_twice_gives_one_version(local_store, model_dir):
    run_id = _run()
    first = register_model(model_dir, {"rows": 3}, "toy", run_id, {"kfp_run_id": "k1"})
    again = register_model(model_dir, {"rows": 3}, "toy", run_id, {"kfp_run_id": "k1"})
    assert first == again == "1"
    assert len(registry.client().search_model_versions("name='toy'")) == 1
    version = registry.client().get_model_version("toy", "1")
    assert version.tags["kfp_run_id"] == "k1" and version.tags["mlflow_run_id"] == run_id
    assert "code_version" in version.tags
    assert registry.alias_version("toy", registry.CHALLENGER) == "1"


def test_champion_loads_through_mlflow_pyfunc_with_profile(local_store, model_dir):
    version = register_model(model_dir, {"rows": 3}, "toy", _run(), {})
    promote("toy", version, "first model")
    model = mlflow.pyfunc.load_model("models:/toy@champion")
    out = model.predict(pd.DataFrame(np.ones((4, 3)), columns=["a", "b", "c"]))
    assert list(out.columns) == ["label", "class_index", "prob_no", "prob_yes"]
    np.testing.assert_allclose(out[["prob_no", "prob_yes"]].sum(axis=1), 1.0, rtol=1e-5)
    local = mlflow.artifacts.download_artifacts("models:/toy@champion")
    assert (pytest.importorskip("pathlib").Path(local) / "artifacts" / "data_profile.json").is_file()


def test_alias_moves_are_recorded_and_rollback_restores_the_previous_champion(local_store, model_dir):
    v1 = register_model(model_dir, None, "toy", _run(), {})
    assert promote("toy", v1, "first")
    v2 = register_model(model_dir, None, "toy", _run(), {})
    assert promote("toy", v2, "better accuracy")
    assert not promote("toy", v2, "again")  # no move, nothing recorded
    moves = registry.history("toy", registry.CHAMPION)
    assert [(m.from_version, m.to_version, m.why) for m in moves] == [(None, "1", "first"), ("1", "2", "better accuracy")]
    event = registry.rollback("toy", "bad canary")
    assert (event.from_version, event.to_version) == ("2", "1")
    assert registry.alias_version("toy", registry.CHAMPION) == "1"
    assert registry.history("toy")[-1].why == "rollback from v2: bad canary"
    assert registry.rolled_back("toy")["2"]["why"] == "bad canary"


def test_rollback_without_a_previous_champion_is_refused(local_store, model_dir):
    with pytest.raises(RegistryError, match="no registered model named 'toy'"):
        registry.rollback("toy")
    v1 = register_model(model_dir, None, "toy", _run(), {})
    with pytest.raises(RegistryError, match="no champion"):
        registry.rollback("toy")
    promote("toy", v1, "first")
    with pytest.raises(RegistryError, match="no earlier champion"):
        registry.rollback("toy")
