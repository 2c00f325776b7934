"""Registering variants against a real ``mlflow server``: tags, alias ``edge`` (compare-and-set),
``champion`` never moves, nothing registered for a model that is not there or variants that fail."""

from __future__ import annotations

import copy

import mlflow
import pytest

from pillars.components import registry
from pillars.components.errors import ConfigError, RegistryError
from pillars.components.optimize.variants import FitParams, OptimizeParams, evaluate_predictor, optimize_model
from pillars.components.model.predictor import load_predictor, save_model
from pillars.components.registry.register import downloaded_version
from pillars.components.optimize.register import (EDGE, TAGS, VariantsFailed, latest_report, register_variants,
                                                  run_optimize, variants_table)
from pillars.pipelines.local.progress import run_summary
from tests.optimize.toy import REFERENCE, BrokenStudent


def _register_parent(name: str, directory) -> str:
    """The saved folder as a registered version (plain artifacts, as the variants are) and the champion."""
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(directory), "model")
        mlflow.log_params({"seed": 0})
        source = mlflow.get_artifact_uri("model")
    registry.client().create_registered_model(name)
    version = registry.client().create_model_version(name, source, run_id=run.info.run_id,
                                                     tags={"gate_approved": "true"}).version
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

    # The training run's summary names the approved champion, not the newest version (a variant), and
    # lists the variants apart, each with its outcome.
    summary = run_summary(name, tracking_uri, tmp_path / "run.log")
    assert summary[0] == f"model    {name} v{parent}  aliases: champion" and summary[1] == "gate     approved"
    table = summary[summary.index(f"variants of v{parent}:") + 2:][:len(report.variants)]
    for line, variant in zip(table, report.variants):
        outcome = f"registered v{done.versions[variant.variant]}" if variant.variant in done.versions else variant.state
        assert line.split()[:len(outcome.split()) + 1] == [variant.variant, *outcome.split()], summary
    assert latest_report(name, parent)["edge_version"] == done.edge

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
    assert variants_table(latest_report(name, parent))[1].split()[:3] == ["onnx", "registered", f"v{done.edge}"]

    # Bad input: one line, nothing registered, the champion and edge where they were.
    count = len(registry.client().search_model_versions(f"name='{name}'"))
    with pytest.raises(ConfigError, match=f"^{name} v{done.edge} is the onnx variant of v{parent}; optimise its "
                                          f"parent \\(models:/{name}/{parent}\\) instead$"):
        run_optimize(f"models:/{name}@edge")
    with pytest.raises(ConfigError, match=f"^{name} v{parent} is a model of task {REFERENCE}:Line, not of "
                                          "breast_cancer; nothing was optimised$"):
        run_optimize(f"models:/{name}@champion", task="breast_cancer")
    assert len(registry.client().search_model_versions(f"name='{name}'")) == count
    assert registry.alias_version(name, EDGE) == done.edge and registry.alias_version(name, registry.CHAMPION) == parent


def test_the_step_fails_in_one_line_when_no_variant_registered_and_one_crashed(tracking_uri, line, tmp_path):
    name = "opt-broken"
    task = BrokenStudent()
    directory = save_model(task, f"{REFERENCE}:BrokenStudent", line.trained.prep, line.trained.model, tmp_path / "m")
    parent = _register_parent(name, directory)
    with pytest.raises(VariantsFailed, match=f"^no variant of {name} v{parent} registered; distilled failed: "
                                             "RuntimeError: "):
        run_optimize(f"models:/{name}@champion", OptimizeParams(variants=("distilled",), timing_repeats=2))
    assert [v.version for v in registry.client().search_model_versions(f"name='{name}'")] == [parent]
    assert registry.alias_version(name, EDGE) is None
    assert variants_table(latest_report(name, parent))[1].split()[:2] == ["distilled", "failed"]


def test_pillars_optimize_names_a_model_that_is_not_registered_in_one_line(tracking_uri, capsys):
    from pillars.pipelines.cli import main

    assert main(["optimize", "models:/opt-nowhere@champion"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "pillars: error: no registered model named 'opt-nowhere'"
    assert main(["optimize", "opt-nowhere"]) == 2
    assert "bad model reference 'opt-nowhere'" in capsys.readouterr().err
