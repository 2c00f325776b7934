"""The chart deploys an optimised ONNX variant with KServe's stock Triton runtime (``runtime: triton``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.cluster.conftest import CHART, run, validate


def test_a_triton_model_uses_the_onnx_format_the_triton_runtime_and_its_ports(render, crd_schemas: Path) -> None:
    docs = render("triton.yaml")
    isvcs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "InferenceService"}
    model = isvcs["digits-edge"]["spec"]["predictor"]["model"]
    assert model["modelFormat"] == {"name": "onnx"} and model["runtime"] == "kserve-tritonserver"
    assert model["protocolVersion"] == "v2"
    assert model["storageUri"] == "s3://mlflow-artifacts/1/abc123/artifacts/variants/onnx-int8/triton"
    assert "args" not in model and model["ports"] == [{"name": "http1", "containerPort": 8080, "protocol": "TCP"}]
    ours = isvcs["digits-edge-pillars"]["spec"]["predictor"]["model"]
    assert ours["modelFormat"] == {"name": "pillars", "version": "1"} and ours["runtime"] == "pillars-registry"
    for doc in docs:
        validate(doc, crd_schemas)
    standard = render("triton.yaml", set=["kserve.deploymentMode=Standard"])
    ports = next(d for d in standard if d["metadata"]["name"] == "digits-edge" and d["kind"] == "InferenceService")
    assert [p["containerPort"] for p in ports["spec"]["predictor"]["model"]["ports"]] == [8080, 9000]


@pytest.mark.parametrize("model, message", [
    ({"name": "a", "uri": "models:/a@edge", "runtime": "triton"}, "runtime triton serves a Triton model repository"),
    ({"name": "a", "uri": "s3://b/a/triton", "runtime": "triton", "gpu": 1}, "runtime triton is CPU-only"),
    ({"name": "a", "uri": "s3://b/a/triton", "runtime": "onnxruntime"}, "runtime"),
])
def test_a_triton_model_with_a_registry_uri_a_gpu_or_an_unknown_runtime_is_refused(helm: str, tmp_path: Path,
                                                                                    model: dict, message: str) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump({"models": [model]}))
    result = run([helm, "template", "pillars", CHART, "--values", path], check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr
