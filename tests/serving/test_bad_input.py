"""Bad input gets a 4xx naming the problem (gRPC: INVALID_ARGUMENT and friends), and the server keeps serving."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from kserve import InferenceGRPCClient, InferInput, InferRequest

from pillars.serving.demo import v2_request
from tests.serving.conftest import MAX_BODY_BYTES
from tests.serving.toy import make_classifier

ROOT = Path(__file__).resolve().parents[2]


def _v2(shape, data, datatype="FP32", name="input-0"):
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}


V2_CASES = [
    ("wrong feature count", _v2([1, 3], [1, 2, 3]), 400, "4 features"),
    ("shape does not match data", _v2([2, 4], [1, 2, 3, 4]), 400, "shape"),
    ("not a batch", _v2([4], [1, 2, 3, 4]), 400, "not a batch"),
    ("wrong datatype", _v2([1, 4], ["a", "b", "c", "d"], "BYTES"), 400, "datatype BYTES"),
    ("unknown datatype", _v2([1, 4], [1, 2, 3, 4], "FP99"), 400, "datatype"),
    ("strings declared FP32", _v2([1, 4], ["a", "b", "c", "d"]), 400, "input-0"),
    ("NaN", _v2([1, 4], [1, 2, 3, "NaN"]), 400, "NaN"),
    ("overflow to Inf", _v2([1, 4], [1, 2, 3, 1e39]), 400, "NaN or Inf"),
    ("empty batch", _v2([0, 4], []), 400, "empty batch"),
    ("negative dimension", _v2([-1, 4], [1, 2, 3, 4]), 400, "negative"),
    ("two input tensors", {"inputs": [_v2([1, 4], [1, 2, 3, 4])["inputs"][0]] * 2}, 400, "exactly one"),
    ("no inputs", {"inputs": []}, 400, "exactly one"),
    ("unknown requested output", _v2([1, 4], [1, 2, 3, 4]) | {"outputs": [{"name": "nope"}]}, 400, "nope"),
    ("inputs not a list", {"inputs": 3}, 400, "exactly one"),
    ("JSON strings as numbers", _v2([1, 4], [1, "2.5", 3, 4]), 400, "'2.5'"),
    ("too many declared rows", _v2([5000, 4], [1, 2, 3, 4]), 413, "5000 rows"),
]


@pytest.mark.parametrize("case", V2_CASES, ids=[c[0] for c in V2_CASES])
def test_bad_v2_request_is_4xx_with_a_message(served, case):
    _, body, status, fragment = case
    response = httpx.post(f"{served.http}/v2/models/toy/infer", json=body)
    assert response.status_code == status, response.text
    assert fragment in response.text


V1_CASES = [
    ("wrong feature count", {"instances": [[1, 2, 3]]}, "4 features"),
    ("ragged rows", {"instances": [[1, 2, 3, 4], [1, 2]]}, "pad to one length or send one instance per request"),
    ("empty batch", {"instances": []}, "empty batch"),
    ("no instances", {"rows": [[1, 2, 3, 4]]}, "instances"),
    ("instances not a list", {"instances": 5}, "list"),
    ("missing named feature", {"instances": [{"f0": 1, "f1": 2, "f2": 3}]}, "f3"),
    ("strings", {"instances": [["a", "b", "c", "d"]]}, "datatype BYTES; expected FP32"),
    ("numbers as strings", {"instances": [[1, "1.5", 2, 3]]}, "'1.5'"),
    ("numbers as strings by name", {"instances": [{"f0": 1, "f1": "1.5", "f2": 2, "f3": 3}]}, "'1.5'"),
]


@pytest.mark.parametrize("case", V1_CASES, ids=[c[0] for c in V1_CASES])
def test_bad_v1_request_is_400_with_a_message(served, case):
    _, body, fragment = case
    response = httpx.post(f"{served.http}/v1/models/toy:predict", json=body)
    assert response.status_code == 400, response.text
    assert fragment in response.json()["error"]


@pytest.mark.parametrize("path", ["/v2/models/toy/infer", "/v1/models/toy:predict"])
@pytest.mark.parametrize("body", [b'{"inputs": [', b"not json", b"\xff\xfe", b'{"instances": [[1,2,3,NaN]]'])
def test_malformed_json_is_4xx(served, path, body):
    response = httpx.post(f"{served.http}{path}", content=body, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500, response.text


def test_unknown_model_is_404(served):
    for method, path in [("POST", "/v2/models/nope/infer"), ("GET", "/v2/models/nope"),
                         ("POST", "/v1/models/nope:predict"), ("GET", "/v2/models/nope/ready")]:
        response = httpx.request(method, f"{served.http}{path}", json=v2_request(np.ones((1, 4))))
        assert response.status_code == 404, (path, response.text)
        assert "nope" in response.text


def test_body_over_the_limit_is_413(served):
    big = {"inputs": [{"name": "input-0", "shape": [40_000, 4], "datatype": "FP32",
                       "data": [1.2345678] * 160_000}]}
    response = httpx.post(f"{served.http}/v2/models/toy/infer", json=big)
    assert response.status_code == 413 and str(MAX_BODY_BYTES) in response.text

    def chunks():  # no Content-Length: the limit is enforced while streaming
        for _ in range(20):
            yield b" " * 100_000

    streamed = httpx.post(f"{served.http}/v2/models/toy/infer", content=chunks(),
                          headers={"content-type": "application/json"})
    assert streamed.status_code == 413


def test_grpc_bad_input_is_invalid_argument_and_oversize_is_resource_exhausted(served):
    async def infer(rows, datatype="FP32"):
        async with InferenceGRPCClient(served.grpc, timeout=10, retries=0) as client:
            tensor = InferInput("input-0", list(rows.shape), datatype)
            tensor.set_data_from_numpy(rows, binary_data=True)
            return await client.infer(InferRequest(model_name="toy", infer_inputs=[tensor]))

    cases = [
        (np.ones((2, 3), dtype=np.float32), "FP32", grpc.StatusCode.INVALID_ARGUMENT, "4 features"),
        (np.full((1, 4), np.nan, dtype=np.float32), "FP32", grpc.StatusCode.INVALID_ARGUMENT, "NaN"),
        (np.ones((0, 4), dtype=np.float32), "FP32", grpc.StatusCode.INVALID_ARGUMENT, "empty batch"),
        (np.ones((1, 4), dtype=np.bool_), "BOOL", grpc.StatusCode.INVALID_ARGUMENT, "datatype BOOL"),
        (np.ones((70_000, 4), dtype=np.float32), "FP32", grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
    ]
    for rows, datatype, code, fragment in cases:
        with pytest.raises(grpc.RpcError) as error:
            asyncio.run(infer(rows, datatype))
        assert error.value.code() == code, error.value.details()
        assert fragment in (error.value.details() or "")
    assert asyncio.run(infer(np.ones((1, 4), dtype=np.float32))).outputs


def test_server_keeps_serving_after_bad_input_and_logs_no_payload(served):
    for case in V2_CASES:
        httpx.post(f"{served.http}/v2/models/toy/infer", json=case[1])
    httpx.post(f"{served.http}/v1/models/toy:predict", json={"instances": [[4321.5678, 1, 2]]})
    ok = httpx.post(f"{served.http}/v2/models/toy/infer", json=v2_request(np.ones((1, 4))))
    assert ok.status_code == 200
    assert served.process.proc.poll() is None
    assert "4321.5678" not in served.process.log() and "Traceback" not in served.process.log()


def test_a_model_that_cannot_run_fails_to_start_with_its_whole_error_on_one_line(tmp_path):
    """The saved signature says 5 features, the network takes 4: the warm-up batch fails, and the server
    exits 2 with one line holding the whole message and what to do (``pillars demo`` shows the last lines)."""
    model = make_classifier(tmp_path / "model")
    config = json.loads((model / "config.json").read_text())
    config["signature"]["inputs"][0] |= {"shape": [5], "labels": [f"f{i}" for i in range(5)]}
    (model / "config.json").write_text(json.dumps(config))
    command = [sys.executable, "-m", "pillars.serving", "--model_dir", str(model), "--no_drift"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 2, result.stderr[-2000:]
    line = next(x for x in result.stderr.splitlines() if "cannot serve:" in x)
    assert "cannot run a batch of placeholder inputs (input-0 FP32 [N, 5];" in line
    assert "RuntimeError: shape '[8, 4]' is invalid for input of size 40" in line
    assert "check that the task's signature" in line
    assert "Traceback" not in result.stderr
