"""The console's pure parts: step progress from kfp.local's log, the form check and its input policy,
metrics reduction, charts, the access rules and the login rate limit."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from pillars.components.errors import ConfigError
from pillars.console import charts, endpoints, forms, steplog
from pillars.console.security import Guard, LoginLimiter, check_bind, is_loopback, read_token
from pillars.pipelines.cli import main
from pillars.pipelines.compile import pipeline_factory

RECORDED = Path(__file__).parent / "fixtures" / "kfp_local_training.log"
"""A real kfp.local log of the training pipeline (breast_cancer, 2 epochs; executor inputs elided)."""


@pytest.fixture(scope="module")
def training():
    return pipeline_factory("training")()


# --- step progress --------------------------------------------------------------------------------


def test_planned_steps_follow_the_pipeline_in_dependency_order(training):
    assert steplog.planned_steps(training) == [
        ("prepare-data", "prepare data"), ("train", "train"), ("evaluate", "evaluate"),
        ("validate", "validate (gate)"), ("register", "register"), ("promote", "promote to champion"),
        ("optimize", "optimize (variants, edge)")]
    names = [n for n, _ in steplog.planned_steps(pipeline_factory("retraining")())]
    assert names[0] == "resolve-task" and names[-2:] == ["promote", "optimize"]


def test_a_finished_log_gives_every_step_its_status_time_outputs_and_output(training):
    progress = steplog.parse_log(RECORDED.read_text(), steplog.planned_steps(training))
    assert progress.pipeline_status == "SUCCESS"
    assert progress.job_name == "pillars-training-2026-11-29-09-51-19-417422"
    by_name = {s.name: s for s in progress.steps}
    assert [s.status for s in progress.steps] == ["succeeded"] * 5 + ["pending"] * 2
    assert by_name["train"].outputs == {"Output": "a3f4a5ab8e02408db33623ead306327e"}
    assert by_name["register"].outputs == {"version": "1", "model_name": "breast_cancer"}
    assert by_name["validate"].outputs == {"Output": "False"}
    assert by_name["prepare-data"].seconds == pytest.approx(18.187)
    assert "Looking for component `train`" in by_name["train"].log
    assert "Looking for component `train`" not in by_name["evaluate"].log
    settled = steplog.finish(progress, failed=False)
    assert settled.step("promote").status == "skipped"  # the gate rejected: promotion never ran


def test_a_log_cut_mid_run_shows_the_running_step_and_the_pending_ones(training):
    text = RECORDED.read_text()
    cut = text[: text.index("finished with status", text.index("Executing task \x1b[96m'train'"))]
    cut = cut[: cut.rindex("\n")]
    progress = steplog.parse_log(cut, steplog.planned_steps(training))
    assert [s.status for s in progress.steps] == ["succeeded", "running"] + ["pending"] * 5
    assert progress.pipeline_status is None
    assert steplog.finish(progress, failed=True).step("train").status == "failed"


# --- the form -------------------------------------------------------------------------------------


def test_an_untouched_form_asks_for_the_defaults(training):
    defaults = {f.name: f.default_text for f in forms.fields(training)}
    assert forms.check_form(training, defaults) == ({}, {})
    assert "tracking_uri" not in defaults and "epochs" in defaults


def test_fields_carry_type_default_and_the_docstring_help(training):
    epochs = next(f for f in forms.fields(training) if f.name == "epochs")
    assert (epochs.kind, epochs.default, epochs.required) == ("Integer", 30, False)
    assert "epochs" in epochs.help.lower()


@pytest.mark.parametrize(("field", "value", "says"), [
    ("epochs", "zero", "epochs must be integer"),
    ("epochs", "0", "invalid epochs=0"),
    ("dropout", "1.5", "dropout"),
    ("learning_rate", "fast", "learning_rate must be float"),
    ("missing_policy", "guess", "missing_policy must be one of"),
    ("thresholds", "{accuracy", "thresholds must be a JSON object"),
    ("task", "no-such-task", "unknown task"),
    ("val_fraction", "0.9", "val_fraction must be in"),
    ("spark_executor_memory", "4 GB", "spark_executor_memory must be a size like 2g"),
    ("spark_executors", "0", "spark_executors must be a whole number >= 1"),
])
def test_a_bad_value_is_an_error_at_its_own_field(training, field, value, says):
    arguments, errors = forms.check_form(training, {field: value})
    assert list(errors) == [field]
    assert says in errors[field]


def test_a_changed_value_becomes_a_typed_argument(training):
    arguments, errors = forms.check_form(training, {"epochs": "3", "balance": "true", "thresholds": '{"accuracy": 0.5}'})
    assert errors == {}
    assert arguments == {"epochs": 3, "balance": True, "thresholds": '{"accuracy": 0.5}'}


def test_a_required_parameter_left_empty_is_named():
    retraining = pipeline_factory("retraining")()
    _, errors = forms.check_form(retraining, {"model_name": ""})
    assert errors == {"model_name": "model_name is required"}


def test_an_error_is_placed_at_the_first_field_it_names():
    assert forms.field_named("invalid epochs=0, invalid dropout=2", ["dropout", "epochs"]) == "epochs"
    assert forms.field_named("nodes > 1 needs launcher=trainjob", ["launcher", "nodes"]) == "nodes"
    assert forms.field_named("test_fraction must be in (0, 0.5)", ["fraction", "test_fraction"]) == "test_fraction"
    assert forms.field_named("something else", ["epochs"]) == forms.FORM_ERROR


def test_sources_are_paths_under_the_data_root_or_s3_uris(tmp_path):
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    (root / "escape").symlink_to("/etc")
    policy = forms.InputPolicy(root)
    assert policy.source("sub/table.csv") == str(root.resolve() / "sub" / "table.csv")
    assert policy.source(str(root / "x.parquet")) == str(root.resolve() / "x.parquet")
    assert policy.source("s3://bucket/tables/") == "s3://bucket/tables/"
    assert policy.source("") == ""
    messages = []
    for outside in ("/etc/passwd", "/etc/no-such-file", "../outside.csv", "sub/../../x.csv", "escape/passwd"):
        with pytest.raises(ConfigError, match="outside the console's data root") as e:
            policy.source(outside)
        messages.append(str(e.value).replace(repr(outside), "SOURCE"))
    assert len(set(messages)) == 1  # the same words whether the file exists or not: no file oracle
    with pytest.raises(ConfigError, match="only files under its data root or s3://"):
        policy.source("http://internal.example/table.csv")


def test_tasks_are_installed_ones_unless_module_references_are_allowed(training):
    policy = forms.InputPolicy(Path.cwd())
    policy.task("breast_cancer")
    policy.task("")  # retraining: the champion's task
    with pytest.raises(ConfigError, match="unknown task 'nope'; installed tasks: .*breast_cancer"):
        policy.task("nope")
    with pytest.raises(ConfigError, match="module reference; .*PILLARS_CONSOLE_ALLOW_TASK_MODULES"):
        policy.task("os:system")
    allowed = forms.InputPolicy(Path.cwd(), allow_task_modules=True)
    with pytest.raises(ConfigError, match="must look like package.module:attribute"):
        allowed.task("os;x:system")
    # Allowed or not, the console imports nothing: the run's worker resolves the task.
    assert "this" not in sys.modules
    for p in (policy, allowed):
        _, errors = forms.check_form(training, {"task": "this:s"}, p)
        assert ("task" in errors) is (p is policy)
    assert "this" not in sys.modules
    _, errors = forms.check_form(training, {"source": "/etc/passwd", "label_column": "y", "task": "os:system"}, policy)
    assert set(errors) == {"source", "task"}


# --- metrics --------------------------------------------------------------------------------------


def test_histogram_quantile_interpolates_like_prometheus():
    buckets = {0.1: 50.0, 0.2: 90.0, 0.5: 100.0, float("inf"): 100.0}
    assert endpoints.histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert endpoints.histogram_quantile(0.7, buckets) == pytest.approx(0.15)
    assert endpoints.histogram_quantile(0.99, buckets) == pytest.approx(0.47)
    assert endpoints.histogram_quantile(0.5, {0.1: 0.0, float("inf"): 0.0}) != endpoints.histogram_quantile(0.5, buckets)


def _metrics_page(ok: int, errors: int, fast: int, jsd: float) -> str:
    """A /metrics page with the model server's metric names, written by prometheus_client."""
    registry = CollectorRegistry()
    requests = Counter("pillars_serving_requests", "", ["model", "version", "protocol", "status"], registry=registry)
    seconds = Histogram("pillars_serving_request_seconds", "", ["model", "protocol"], registry=registry,
                        buckets=(0.01, 0.1, 1.0))
    drift = Gauge("pillars_drift_feature_jsd", "", ["model", "version", "feature"], registry=registry)
    requests.labels("m", "7", "v2", "200").inc(ok)
    requests.labels("m", "7", "v2", "500").inc(errors)
    requests.labels("other", "1", "v2", "200").inc(1000)
    for _ in range(fast):
        seconds.labels("m", "v2").observe(0.005)
    for _ in range(ok + errors - fast):
        seconds.labels("m", "v2").observe(0.5)
    drift.labels("m", "7", "age").set(jsd)
    return generate_latest(registry).decode()


def test_samples_of_metrics_pages_give_rate_latency_errors_and_drift():
    first = endpoints.parse_metrics(_metrics_page(ok=10, errors=0, fast=10, jsd=0.1), "m")
    second = endpoints.parse_metrics(_metrics_page(ok=100, errors=10, fast=60, jsd=0.4), "m")
    assert (first.requests, second.requests, second.errors, second.version) == (10, 110, 10, "7")
    first.at, second.at = 1000.0, 1010.0
    series = endpoints.series_from_samples([first, second])
    assert series["rate"] == [(1010.0, pytest.approx(10.0))]  # 100 more requests in 10 s
    assert series["error_ratio"] == [(1010.0, pytest.approx(0.1))]
    assert series["p50"][0][1] <= 0.01 and 0.1 < series["p99"][0][1] <= 1.0  # 50 of 100 new requests were fast
    assert series["drift"] == {"age": [(1000.0, 0.1), (1010.0, 0.4)]}


def test_samples_give_the_estimated_and_realised_accuracy_and_the_weighted_drift():
    registry = CollectorRegistry()
    estimated = Gauge("pillars_performance_estimated_accuracy", "", ["model", "version"], registry=registry)
    weighted = Gauge("pillars_drift_weighted_share", "", ["model", "version"], registry=registry)
    scored = Counter("pillars_feedback_scored_rows", "", ["model", "version"], registry=registry)
    correct = Counter("pillars_feedback_correct_rows", "", ["model", "version"], registry=registry)
    estimated.labels("m", "7").set(0.91)
    weighted.labels("m", "7").set(0.3)
    scored.labels("m", "7").inc(40)
    correct.labels("m", "7").inc(30)
    scored.labels("other", "1").inc(1000)
    sample = endpoints.parse_metrics(generate_latest(registry).decode(), "m")
    assert (sample.estimated, sample.weighted_drift, sample.scored, sample.correct) == (0.91, 0.3, 40, 30)
    sample.at = 1000.0
    series = endpoints.series_from_samples([sample])
    assert series["estimated"] == [(1000.0, 0.91)] and series["realised"] == [(1000.0, 0.75)]
    assert series["weighted_drift"] == [(1000.0, 0.3)]
    nothing = endpoints.series_from_samples([endpoints.parse_metrics(_metrics_page(1, 0, 1, 0.1), "m")])
    assert nothing["estimated"] == nothing["realised"] == []  # no calibration, no labels: nothing invented


def test_charts_are_inline_svg_with_a_title():
    svg = charts.line_chart({"p99": [(0, 0.01), (10, 0.02)]}, "Latency p99", "s")
    assert svg.startswith("<svg") and 'role="img"' in svg and "<polyline" in svg and "20 ms" in svg
    assert "no data yet" in charts.line_chart({"p99": []}, "Latency p99", "s")
    assert "&lt;b&gt;" in charts.line_chart({}, "<b>")


# --- access ---------------------------------------------------------------------------------------


def test_binding_off_loopback_needs_a_token(tmp_path):
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    with pytest.raises(ConfigError, match="refusing to serve the console on 0.0.0.0 without a token"):
        check_bind("0.0.0.0", None)
    check_bind("0.0.0.0", "a-token-long-enough")
    assert is_loopback("localhost") and not is_loopback("example.com")


def test_a_short_or_missing_token_file_is_refused(tmp_path):
    (tmp_path / "short").write_text("abc\n")
    with pytest.raises(ConfigError, match="shorter than 16"):
        read_token(tmp_path / "short")
    with pytest.raises(ConfigError, match="cannot read"):
        read_token(tmp_path / "missing")
    (tmp_path / "ok").write_text("0123456789abcdef0123\n")
    assert read_token(tmp_path / "ok") == "0123456789abcdef0123"


def test_csrf_tokens_belong_to_their_session_and_auth_to_the_token():
    guard = Guard("0123456789abcdef0123", loopback=False)
    session = guard.new_session()
    assert guard.check_csrf(session, guard.csrf_token(session))
    assert not guard.check_csrf(guard.new_session(), guard.csrf_token(session))
    assert not guard.check_csrf(session, None) and not guard.check_csrf(None, "x")
    assert Guard("0123456789abcdef0123", False).csrf_token(session) != guard.csrf_token(session)  # per process key
    assert guard.authenticated("Bearer 0123456789abcdef0123", None)
    assert not guard.authenticated("Bearer wrong", None) and not guard.authenticated(None, "forged")
    assert guard.authenticated(None, guard.auth_cookie())
    assert Guard(None, loopback=True).authenticated(None, None)


def test_pillars_console_refuses_a_public_host_without_a_token(capfd, tmp_path):
    assert main(["console", "--host", "0.0.0.0", "--port", "1"]) == 2
    assert "pillars: error: refusing to serve the console on 0.0.0.0 without a token" in capfd.readouterr().err
    (tmp_path / "token").write_text("short")
    assert main(["console", "--host", "0.0.0.0", "--token-file", str(tmp_path / "token")]) == 2
    assert "shorter than 16 characters" in capfd.readouterr().err


def test_wrong_tokens_are_limited_per_address_in_bounded_memory():
    clock = [1000.0]
    limiter = LoginLimiter(attempts=3, window_s=60, max_clients=100, clock=lambda: clock[0])
    for _ in range(3):
        assert limiter.retry_after("10.0.0.1") == 0
        limiter.failed("10.0.0.1")
        clock[0] += 1
    assert limiter.retry_after("10.0.0.1") == 57  # now 1003; the first failure leaves the window at 1060
    assert limiter.retry_after("10.0.0.2") == 0  # another address is not held back
    clock[0] = 1060.0
    assert limiter.retry_after("10.0.0.1") == 0
    limiter.failed("10.0.0.1")  # one more: the window slides, the oldest of the three is 1001
    assert limiter.retry_after("10.0.0.1") == 1
    limiter.succeeded("10.0.0.1")
    assert limiter.retry_after("10.0.0.1") == 0
    # One IPv6 host holds a /64: its addresses count together.
    for suffix in ("1", "2", "3"):
        limiter.failed(f"2001:db8:0:1::{suffix}")
    assert limiter.retry_after("2001:db8:0:1::99") > 0 and limiter.retry_after("2001:db8:0:2::1") == 0
    for n in range(1000):
        limiter.failed(f"10.1.{n // 256}.{n % 256}")
    assert len(limiter) == 100
