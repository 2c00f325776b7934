"""Every declaration of a run parameter agrees with its one definition (``pillars.components.parameters``).

The pipelines' signatures are generated from the table; the component signatures (KFP ships their source)
and the dataclasses that check the values are written by hand, so these tests prove they agree: names,
types and defaults. A new hyperparameter missing from one of them fails here, naming the place.
"""

from __future__ import annotations

import dataclasses
import inspect
import re

import pytest

from pillars.components import ops
from pillars.components.optimize import op as optimize_op
from pillars.components.errors import ConfigError
from pillars.components.training.fit import TrainParams
from pillars.components.optimize.variants import VARIANTS, Guard, OptimizeParams
from pillars.components.parameters import (
    OPTIMIZE,
    PIPELINE_PARAMETERS,
    TRAINING,
    VARIANT_NAMES,
    Parameter,
    check_choices,
    parse_json_object,
)
from pillars.components.data import spark_sizes
from pillars.components.data.prepare import PrepareParams, parse_task_args
from pillars.components.task import MISSING_POLICIES, DataParams
from pillars.components.evaluation.gate import parse_thresholds
from pillars.pipelines.compile import pipeline_factory, task_params

KFP_TYPES = {str: "String", int: "Integer", float: "Float", bool: "Boolean"}
BODIES = {body.__name__: body for body in (*ops._BODIES, optimize_op.optimize)}
WIRED_FROM_ANOTHER_STEP = {("promote", "model_name"), ("deploy_op", "model_name"), ("deploy_op", "tracking_uri")}
"""Component parameters named like a run parameter that take another step's output (or a build option)."""


def _by_name(table: tuple[Parameter, ...]) -> dict[str, Parameter]:
    return {p.name: p for p in table}


@pytest.mark.parametrize("name", list(PIPELINE_PARAMETERS))
def test_each_pipeline_takes_exactly_its_parameters_with_their_types_defaults_and_help(name):
    inputs = pipeline_factory(name)(image="example.com/pillars:test").component_spec.inputs
    table = PIPELINE_PARAMETERS[name]
    assert list(inputs) == [p.name for p in table]
    for p in table:
        spec = inputs[p.name]
        assert spec.type == KFP_TYPES[p.type], p.name
        assert spec.default == (None if p.required else p.default), p.name
        assert spec.description == p.help, p.name


def test_every_step_a_parameter_names_takes_it_with_the_same_type():
    for p in (*TRAINING, *OPTIMIZE):
        for step in p.steps:
            params = inspect.signature(BODIES[step]).parameters
            assert p.name in params, f"component {step} lacks parameter {p.name}"
            assert params[p.name].annotation is p.type, f"{step}.{p.name} is not {p.type.__name__}"
            default = params[p.name].default
            assert default is inspect.Parameter.empty or default == p.default, f"{step}.{p.name} default"


def test_every_component_parameter_named_like_a_run_parameter_is_listed_in_the_table():
    for table, bodies in ((TRAINING, ops._BODIES), (OPTIMIZE, (optimize_op.optimize,))):
        names = _by_name(table)
        for body in bodies:
            step = body.__name__
            for name in inspect.signature(body).parameters:
                if name in names and (step, name) not in WIRED_FROM_ANOTHER_STEP:
                    assert step in names[name].steps, f"{step} takes {name}, but its parameter does not list {step}"


@pytest.mark.parametrize("cls, leave_out", [(DataParams, ()), (PrepareParams, ()), (TrainParams, ("device",))])
def test_the_dataclasses_that_check_the_values_agree_with_the_table(cls, leave_out):
    table = _by_name(TRAINING)
    fields = [f for f in dataclasses.fields(cls) if f.name not in leave_out]
    for field in fields:
        assert field.name in table, f"{cls.__name__}.{field.name} is not a run parameter"
        p = table[field.name]
        assert field.type in (p.type, p.type.__name__), f"{cls.__name__}.{field.name} type"
        assert field.default == p.default, f"{cls.__name__}.{field.name} default {field.default} != {p.default}"
    steps = {"DataParams": "prepare_data", "PrepareParams": "prepare_data", "TrainParams": "train"}[cls.__name__]
    taken = {p.name for p in TRAINING if steps in p.steps}
    if cls is DataParams:
        taken -= {"task", "task_args", "engine", "model_name", "feedback", "spark_launcher", *spark_sizes.PARAMETERS}
    if cls is TrainParams:
        taken -= {"model_name", "warm_start", "launcher", "gpus_per_node", "tracking_uri", "checkpoint_root", "reason"}
    assert taken == {f.name for f in fields}


def test_the_spark_sizes_are_the_spark_run_parameters_with_their_defaults():
    table = _by_name(TRAINING)
    assert spark_sizes.PARAMETERS == ("spark_driver_cores", "spark_driver_memory", "spark_executors",
                                      "spark_executor_cores", "spark_executor_memory")
    for field in dataclasses.fields(spark_sizes.SparkSizes):
        p = table[f"spark_{field.name}"]
        assert (field.type, field.default) in {(p.type, p.default), (p.type.__name__, p.default)}, field.name
    assert spark_sizes.SparkSizes.from_parameters({"spark_executors": 5, "epochs": 3}).executors == 5


def test_the_optimize_parameters_default_to_what_the_optimize_step_does():
    table, defaults = _by_name(OPTIMIZE), OptimizeParams()
    assert VARIANT_NAMES == VARIANTS and table["variants"].default == ",".join(VARIANTS)
    assert (table["max_drop_points"].default, table["max_relative_worsening"].default) == \
        (Guard().max_drop_points, Guard().max_relative_worsening)
    assert (table["sparsity"].default, table["temperature"].default) == (defaults.sparsity, defaults.temperature)
    assert (table["prune_epochs"].default, table["distill_epochs"].default) == \
        (defaults.prune_fit.epochs, defaults.distill_fit.epochs)


def test_choices_agree_with_their_checkers_and_are_refused_by_name():
    assert _by_name(TRAINING)["missing_policy"].choices == MISSING_POLICIES
    check_choices(TRAINING, {"launcher": "trainjob", "missing_policy": "mean"})
    with pytest.raises(ConfigError, match="launcher must be 'local' or 'trainjob', got 'slurm'"):
        check_choices(TRAINING, {"launcher": "slurm"})


def test_the_console_form_shows_the_table_with_its_help():
    from pillars.console.forms import HIDDEN, fields

    form = fields(pipeline_factory("retraining")(image="example.com/pillars:test"))
    table = [p for p in PIPELINE_PARAMETERS["retraining"] if p.name not in HIDDEN]
    assert [(f.name, f.help, f.required) for f in form] == [(p.name, p.help, p.required) for p in table]


def test_pillars_run_help_lists_every_parameter_of_every_pipeline(capsys):
    from pillars.pipelines.cli import main

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    for name, table in PIPELINE_PARAMETERS.items():
        section = text.split(f"{name} parameters")[1]
        assert all(f"  {p.name}" in section for p in table), name


@pytest.mark.parametrize("parse, name", [
    (parse_task_args, "task_args"),
    (lambda text: parse_thresholds(text, None), "thresholds"),
    (lambda text: task_params(None, ["k=1"], [f"task_args={text}"]), "task_args"),
    (lambda text: parse_json_object("data_args", text), "data_args"),
])
@pytest.mark.parametrize("text", ["[1, 2]", "{not json", "3"])
def test_every_json_object_parameter_is_refused_with_one_message_naming_it(parse, name, text):
    with pytest.raises(ConfigError, match=rf"^{name} must be a JSON object like '.*', got '{re.escape(text)}'"):
        parse(text)


def test_an_empty_json_object_parameter_is_none_and_a_mapping_passes():
    assert parse_json_object("task_args", " ") == {} and parse_json_object("x", {"a": 1}) == {"a": 1}
    assert parse_task_args('{"hidden": 8}') == {"hidden": 8}


def test_the_optimize_step_refuses_bad_data_args_with_the_same_message_before_anything_runs(local_store, tmp_path):
    report = type("Report", (), {"path": str(tmp_path / "report.json"), "metadata": {}})()
    with pytest.raises(ConfigError, match=r"^data_args must be a JSON object like '.*', got '\[1\]'"):
        optimize_op.optimize(model="models:/nope/1", variants="onnx", max_drop_points=1.0,
                             max_relative_worsening=0.05, sparsity=0.5, prune_epochs=1, distill_epochs=1,
                             temperature=2.0, data_args="[1]", tracking_uri=local_store, report=report)


def test_pillars_compile_and_the_trigger_take_the_same_cluster_flags():
    from pillars.pipelines.cli.parser import build_parser
    from pillars.pipelines.parameters import ClusterOptions, cluster_options
    from pillars.pipelines.trigger.serve import parse_args

    compile_args = build_parser().parse_args(["compile", "training", "-o", "x.yaml", "--canary", "10",
                                              "--kserve-mode", "Standard", "--gpus", "1"])
    trigger_args = parse_args(["--canary", "10", "--kserve-mode", "Standard", "--gpus", "1"])
    assert cluster_options(compile_args) == cluster_options(trigger_args)
    assert ClusterOptions(**cluster_options(compile_args)).canary_percent == 10
    with pytest.raises(SystemExit):
        parse_args(["--kserve-mode", "Serverless"])
