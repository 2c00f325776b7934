"""Registering variants against a real ``mlflow server``: tags, alias ``edge`` (compare-and-set),
``champion`` never moves, nothing registered for a model that is not there or variants that fail."""

from __future__ import annotations

import copy

import mlflow
import pytest

from pillars.components import registry
from pillars.components.errors import RegistryError
from pillars.components.optimize import FitParams, OptimizeParams, evaluate_predictor, optimize_model
from pillars.components.predictor import load_predictor
from pillars.components.register import downloaded_version
from pillars.components.register_variants import EDGE, TAGS, register_variants, run_optimize


def _register_parent(name: str, directory) -> str:
    """The saved folder as a registered version (plain artifacts, as the variants are) and the champion."""
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(directory), "model")
        mlflow.log_params({"seed": 0})
        source = mlflow.get_artifact_uri("model")
    registry.client().create_registered_model(name)
    version = registry.client().create_model_version(name, source, run_id=run.info.run_id).version
    registry.move_alias(name, registry.CHAMPION, str(version), "test parent")
    return str(version)


def test_passing_variants_become_tagged_versions_and_edge_goes_to_the_fastest(tracking_uri, line, tmp_path):
    name = "opt-line-variants"
    parent = _register_parent(name, line.directory)
    report = optimize_model(line.directory, line.trained.data, tmp_path, OptimizeParams(
        variants=("onnx", "onnx-int8", "pruned"), prune_fit=FitParams(epochs=1, learning_rate=1e-4),
        timing_repeats=3), parent=f"{name}/{parent}")
    done = register_variants(report, name, parent)
    passing = {v.variant: v for v in report.passing()}
    assert set(done.versions) == set(passing) and passing
    for variant, version in done.versions.items():
        tags = registry.client().get_model_version(name, version).tags
        assert set(TAGS) <= set(tags)
        assert tags["pillars.variant"] == variant and tags["pillars.parent_version"] == parent
        assert int(tags["pillars.size_bytes"]) == passing[variant].footprint.size_bytes
        assert float(tags["pillars.metric_delta"]) == pytest.approx(passing[variant].metric_delta, abs=1e-5)
    edge = report.edge()
    assert done.edge == done.versions[edge.variant] == registry.alias_version(name, EDGE)
    assert registry.alias_version(name, registry.CHAMPION) == parent  # never moved by optimisation
    assert registry.alias_version(name, registry.CHALLENGER) is None
    assert [e.alias for e in registry.history(name)] == [registry.CHAMPION, EDGE]

    with downloaded_version(name, done.edge) as folder:  # what `pillars serve models:/NAME@edge` loads
        served = load_predictor(folder)
        assert served.config.extra["variant"] == edge.variant
        assert evaluate_predictor(served, line.trained.data.test)["rmse"] == pytest.approx(edge.metrics["rmse"])

    failing = copy.deepcopy(report)
    for variant in failing.variants:
        variant.passed = False
    again = register_variants(failing, name, parent)
    assert again.versions == {} and again.edge == done.edge
    assert len(registry.client().search_model_versions(f"name='{name}'")) == 1 + len(passing)


def test_the_whole_step_on_a_registered_champion_and_a_model_that_is_not_registered(tracking_uri, line):
    with pytest.raises(RegistryError, match="^no registered model named 'opt-missing'$"):
        run_optimize("models:/opt-missing@champion")
    name = "opt-line"
    parent = _register_parent(name, line.directory)
    with pytest.raises(RegistryError, match="opt-line has no version with alias 'edge'"):
        run_optimize(f"models:/{name}@edge")
    report, done = run_optimize(f"models:/{name}@champion", OptimizeParams(variants=("onnx",), timing_repeats=3))
    assert report.original.metrics == line.trained.evaluate()  # the parent's own test split, rebuilt
    assert list(done.versions) == ["onnx"] and done.edge == done.versions["onnx"]
    assert registry.alias_version(name, registry.CHAMPION) == parent


def test_pillars_optimize_names_a_model_that_is_not_registered_in_one_line(tracking_uri, capsys):
    from pillars.pipelines.cli import main

    assert main(["optimize", "models:/opt-nowhere@champion"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "pillars: error: no registered model named 'opt-nowhere'"
    assert main(["optimize", "opt-nowhere"]) == 2
    assert "bad model reference 'opt-nowhere'" in capsys.readouterr().err
