"""The optimize pipeline compiles for a cluster like the others, with the step's secrets and parameters."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pillars.components.errors import ConfigError
from pillars.components.optimize import VARIANTS
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
