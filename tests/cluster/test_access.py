"""Who may talk to what: MLflow needs credentials by default and admits only the platform's pods and
listed peers; model servers need a token (the PodMonitor carries it); Knative routes stay in the
cluster; compiled pipelines get the MLflow credentials from the chart's Secret."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.conftest import VALUES

NAMESPACE = "pillars"
TRIGGER = ["trigger.enabled=true", "trigger.token.existingSecret=t"]


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def _secret_ref(env: dict[str, Any]) -> tuple[str, str]:
    ref = env["valueFrom"]["secretKeyRef"]
    return ref["name"], ref["key"]


# --- MLflow: credentials -------------------------------------------------------------------------

def test_mlflow_auth_is_on_by_default_with_a_generated_secret(render) -> None:
    docs = render()
    secret = _one(docs, "Secret", "pillars-mlflow-auth")
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data["username"] == "admin"
    assert len(data["password"]) == 32 and len(data["flask-secret-key"]) == 48
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"  # survives uninstall/upgrade
    container = _one(docs, "Deployment", "pillars-mlflow")["spec"]["template"]["spec"]["containers"][0]
    assert "--app-name basic-auth" in container["args"][0]
    env = _env(container)
    assert _secret_ref(env["MLFLOW_AUTH_ADMIN_USERNAME"]) == ("pillars-mlflow-auth", "username")
    assert _secret_ref(env["MLFLOW_AUTH_ADMIN_PASSWORD"]) == ("pillars-mlflow-auth", "password")
    assert _secret_ref(env["MLFLOW_FLASK_SERVER_SECRET_KEY"]) == ("pillars-mlflow-auth", "flask-secret-key")


def test_every_mlflow_client_of_the_chart_gets_the_credentials_from_the_secret(render) -> None:
    docs = render(set=TRIGGER)
    clients = {
        "trigger": _one(docs, "Deployment", "pillars-trigger")["spec"]["template"]["spec"]["containers"][0],
        "model servers": _one(docs, "ServingRuntime", "pillars-registry")["spec"]["containers"][0],
    }
    for who, container in clients.items():
        env = _env(container)
        assert _secret_ref(env["MLFLOW_TRACKING_USERNAME"]) == ("pillars-mlflow-auth", "username"), who
        assert _secret_ref(env["MLFLOW_TRACKING_PASSWORD"]) == ("pillars-mlflow-auth", "password"), who
    # The pipelines the trigger compiles name the same Secret for their steps.
    assert _env(clients["trigger"])["PILLARS_MLFLOW_SECRET_NAME"]["value"] == "pillars-mlflow-auth"
    # Models fetched from storage never talk to MLflow: no credentials for them.
    storage = _one(docs, "ServingRuntime", "pillars")["spec"]["containers"][0]
    assert "MLFLOW_TRACKING_PASSWORD" not in _env(storage)


def test_a_named_secret_replaces_the_generated_one_and_auth_off_removes_every_credential(render) -> None:
    named = render("auth.yaml")
    assert not [d for d in named if d["kind"] == "Secret" and "mlflow" in d["metadata"]["name"]]
    runtime = _one(named, "ServingRuntime", "pillars-registry")["spec"]["containers"][0]
    assert _secret_ref(_env(runtime)["MLFLOW_TRACKING_PASSWORD"]) == ("mlflow-admin", "password")
    off = render(set=[*TRIGGER, "mlflow.auth.enabled=false"])
    assert not [d for d in off if d["kind"] == "Secret" and "mlflow" in d["metadata"]["name"]]
    for doc in off:
        assert "MLFLOW_TRACKING_PASSWORD" not in yaml.safe_dump(doc), doc["metadata"]["name"]
    container = _one(off, "Deployment", "pillars-mlflow")["spec"]["template"]["spec"]["containers"][0]
    assert "basic-auth" not in container["args"][0]


def test_compiled_pipelines_give_every_step_the_mlflow_credentials(tmp_path: Path, monkeypatch) -> None:
    from pillars.pipelines.compile import compile_pipeline

    # What the trigger pod sees (the chart's env), so the retraining runs it compiles get the Secret.
    monkeypatch.setenv("PILLARS_MLFLOW_SECRET_NAME", "pillars-mlflow-auth")
    monkeypatch.setenv("PILLARS_RELEASE", "ml-platform")
    path = compile_pipeline("retraining", str(tmp_path / "retraining.yaml"), deploy_namespace="mlops")
    pipeline, platform = list(yaml.safe_load_all(Path(path).read_text()))
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    steps = [name for name in pipeline["deploymentSpec"]["executors"] if not name.startswith("exec-deploy")]
    assert len(steps) >= 7  # resolve, prepare, train, evaluate, validate, register, promote
    for step in steps:
        (secret,) = executors[step]["secretAsEnv"]
        assert secret["secretName"] == "pillars-mlflow-auth", step
        assert {(k["secretKey"], k["envVar"]) for k in secret["keyToEnv"]} == {
            ("username", "MLFLOW_TRACKING_USERNAME"), ("password", "MLFLOW_TRACKING_PASSWORD")}, step
    deploy = pipeline["deploymentSpec"]["executors"]["exec-deploy-op"]["container"]
    assert {"name": "PILLARS_RELEASE", "value": "ml-platform"} in deploy["env"]
    monkeypatch.delenv("PILLARS_MLFLOW_SECRET_NAME")
    plain = compile_pipeline("training", str(tmp_path / "plain.yaml"))
    assert "secretAsEnv" not in Path(plain).read_text()


# --- MLflow: who may connect ---------------------------------------------------------------------

def _matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    return selector is not None and labels.items() >= (selector.get("matchLabels") or {}).items()


def admits(policy: dict[str, Any], port: int, namespace: str, pod_labels: dict[str, str]) -> bool:
    """NetworkPolicy ingress semantics for matchLabels peers: a peer with only a podSelector means
    the policy's own namespace; with a namespaceSelector, the namespaces it selects (their
    kubernetes.io/metadata.name label)."""
    namespace_labels = {"kubernetes.io/metadata.name": namespace}
    for rule in policy["spec"].get("ingress", []):
        if port not in [p["port"] for p in rule.get("ports", [])]:
            continue
        for peer in rule.get("from", []):
            in_namespace = (_matches(peer["namespaceSelector"], namespace_labels) if "namespaceSelector" in peer
                            else namespace == NAMESPACE)
            if in_namespace and (_matches(peer.get("podSelector"), pod_labels) if "podSelector" in peer else True):
                return True
    return False


OWN = {"app.kubernetes.io/name": "pillars", "app.kubernetes.io/instance": "pillars"}
ADMITTED = [
    ("a model server of the release", NAMESPACE, {**OWN, "app.kubernetes.io/component": "model"}),
    ("the trigger", NAMESPACE, {**OWN, "app.kubernetes.io/component": "trigger"}),
    ("a KFP pipeline step", "kubeflow", {"pipelines.kubeflow.org/v2_component": "true"}),
    ("Prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"}),
]
REFUSED = [
    ("any pod of another namespace", "default", {"app": "web"}),
    ("a pod of another release in the namespace", NAMESPACE,
     {"app.kubernetes.io/name": "pillars", "app.kubernetes.io/instance": "other"}),
    ("an unlabelled pod in the namespace", NAMESPACE, {}),
    ("a KFP pod that is not a step", "kubeflow", {"app": "ml-pipeline-ui"}),
    ("a pipeline-step-looking pod elsewhere", "team-a", {"pipelines.kubeflow.org/v2_component": "true"}),
]


def test_only_the_platforms_pods_and_the_listed_peers_reach_mlflow(render) -> None:
    policy = _one(render(), "NetworkPolicy", "pillars-mlflow")
    for who, namespace, labels in ADMITTED:
        assert admits(policy, 5000, namespace, labels), who
    for who, namespace, labels in REFUSED:
        assert not admits(policy, 5000, namespace, labels), who
    assert {} not in [peer.get("namespaceSelector") for rule in policy["spec"]["ingress"] for peer in rule["from"]]


def test_mlflow_peers_are_values_the_ingress_controller_only_with_an_ingress(render, tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"mlflow": {"networkPolicy": {"clients": [
        {"namespaceSelector": {"kubernetes.io/metadata.name": "team-a"},
         "podSelector": {"pipelines.kubeflow.org/v2_component": "true"}}]}}}))
    listed = _one(render(str(values)), "NetworkPolicy", "pillars-mlflow")
    assert admits(listed, 5000, "team-a", {"pipelines.kubeflow.org/v2_component": "true"})
    assert not admits(listed, 5000, "kubeflow", {"pipelines.kubeflow.org/v2_component": "true"})  # replaced
    nginx = ("ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"})
    assert not admits(_one(render(), "NetworkPolicy", "pillars-mlflow"), 5000, *nginx)
    assert admits(_one(render("auth.yaml"), "NetworkPolicy", "pillars-mlflow"), 5000, *nginx)


# --- model servers: token, scrape, routes --------------------------------------------------------

def test_model_servers_need_a_token_and_the_pod_monitor_scrapes_with_it(render) -> None:
    docs = render()
    secret = _one(docs, "Secret", "pillars-serving-token")
    assert len(base64.b64decode(secret["data"]["token"])) == 48
    for runtime in ("pillars", "pillars-registry"):
        spec = _one(docs, "ServingRuntime", runtime)["spec"]
        container = spec["containers"][0]
        assert "--auth_token_file=/var/run/pillars-serving/token" in container["args"]
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/var/run/pillars-serving")
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        assert volume["secret"]["secretName"] == "pillars-serving-token" and mount["readOnly"] is True
        assert volume["secret"]["items"] == [{"key": "token", "path": "token"}]
    endpoint = _one(docs, "PodMonitor", "pillars-models")["spec"]["podMetricsEndpoints"][0]
    assert endpoint["authorization"] == {"type": "Bearer", "credentials": {"name": "pillars-serving-token",
                                                                          "key": "token"}}


def test_an_open_model_server_is_scraped_without_a_token(render) -> None:
    docs = render(set=["kserve.auth.enabled=false"])
    assert "authorization" not in _one(docs, "PodMonitor", "pillars-models")["spec"]["podMetricsEndpoints"][0]
    args = _one(docs, "ServingRuntime", "pillars")["spec"]["containers"][0]["args"]
    assert not [a for a in args if a.startswith("--auth_token_file")]
    assert not [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "pillars-serving-token"]


def test_the_server_listens_on_the_pods_interfaces(render) -> None:
    for runtime in ("pillars", "pillars-registry"):
        assert "--host=0.0.0.0" in _one(render(), "ServingRuntime", runtime)["spec"]["containers"][0]["args"]


@pytest.mark.parametrize("settings, visible", [
    ([], "cluster-local"),
    (["kserve.clusterLocal=false"], None),
    (["models[0].clusterLocal=false"], None),
    (["kserve.clusterLocal=false", "models[0].clusterLocal=true"], "cluster-local"),
])
def test_knative_inference_services_are_cluster_local_unless_values_say_otherwise(render, settings, visible) -> None:
    docs = render(set=["models[0].name=iris", "models[0].uri=models:/iris@champion", *settings])
    labels = _one(docs, "InferenceService", "iris")["metadata"]["labels"]
    assert labels.get("networking.knative.dev/visibility") == visible


def test_cluster_local_is_a_knative_setting(render, helm: str) -> None:
    from tests.cluster.conftest import CHART, run

    standard = render("keda.yaml")
    assert not [d for d in standard if d["kind"] == "InferenceService"
                and "networking.knative.dev/visibility" in d["metadata"]["labels"]]
    result = run([helm, "template", "pillars", CHART, "--values", VALUES / "keda.yaml",
                  "--set", "models[0].clusterLocal=true"], check=False)
    assert result.returncode != 0 and "clusterLocal is a Knative setting" in result.stderr


# --- generated credentials survive upgrades --------------------------------------------------------

class _InstalledRelease:
    """A loopback API server that answers what ``helm template --dry-run=server`` asks: discovery for
    the kinds the chart renders, and GETs of the Secrets an earlier install left (``lookup``)."""

    def __init__(self, docs: list[dict[str, Any]], secrets: dict[str, dict[str, str]]) -> None:
        self.secrets = secrets
        self.groups: dict[str, set[str]] = {}
        for doc in docs:
            self.groups.setdefault(doc["apiVersion"], set()).add(doc["kind"])

    def _resources(self, group_version: str) -> dict[str, Any]:
        cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": [
            {"name": f"{kind.lower()}s".replace("ys", "ies") if kind.endswith("y") else f"{kind.lower()}s",
             "singularName": kind.lower(), "namespaced": kind not in cluster_scoped, "kind": kind,
             "verbs": ["get", "list", "create", "patch"]} for kind in sorted(self.groups.get(group_version, ()))]}

    def answer(self, path: str) -> tuple[int, dict[str, Any]]:
        if path == "/version":
            return 200, {"major": "1", "minor": "33", "gitVersion": "v1.33.0"}
        if path == "/api":
            return 200, {"kind": "APIVersions", "versions": ["v1"]}
        if path == "/apis":
            groups = [{"name": gv.split("/")[0], "versions": [{"groupVersion": gv, "version": gv.split("/")[1]}],
                       "preferredVersion": {"groupVersion": gv, "version": gv.split("/")[1]}}
                      for gv in sorted(self.groups) if "/" in gv]
            return 200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
        if path == "/api/v1":
            return 200, self._resources("v1")
        if path.startswith("/apis/") and path.count("/") == 3:
            return 200, self._resources(path[len("/apis/"):])
        prefix = f"/api/v1/namespaces/{NAMESPACE}/secrets/"
        if path.startswith(prefix) and path[len(prefix):] in self.secrets:
            name = path[len(prefix):]
            return 200, {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "data": self.secrets[name],
                         "metadata": {"name": name, "namespace": NAMESPACE,  # as Helm left it
                                      "labels": {"app.kubernetes.io/managed-by": "Helm"},
                                      "annotations": {"meta.helm.sh/release-name": "pillars",
                                                      "meta.helm.sh/release-namespace": NAMESPACE}}}
        return 404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}


def test_an_upgrade_keeps_the_generated_credentials_the_clients_already_hold(render, helm: str,
                                                                             tmp_path: Path) -> None:
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from tests.cluster.conftest import CHART, load_docs, run
    from tests.processes import free_port

    first = render()
    installed = {d["metadata"]["name"]: d["data"] for d in first if d["kind"] == "Secret"}
    assert {"pillars-mlflow-auth", "pillars-serving-token", "pillars-postgresql"} <= installed.keys()
    api = _InstalledRelease(first, installed)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            code, body = api.answer(self.path.split("?")[0])
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "installed",
        "clusters": [{"name": "installed", "cluster": {"server": f"http://127.0.0.1:{server.server_address[1]}"}}],
        "users": [{"name": "installed", "user": {"token": "x"}}],
        "contexts": [{"name": "installed", "context": {"cluster": "installed", "user": "installed"}}]}))
    try:
        result = run([helm, "template", "pillars", CHART, "--namespace", NAMESPACE, "--dry-run=server",
                      "--disable-openapi-validation", "--kubeconfig", kubeconfig], check=False)
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 0, result.stderr[-2000:]
    upgraded = {d["metadata"]["name"]: d["data"] for d in load_docs(result.stdout) if d["kind"] == "Secret"}
    assert upgraded == installed  # lookup kept them
    fresh = {d["metadata"]["name"]: d["data"] for d in render(set=["mlflow.replicas=1"]) if d["kind"] == "Secret"}
    assert fresh["pillars-mlflow-auth"]["password"] != installed["pillars-mlflow-auth"]["password"]  # no lookup: new
