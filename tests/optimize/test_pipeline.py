"""The optimize pipeline compiles for a cluster like the others, with the step's secrets and parameters."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pillars.components.errors import ConfigError
from pillars.components.optimize.variants import VARIANTS
from pillars.pipelines.compile import PIPELINES, compile_pipeline
from pillars.pipelines.optimize import optimize_pipeline
from pillars.pipelines.training import check_arguments


def test_optimize_compiles_with_its_parameters_one_step_and_the_mlflow_secret(tmp_path):
    assert "optimize" in PIPELINES
    out = compile_pipeline("optimize", str(tmp_path / "optimize.yaml"), image="registry.example/pillars:1",
                           mlflow_secret="pillars-mlflow-auth")
    docs = list(yaml.safe_load_all(Path(out).read_text()))
    spec = docs[0]
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert "defaultValue" not in params["model"]  # required: which registered version
    assert params["variants"]["defaultValue"] == ",".join(VARIANTS)
    assert params["max_drop_points"]["defaultValue"] == 1.0
    assert list(spec["root"]["dag"]["tasks"]) == ["optimize"]
    executor = spec["deploymentSpec"]["executors"]["exec-optimize"]["container"]
    assert executor["image"] == "registry.example/pillars:1"
    secrets = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-optimize"]["secretAsEnv"]
    assert secrets[0]["secretName"] == "pillars-mlflow-auth"


def test_running_optimize_without_a_model_names_the_missing_parameter():
    with pytest.raises(ConfigError, match="missing required parameter\\(s\\): model"):
        check_arguments(optimize_pipeline(image="x/y:1"), {})


@pytest.mark.parametrize("name", ["training", "retraining"])
def test_training_pipelines_can_optimize_the_new_champion_off_by_default(tmp_path, name):
    out = compile_pipeline(name, str(tmp_path / f"{name}.yaml"), image="registry.example/pillars:1")
    spec = next(yaml.safe_load_all(Path(out).read_text()))
    assert spec["root"]["inputDefinitions"]["parameters"]["optimize"]["defaultValue"] is False
    approved = spec["root"]["dag"]["tasks"]["condition-1"]
    inner = spec["components"][approved["componentRef"]["name"]]["dag"]["tasks"]
    optimize = spec["components"][inner["condition-2"]["componentRef"]["name"]]["dag"]["tasks"]["optimize"]
    assert inner["condition-2"]["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--optimize'] == true"
    assert inner["condition-2"]["dependentTasks"] == ["promote"]  # only once the champion moved
    arguments = optimize["inputs"]["parameters"]
    # the version this run registered (and promoted), not whatever the alias points to later
    assert arguments["model"]["componentInputParameter"] == "pipelinechannel--register-model_name"
    assert arguments["model_version"]["componentInputParameter"] == "pipelinechannel--register-version"
