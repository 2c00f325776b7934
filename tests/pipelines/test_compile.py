"""Compiled pipelines: KFP IR YAML that round-trips through kfp, GPU requests, and KFP custom resources."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from kfp import components

from pillars.pipelines.compile import compile_pipeline
from tests.conftest import validate

def _executors(doc: dict) -> dict:
    return doc["deploymentSpec"]["executors"]


def test_compiled_yaml_round_trips_through_kfp(tmp_path):
    path = compile_pipeline("training", str(tmp_path / "training.yaml"))
    loaded = components.load_component_from_file(path)
    assert loaded.name == "pillars-training"
    inputs = loaded.component_spec.inputs
    assert inputs["epochs"].default == 30 and inputs["task"].default == "breast_cancer"
    assert inputs["tracking_uri"].default.startswith("http://pillars-mlflow")
    doc = yaml.safe_load(Path(path).read_text())
    images = {e["container"]["image"] for e in _executors(doc).values()}
    assert len(images) == 1 and images.pop().startswith("ghcr.io/pillars-mlops/pillars:")
    for executor in _executors(doc).values():
        assert "pip install" not in " ".join(executor["container"].get("command", []))
    tasks = doc["root"]["dag"]["tasks"]
    assert tasks["train"]["retryPolicy"]["maxRetryCount"] == 2
    assert "retryPolicy" not in tasks["validate"], "the gate retries registry outages itself, never a bad parameter"
    assert inputs["replace_task"].default is False
    assert tasks["prepare-data"]["cachingOptions"]["enableCache"] is True
    assert "condition-1" in tasks and "promote" in tasks["condition-1"]["componentRef"]["name"] or \
        any("promote" in t for t in doc["components"]["comp-condition-1"]["dag"]["tasks"])
    assert "accelerator" not in json.dumps(_executors(doc)["exec-train"])


def test_gpu_option_asks_the_cluster_for_gpus(tmp_path):
    path = compile_pipeline("training", str(tmp_path / "gpu.yaml"), gpus=2)
    doc = yaml.safe_load(Path(path).read_text())
    resources = _executors(doc)["exec-train"]["container"]["resources"]
    assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert resources["accelerator"]["resourceCount"] == "2"
    assert "accelerator" not in _executors(doc)["exec-prepare-data"]["container"].get("resources", {})
    components.load_component_from_file(path)


def test_checkpoint_pvc_and_s3_secret_use_kfp_kubernetes(tmp_path):
    path = compile_pipeline("training", str(tmp_path / "k.yaml"), checkpoint_pvc="train-ckpt", s3_secret="s3-creds")
    docs = list(yaml.safe_load_all(Path(path).read_text()))
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert platform["exec-train"]["pvcMount"][0]["mountPath"] == "/checkpoints"
    assert platform["exec-prepare-data"]["secretAsEnv"][0]["secretName"] == "s3-creds"
    inputs = components.load_component_from_file(path).component_spec.inputs
    assert inputs["checkpoint_root"].default == "/checkpoints"


def test_as_k8s_emits_pipeline_and_pipeline_version_that_validate(tmp_path, crd_schemas):
    path = compile_pipeline("training", str(tmp_path / "k8s.yaml"), as_k8s=True, namespace="kubeflow")
    docs = list(yaml.safe_load_all(Path(path).read_text()))
    assert [d["kind"] for d in docs] == ["Pipeline", "PipelineVersion"]
    for doc in docs:
        validate(doc, crd_schemas)
        assert doc["apiVersion"] == "pipelines.kubeflow.org/v2beta1" and doc["metadata"]["namespace"] == "kubeflow"
    assert docs[1]["spec"]["pipelineName"] == docs[0]["metadata"]["name"]


def test_negative_gpu_count_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="gpus must be >= 0"):
        compile_pipeline("training", str(tmp_path / "x.yaml"), gpus=-1)


def test_deploy_namespace_adds_canary_then_full_rollout_after_promotion(tmp_path):
    path = compile_pipeline("training", str(tmp_path / "d.yaml"), deploy_namespace="ml", canary_percent=10)
    doc = yaml.safe_load(Path(path).read_text())
    approved = next(c for n, c in doc["components"].items() if n.startswith("comp-condition"))["dag"]["tasks"]
    canary, full = approved["deploy-op"], approved["deploy-op-2"]
    assert canary["dependentTasks"] == ["promote"] and full["dependentTasks"] == ["deploy-op"]
    values = {t: approved[t]["inputs"]["parameters"] for t in ("deploy-op", "deploy-op-2")}
    assert values["deploy-op"]["canary_percent"]["runtimeValue"]["constant"] == 10
    assert values["deploy-op-2"]["canary_percent"]["runtimeValue"]["constant"] == -1
    assert values["deploy-op"]["namespace"]["runtimeValue"]["constant"] == "ml"
    components.load_component_from_file(path)
    with pytest.raises(ValueError, match="canary percent"):
        compile_pipeline("training", str(tmp_path / "x.yaml"), deploy_namespace="ml", canary_percent=100)


def test_retraining_pipeline_resolves_the_task_and_never_caches_data(tmp_path):
    path = compile_pipeline("retraining", str(tmp_path / "r.yaml"))
    loaded = components.load_component_from_file(path)
    inputs = loaded.component_spec.inputs
    assert inputs["model_name"].default is None and inputs["task"].default == "" and inputs["warm_start"].default
    tasks = yaml.safe_load(Path(path).read_text())["root"]["dag"]["tasks"]
    assert tasks["prepare-data"]["cachingOptions"].get("enableCache", False) is False
    parameters = tasks["prepare-data"]["inputs"]["parameters"]
    assert parameters["task"]["taskOutputParameter"]["producerTask"] == "resolve-task"
    assert parameters["task_args"]["taskOutputParameter"]["producerTask"] == "resolve-task"
    assert inputs["task_args"].default == ""


def test_compile_image_puts_that_image_on_every_executor(tmp_path):
    import os

    from pillars.pipelines.cli import main

    image = "registry.example/team/pillars:test"
    path = tmp_path / "i.yaml"
    assert main(["compile", "training", "-o", str(path), "--image", image, "--deploy-namespace", "ml"]) == 0
    executors = _executors(yaml.safe_load(path.read_text()))
    assert "exec-deploy-op" in executors
    assert {e["container"]["image"] for e in executors.values()} == {image}
    assert os.environ.get("PILLARS_IMAGE") != image, "no environment variable set to steer an import"
    default = compile_pipeline("training", str(tmp_path / "d.yaml"))
    assert {e["container"]["image"] for e in _executors(yaml.safe_load(Path(default).read_text())).values()} != {image}


def test_importing_the_components_and_pipelines_reads_no_settings():
    import subprocess
    import sys

    code = ("from pillars.components import settings\n"
            "def refuse(*args, **kwargs):\n"
            "    raise RuntimeError('Settings() read at import')\n"
            "settings.Settings.__init__ = refuse\n"
            "import pillars.components.ops, pillars.components.deploy.inference_service, pillars.pipelines.training\n"
            "import pillars.pipelines.compile, pillars.pipelines.cli.parser\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
