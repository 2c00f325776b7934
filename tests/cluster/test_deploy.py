"""The deploy step: the InferenceService it builds, how it reads KServe's status, and when and how
it rolls back, against recorded InferenceService objects (tests/cluster/fixtures/)."""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from pillars.components.deploy.inference_service import DeployError, DeploySpec, build_inference_service, mode_annotation
from pillars.components.deploy.rollout import assess, deploy, rollback_plan, wait_ready
from pillars.components.errors import ConfigError
from pillars.components.ops import components
from pillars.components.registry.references import ModelRef
from pillars.components.settings import Settings, package_version
from pillars.pipelines.cli import main as cli_main
from tests.cluster.conftest import FIXTURES, validate
from tests.processes import free_port


def main(argv: list[str]) -> int:
    """``pillars deploy ARGV``."""
    return cli_main(["deploy", *argv])


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def spec(**overrides: Any) -> DeploySpec:
    values = {"model": "iris", "alias": "champion", "namespace": "ml", "version": "3"} | overrides
    return DeploySpec(**values)


# --- the object ------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides", [{}, {"gpu": 1}, {"canary_percent": 10}, {"mode": "Standard"},
                                       {"version": None, "kserve_version": "0.14.1"}])
def test_built_inference_services_validate_against_the_kserve_schema(crd_schemas: Path, overrides) -> None:
    validate(build_inference_service(spec(**overrides)), crd_schemas)


def test_recorded_fixtures_are_real_shaped_inference_services(crd_schemas: Path) -> None:
    for path in sorted(FIXTURES.glob("*.json")):
        validate(json.loads(path.read_text()), crd_schemas)


def test_the_version_is_pinned_and_served_from_the_registry() -> None:
    obj = build_inference_service(spec())
    model = obj["spec"]["predictor"]["model"]
    assert model["args"] == ["--model_uri=models:/iris/3", "--workers=1"]  # 500m CPU: one worker process
    assert model["runtime"] == "pillars-registry"
    assert model["modelFormat"] == {"name": "pillars", "version": "1"}
    assert {"name": "MLFLOW_TRACKING_URI", "value": Settings().cluster_mlflow_uri} in model["env"]
    assert obj["metadata"]["annotations"]["pillars.io/model-version"] == "3"
    assert obj["metadata"]["annotations"]["pillars.io/model-alias"] == "iris@champion"
    unresolved = build_inference_service(spec(version=None))
    # Served by alias: the server follows the alias, so a retrained champion reaches running pods.
    assert unresolved["spec"]["predictor"]["model"]["args"] == ["--model_uri=models:/iris@champion",
                                                                "--reload_interval_s=60", "--workers=1"]


def test_gpu_and_canary_and_modes() -> None:
    gpu = build_inference_service(spec(gpu=2, canary_percent=25))["spec"]["predictor"]
    assert gpu["model"]["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert gpu["model"]["image"] == f"ghcr.io/pillars-mlops/pillars-serving:{package_version()}-cuda"
    assert gpu["canaryTrafficPercent"] == 25
    assert gpu["tolerations"][0]["key"] == "nvidia.com/gpu"
    standard = build_inference_service(spec(mode="Standard"))
    assert standard["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "hpa"
    assert [p["name"] for p in standard["spec"]["predictor"]["model"]["ports"]] == ["http1", "h2c"]
    assert mode_annotation("Knative", "0.15") == "Knative"
    assert mode_annotation("Standard", "v0.16.0") == "Standard"
    assert mode_annotation("Knative", "0.14.1") == "Serverless"
    assert mode_annotation("Standard", "0.13") == "RawDeployment"


def test_the_deploy_step_builds_what_the_chart_renders_for_the_same_model(render) -> None:
    chart = next(d for d in render(set=["models[0].name=iris", "models[0].uri=models:/iris/3"])
                 if d["kind"] == "InferenceService")
    ours = build_inference_service(spec(name="iris"))
    for key in ("model", "securityContext", "volumes", "minReplicas", "scaleMetric", "scaleTarget",
                "serviceAccountName", "automountServiceAccountToken"):
        assert ours["spec"]["predictor"][key] == chart["spec"]["predictor"][key], key
    annotation = "serving.kserve.io/deploymentMode"
    assert ours["metadata"]["annotations"][annotation] == chart["metadata"]["annotations"][annotation]


@pytest.mark.parametrize("overrides, message", [
    ({"mode": "Standard", "canary_percent": 10}, "--canary needs Knative"),
    ({"canary_percent": 150}, "0..100"),
    ({"namespace": "My_NS"}, "not a DNS label"),
    ({"mode": "Serverless"}, "deployment mode"),
    ({"scale_metric": "cpu"}, "concurrency, rps"),
    ({"mode": "Standard", "min_replicas": 0}, "scale to zero"),
])
def test_bad_deploy_settings_are_refused_with_the_reason(overrides, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        spec(**overrides)


def test_model_references_are_name_at_alias() -> None:
    assert ModelRef.parse("iris@champion") == ModelRef("iris", alias="champion")
    assert ModelRef.parse("models:/iris@champion").uri == "models:/iris@champion"
    for bad in ("iris", "@champion", "iris@", "../../x@champion"):
        with pytest.raises(ConfigError, match="bad model reference"):
            ModelRef.parse(bad)


# --- reading the status and deciding ----------------------------------------------------------

def test_a_ready_rollout_is_ready() -> None:
    assert assess(fixture("knative_ready")).state == "ready"
    assert assess(fixture("standard_ready_v1")).state == "ready"


def test_a_status_from_an_older_generation_or_a_revision_in_progress_is_pending() -> None:
    assert assess(fixture("knative_stale_generation")).state == "pending"
    verdict = assess(fixture("knative_progressing"))
    assert verdict.state == "pending"
    assert "waiting for a Revision" in verdict.message


def test_a_failed_rollout_reports_kserves_own_message() -> None:
    verdict = assess(fixture("knative_failed_revision"))
    assert verdict.state == "failed"
    assert verdict.message == "ModelLoadFailed: config.json is missing from the model folder"
    canary = assess(fixture("knative_canary_failed"))
    assert canary.state == "failed"
    assert "Insufficient nvidia.com/gpu" in canary.message
    standard = assess(fixture("standard_unavailable"))
    assert standard.state == "failed"
    assert standard.message == "MinimumReplicasUnavailable: Deployment does not have minimum availability."


def test_a_failed_knative_revision_rolls_traffic_back_to_the_last_rolled_out_revision() -> None:
    plan = rollback_plan(fixture("knative_failed_revision"), "Knative", previous=None)
    assert (plan.action, plan.revision) == ("canary-off", "iris-predictor-00002")
    assert plan.patch["spec"] == {"predictor": {"canaryTrafficPercent": 0}}
    assert plan.patch["metadata"] == {"name": "iris", "namespace": "ml"}


def test_a_failed_canary_is_turned_off_and_the_stable_revision_keeps_all_traffic() -> None:
    plan = rollback_plan(fixture("knative_canary_failed"), "Knative", previous=None)
    assert (plan.action, plan.revision) == ("canary-off", "iris-predictor-00003")


def test_a_first_deployment_that_fails_has_nothing_to_roll_back_to() -> None:
    assert rollback_plan(fixture("knative_first_failed"), "Knative", previous=None).action == "none"
    assert rollback_plan(fixture("standard_unavailable"), "Standard", previous=None).action == "none"


def test_a_failed_standard_rollout_reapplies_the_previous_spec() -> None:
    previous = fixture("standard_ready_v1")
    plan = rollback_plan(fixture("standard_unavailable"), "Standard", previous=previous)
    assert plan.action == "reapply-previous"
    assert plan.patch["spec"] == previous["spec"]
    assert plan.patch["spec"]["predictor"]["model"]["args"] == ["--model_uri=models:/iris/1"]
    assert "status" not in plan.patch


def test_waiting_stops_at_ready_or_at_the_timeout() -> None:
    statuses = iter([fixture("knative_stale_generation"), fixture("knative_progressing"), fixture("knative_ready")])
    now = [0.0]
    verdict, _ = wait_ready(lambda: next(statuses), timeout_s=60, poll_s=5, clock=lambda: now[0],
                            sleep=lambda s: now.__setitem__(0, now[0] + s))
    assert verdict.state == "ready" and now[0] == 10
    now[0] = 0.0
    verdict, _ = wait_ready(lambda: fixture("knative_progressing"), timeout_s=30, poll_s=5, clock=lambda: now[0],
                            sleep=lambda s: now.__setitem__(0, now[0] + s))
    assert verdict.state == "failed"
    assert verdict.message.startswith("timed out after 30s: ") and "waiting for a Revision" in verdict.message


# --- against an API server on loopback ---------------------------------------------------------

class FakeKServe:
    """A loopback API server for one InferenceService: records requests; after each apply, GETs
    return the next recorded status (a real HTTP exchange with the real kubernetes client)."""

    def __init__(self, existing: dict | None, after_apply: list[dict]) -> None:
        self.object = existing
        self.after_apply = after_apply
        self.requests: list[tuple[str, str, dict, Any]] = []
        self.applies = 0

    def handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _reply(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                fake.requests.append(("GET", self.path, dict(self.headers), None))
                if fake.object is None:
                    self._reply(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
                else:
                    self._reply(200, fake.object)

            def do_PATCH(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append(("PATCH", self.path, dict(self.headers), body))
                status = fake.after_apply[min(fake.applies, len(fake.after_apply) - 1)]
                fake.applies += 1
                fake.object = copy.deepcopy(status)
                self._reply(200, fake.object)

        return Handler


@pytest.fixture
def kserve_api() -> Iterator:
    from kubernetes import client

    servers = []

    def start(existing: dict | None, after_apply: list[dict]):
        fake = FakeKServe(existing, after_apply)
        server = ThreadingHTTPServer(("127.0.0.1", free_port()), fake.handler())
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        configuration = client.Configuration()
        configuration.host = f"http://127.0.0.1:{server.server_address[1]}"
        return fake, client.ApiClient(configuration)

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_deploy_server_side_applies_as_pillars_and_returns_the_url(kserve_api) -> None:
    fake, api = kserve_api(None, [fixture("knative_ready")])
    result = deploy(spec(), api_client=api, timeout_s=5, poll_s=0.01)
    assert result.url == "http://iris.ml.example.com" and result.model_uri == "models:/iris/3"
    method, path, headers, body = next(r for r in fake.requests if r[0] == "PATCH")
    assert path == ("/apis/serving.kserve.io/v1beta1/namespaces/ml/inferenceservices/iris"
                    "?fieldManager=pillars&force=true")
    assert headers["Content-Type"] == "application/apply-patch+yaml"
    assert body == build_inference_service(spec())
    deploy(spec(), api_client=api, timeout_s=5, poll_s=0.01)  # idempotent: the same apply again
    patches = [r[3] for r in fake.requests if r[0] == "PATCH"]
    assert patches[0] == patches[1]


def test_a_failed_rollout_turns_the_canary_off_and_fails_with_kserves_message(kserve_api) -> None:
    fake, api = kserve_api(fixture("knative_ready"), [fixture("knative_canary_failed")])
    with pytest.raises(DeployError) as error:
        deploy(spec(version="4", canary_percent=10), api_client=api, timeout_s=5, poll_s=0.01)
    assert "0/3 nodes are available: 3 Insufficient nvidia.com/gpu." in str(error.value)
    assert "all traffic back to revision iris-predictor-00003" in str(error.value)
    patches = [r for r in fake.requests if r[0] == "PATCH"]
    assert len(patches) == 2
    assert patches[1][3] == {"spec": {"predictor": {"canaryTrafficPercent": 0}}}
    # a merge patch, not a partial server-side apply (which would remove the model the first apply set)
    assert patches[1][2]["Content-Type"] == "application/merge-patch+json"


def test_a_timeout_rolls_back_too(kserve_api) -> None:
    fake, api = kserve_api(fixture("knative_ready"), [fixture("knative_progressing")])
    with pytest.raises(DeployError, match="timed out after 0.2s"):
        deploy(spec(version="4"), api_client=api, timeout_s=0.2, poll_s=0.05)
    assert [r[3]["spec"] for r in fake.requests if r[0] == "PATCH"][-1] == {"predictor": {"canaryTrafficPercent": 0}}


def test_a_failed_standard_rollout_restores_the_previous_version(kserve_api) -> None:
    previous = fixture("standard_ready_v1")
    fake, api = kserve_api(previous, [fixture("standard_unavailable")])
    with pytest.raises(DeployError, match="Deployment does not have minimum availability"):
        deploy(spec(version="2", mode="Standard"), api_client=api, timeout_s=5, poll_s=0.01)
    restored = [r[3] for r in fake.requests if r[0] == "PATCH"][-1]
    assert restored["spec"]["predictor"]["model"]["args"] == ["--model_uri=models:/iris/1"]


# --- the component and the CLI ------------------------------------------------------------------

def test_the_component_runs_in_the_components_image_without_installing_anything() -> None:
    container = components("registry.example/pillars:7").deploy_op.component_spec.implementation.container
    assert container.image == "registry.example/pillars:7"
    assert "pip install" not in " ".join(container.command)
    assert "from pillars.components.deploy.rollout import deploy" in " ".join(container.command)


def test_dry_run_prints_the_inference_service_for_the_resolved_version(local_store: str, capsys) -> None:
    import yaml
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    client.create_registered_model("iris")
    client.create_model_version("iris", source="file:///nowhere/model")
    client.create_model_version("iris", source="file:///nowhere/model")
    client.set_registered_model_alias("iris", "champion", "2")
    assert main(["iris@champion", "--namespace", "ml", "--gpu", "--dry-run", "-o", "yaml"]) == 0
    obj = yaml.safe_load(capsys.readouterr().out)
    assert obj["spec"]["predictor"]["model"]["args"] == ["--model_uri=models:/iris/2", "--workers=1"]  # GPU: one
    assert obj["spec"]["predictor"]["model"]["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_dry_run_without_a_reachable_registry_serves_the_alias(monkeypatch, capsys) -> None:
    import yaml

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    assert main(["iris@champion", "-n", "ml", "--canary", "20", "--dry-run"]) == 0
    out, err = capsys.readouterr()
    obj = yaml.safe_load(out)
    assert obj["spec"]["predictor"]["model"]["args"] == ["--model_uri=models:/iris@champion", "--reload_interval_s=60",
                                                         "--workers=1"]
    assert obj["spec"]["predictor"]["canaryTrafficPercent"] == 20
    assert "registry unreachable" in err


@pytest.mark.parametrize("argv, message", [
    (["iris", "-n", "ml", "--dry-run"], "NAME@ALIAS"),
    (["models:/iris/3", "-n", "ml", "--dry-run"], "pillars deploy takes NAME@ALIAS"),
    (["../../x@champion", "-n", "ml", "--dry-run"], "invalid model name '../../x'"),
    (["iris@champion", "-n", "ml", "--mode", "Standard", "--canary", "5", "--dry-run"], "--canary needs Knative"),
])
def test_bad_cli_input_is_one_line_and_exit_2(argv, message: str, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


# --- one InferenceService name, one registered model ------------------------------------------

def _serving(registered: str | None, name: str) -> dict:
    existing = fixture("knative_ready")
    existing["metadata"]["name"] = name
    annotations = existing["metadata"]["annotations"]
    annotations.pop("pillars.io/model-alias")
    if registered is not None:
        annotations["pillars.io/registered-model"] = registered
    return existing


@pytest.mark.parametrize("served, model", [("fraud_v2", "fraud-v2"), ("Churn", "churn")])
def test_deploy_refuses_to_overwrite_the_inference_service_of_another_registered_model(kserve_api, served: str,
                                                                                       model: str) -> None:
    name = model.lower()
    fake, api = kserve_api(_serving(served, name), [fixture("knative_ready")])
    with pytest.raises(ConfigError) as error:
        deploy(spec(model=model), api_client=api, timeout_s=5, poll_s=0.01)
    message = str(error.value)
    assert f"InferenceService ml/{name} serves registered model {served!r}, not {model!r}" in message
    assert "--name" in message and len(message.splitlines()) == 1
    assert not [r for r in fake.requests if r[0] == "PATCH"], "nothing was applied"


def test_deploy_refuses_to_take_over_an_inference_service_pillars_did_not_create(kserve_api) -> None:
    fake, api = kserve_api(_serving(None, "iris"), [fixture("knative_ready")])
    with pytest.raises(ConfigError, match="is not a Pillars deployment"):
        deploy(spec(), api_client=api, timeout_s=5, poll_s=0.01)
    assert not [r for r in fake.requests if r[0] == "PATCH"]


def test_deploy_replaces_its_own_model_and_writes_the_registered_name(kserve_api) -> None:
    fake, api = kserve_api(_serving("iris", "iris"), [fixture("knative_ready")])
    deploy(spec(version="4"), api_client=api, timeout_s=5, poll_s=0.01)
    (body,) = [r[3] for r in fake.requests if r[0] == "PATCH"]
    assert body["metadata"]["annotations"]["pillars.io/registered-model"] == "iris"


def test_the_annotation_and_label_carry_the_registered_name() -> None:
    obj = build_inference_service(spec(model="breast_cancer"))
    assert obj["metadata"]["name"] == "breast-cancer"
    assert obj["metadata"]["annotations"]["pillars.io/registered-model"] == "breast_cancer"
    assert obj["metadata"]["labels"]["pillars.io/registered-model"] == "breast_cancer"
    assert obj["spec"]["predictor"]["labels"]["pillars.io/registered-model"] == "breast_cancer"
    spaced = build_inference_service(spec(model="Churn Model", name="churn"))
    assert spaced["metadata"]["labels"]["pillars.io/registered-model"] == "Churn_Model"


@pytest.mark.parametrize("bad", ['a"b', "a\\b", "a/b", "a\nb", ""])
def test_a_registered_name_the_runtime_template_cannot_carry_is_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="registered model name"):
        spec(model=bad, name="m")


def test_knative_services_are_cluster_local_unless_asked(crd_schemas: Path) -> None:
    visibility = "networking.knative.dev/visibility"
    assert build_inference_service(spec())["metadata"]["labels"][visibility] == "cluster-local"
    assert visibility not in build_inference_service(spec(cluster_local=False))["metadata"]["labels"]
    standard = build_inference_service(spec(mode="Standard"))
    assert visibility not in standard["metadata"]["labels"]
    assert visibility not in build_inference_service(spec())["spec"]["predictor"]["labels"]  # not a pod label
    validate(build_inference_service(spec()), crd_schemas)


def test_the_release_service_account_and_image_come_from_the_charts_environment(monkeypatch) -> None:
    monkeypatch.setenv("PILLARS_RELEASE", "ml-platform")
    monkeypatch.setenv("PILLARS_APP_NAME", "mlops")
    monkeypatch.setenv("PILLARS_MODELS_SERVICE_ACCOUNT", "ml-platform-mlops-models")
    monkeypatch.setenv("PILLARS_IMAGE", "registry.example.com/team/pillars:1.2.3")
    obj = build_inference_service(spec(gpu=1))
    labels = obj["spec"]["predictor"]["labels"]
    assert (labels["app.kubernetes.io/instance"], labels["app.kubernetes.io/name"]) == ("ml-platform", "mlops")
    assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == "ml-platform"
    assert obj["spec"]["predictor"]["serviceAccountName"] == "ml-platform-mlops-models"
    assert obj["spec"]["predictor"]["model"]["image"] == "registry.example.com/team/pillars-serving:1.2.3-cuda"
