"""Nothing administrative is served: no request can unload the model, and readiness means answering."""

from __future__ import annotations

import asyncio

import grpc
import httpx
import numpy as np
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc

from pillars.serving.demo import v2_request


@pytest.mark.parametrize("path", ["/v2/repository/models/toy/unload", "/v2/repository/models/toy/load",
                                  "/v2/repository/index"])
def test_repository_routes_are_not_served_and_the_model_keeps_answering(served, path):
    assert httpx.post(f"{served.http}{path}", json={}).status_code == 404
    assert httpx.get(f"{served.http}/v2/health/ready").json() == {"ready": True}
    assert httpx.get(f"{served.http}/v2/models/toy/ready").json() == {"name": "toy", "ready": True}
    answer = httpx.post(f"{served.http}/v2/models/toy/infer", json=v2_request(np.ones((1, 4))))
    assert answer.status_code == 200


def test_repository_rpcs_are_unimplemented_and_the_model_keeps_answering(served):
    async def calls():
        async with grpc.aio.insecure_channel(served.grpc) as channel:
            stub = grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(channel)
            codes = []
            for call in (lambda: stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="toy")),
                         lambda: stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="toy"))):
                try:
                    await call()
                    codes.append(grpc.StatusCode.OK)
                except grpc.aio.AioRpcError as e:
                    codes.append(e.code())
            ready = await stub.ModelReady(pb.ModelReadyRequest(name="toy"))
            server_ready = await stub.ServerReady(pb.ServerReadyRequest())
            return codes, ready.ready, server_ready.ready

    codes, model_ready, server_ready = asyncio.run(calls())
    assert codes == [grpc.StatusCode.UNIMPLEMENTED] * 2
    assert model_ready and server_ready
    assert httpx.post(f"{served.http}/v2/models/toy/infer", json=v2_request(np.ones((1, 4)))).status_code == 200


def test_openapi_lists_no_repository_route(served):
    paths = httpx.get(f"{served.http}/openapi.json").json()["paths"]
    assert paths and not [p for p in paths if "repository" in p]
