"""Bearer-token auth: inference, metadata and /metrics need the token (REST 401, gRPC UNAUTHENTICATED);
health is open."""

from __future__ import annotations

import asyncio

import grpc
import httpx
import pytest
from kserve import InferenceGRPCClient, InferInput, InferRequest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

from tests.serving.conftest import TOKEN

BODY = {"inputs": [{"name": "input-0", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
PROTECTED = [("POST", "/v2/models/reg/infer"), ("POST", "/v1/models/reg:predict"), ("GET", "/v2/models/reg"),
             ("GET", "/v2"), ("GET", "/v2/models"), ("POST", "/v2/repository/models/reg/unload"),
             ("GET", "/metrics")]
OPEN = ["/v2/health/live", "/v2/health/ready", "/v2/models/reg/ready", "/v1/models/reg"]


@pytest.mark.parametrize("method,path", PROTECTED)
@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Basic {TOKEN}", TOKEN, f"Bearer {TOKEN}x"])
def test_protected_rest_calls_need_the_token(served_with_auth, method, path, authorization):
    headers = {"Authorization": authorization} if authorization else {}
    response = httpx.request(method, f"{served_with_auth.http}{path}", json=BODY, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_health_stays_open(served_with_auth):
    for path in OPEN:
        assert httpx.get(f"{served_with_auth.http}{path}").status_code == 200, path


def test_metrics_with_the_token_are_served(served_with_auth):
    response = httpx.get(f"{served_with_auth.http}/metrics", headers=served_with_auth.headers)
    assert response.status_code == 200 and "pillars_serving_requests_total" in response.text


def test_valid_token_is_served(served_with_auth):
    response = httpx.post(f"{served_with_auth.http}/v2/models/reg/infer", json=BODY,
                          headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert httpx.get(f"{served_with_auth.http}/v2/models/reg", headers=served_with_auth.headers).json()["name"] == "reg"


def test_grpc_needs_the_token_except_for_health(served_with_auth):
    async def calls(metadata):
        async with InferenceGRPCClient(served_with_auth.grpc, timeout=10, retries=0) as client:
            assert await client.is_server_live() and await client.is_server_ready()
            assert await client.is_model_ready("reg")
            tensor = InferInput("input-0", [1, 3], "FP32", data=[1.0, 2.0, 3.0])
            outcomes = []
            for call in (
                lambda: client.infer(InferRequest(model_name="reg", infer_inputs=[tensor]), headers=metadata),
                lambda: client._client_stub.ModelMetadata(pb.ModelMetadataRequest(name="reg"), metadata=metadata),
                lambda: client._client_stub.ServerMetadata(pb.ServerMetadataRequest(), metadata=metadata),
            ):
                try:
                    await call()
                    outcomes.append(grpc.StatusCode.OK)
                except grpc.RpcError as e:
                    outcomes.append(e.code())
            return outcomes

    assert asyncio.run(calls(None)) == [grpc.StatusCode.UNAUTHENTICATED] * 3
    assert asyncio.run(calls((("authorization", "Bearer nope"),))) == [grpc.StatusCode.UNAUTHENTICATED] * 3
    assert asyncio.run(calls((("authorization", f"Bearer {TOKEN}"),))) == [grpc.StatusCode.OK] * 3


def test_a_malformed_grpc_message_before_auth_logs_one_line(served_with_auth):
    """gRPC parses a message before any interceptor sees it: each unparsable one is one warning line in the
    log (no traceback), and the client gets an error."""
    before = served_with_auth.process.log().count("malformed gRPC message refused")
    with grpc.insecure_channel(served_with_auth.grpc) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                   request_serializer=lambda b: b, response_deserializer=lambda b: b)
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as error:
                call(b"\xff\xff\xff\xff\x0f not a protobuf", timeout=10)
            assert error.value.code() == grpc.StatusCode.UNKNOWN
    log = served_with_auth.process.wait_log("malformed gRPC message refused", before + 3)
    assert log.count("malformed gRPC message refused") - before == 3
    assert "Traceback" not in log and "DecodeError" not in log


def test_debug_log_has_one_line_per_request_without_payload_or_token(served_with_auth):
    marker = 8765.4321
    body = {"inputs": [{"name": "input-0", "shape": [1, 3], "datatype": "FP32", "data": [marker, 2, 3]}]}
    before = served_with_auth.process.log().count("request protocol=v2 model=reg")
    httpx.post(f"{served_with_auth.http}/v2/models/reg/infer", json=body, headers=served_with_auth.headers)
    httpx.post(f"{served_with_auth.http}/v2/models/reg/infer", json=body)  # 401
    log = served_with_auth.process.wait_log("request protocol=v2 model=reg", before + 2)
    assert log.count("request protocol=v2 model=reg") == before + 2
    assert "status=200" in log and "status=401" in log
    assert TOKEN not in log and str(marker) not in log


def test_without_a_token_configured_no_auth_is_needed(served):
    assert httpx.get(f"{served.http}/v2/models/toy").status_code == 200


@pytest.fixture(scope="module")
def metrics_opened(tmp_path_factory):
    """Auth on, with /metrics opened explicitly for a scraper that carries no token."""
    from tests.serving.conftest import start_server
    from tests.serving.toy import make_regressor

    root = tmp_path_factory.mktemp("metrics-open")
    token_file = root / "token"
    token_file.write_text(TOKEN)
    server = start_server(["--model_dir", str(make_regressor(root / "model")), "--model_name", "reg",
                           "--auth_token_file", str(token_file), "--metrics_open", "--no_drift"],
                          root / "server.log", model="reg", token=TOKEN)
    yield server
    server.process.stop()


def test_metrics_can_be_opened_for_a_scraper_while_inference_keeps_needing_the_token(metrics_opened):
    assert httpx.get(f"{metrics_opened.http}/metrics").status_code == 200
    assert httpx.post(f"{metrics_opened.http}/v2/models/reg/infer", json=BODY).status_code == 401
    assert httpx.post(f"{metrics_opened.http}/v2/models/reg/infer", json=BODY,
                      headers=metrics_opened.headers).status_code == 200
