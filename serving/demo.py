"""One V2 REST and one gRPC ModelInfer request against a running server (``pillars demo``'s last step)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import numpy as np

from pillars.serving.codec import INPUT_NAME


def v2_request(rows: np.ndarray) -> dict[str, Any]:
    """The Open Inference Protocol JSON body for a float32 batch."""
    rows = np.asarray(rows, dtype=np.float32)
    return {"inputs": [{"name": INPUT_NAME, "shape": list(rows.shape), "datatype": "FP32",
                        "data": rows.ravel().tolist()}]}


def query_once(http_url: str, grpc_target: str, model_name: str, rows: np.ndarray,
               token: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Send ``rows`` once over V2 REST (httpx) and once over gRPC (KServe's ``InferenceGRPCClient``).

    Args:
        http_url: e.g. ``http://127.0.0.1:8080``.
        grpc_target: e.g. ``127.0.0.1:8081``.
        model_name: the served model's name.
        rows: a ``[N, n_features]`` batch.
        token: bearer token when the server has auth on.

    Returns:
        ``(http_answer, grpc_answer)``, each ``{output name: list of values}``.

    Raises:
        httpx.HTTPStatusError, grpc.RpcError: the server refused the request.
    """
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.post(f"{http_url}/v2/models/{model_name}/infer", json=v2_request(rows),
                          headers=headers, timeout=30)
    response.raise_for_status()
    http_answer = {o["name"]: _shaped(o["data"], o["shape"]) for o in response.json()["outputs"]}
    grpc_answer = asyncio.run(_grpc_infer(grpc_target, model_name, rows, token))
    return http_answer, grpc_answer


async def _grpc_infer(target: str, model_name: str, rows: np.ndarray, token: str | None) -> dict[str, Any]:
    from kserve import InferenceGRPCClient, InferInput, InferRequest

    rows = np.asarray(rows, dtype=np.float32)
    tensor = InferInput(name=INPUT_NAME, shape=list(rows.shape), datatype="FP32")
    tensor.set_data_from_numpy(rows, binary_data=False)
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    async with InferenceGRPCClient(target, timeout=30, retries=0) as client:
        result = await client.infer(InferRequest(model_name=model_name, infer_inputs=[tensor]),
                                    headers=metadata)
    return {o.name: _plain(o.as_numpy()) for o in result.outputs}


def _shaped(data: list[Any], shape: list[int]) -> list[Any]:
    """Nest V2's flat (row-major) data by its shape, as gRPC clients see it after ``as_numpy``."""
    return np.asarray(data, dtype=object).reshape(shape).tolist() if len(shape) > 1 else data


def _plain(values: np.ndarray) -> list[Any]:
    return [v.decode() if isinstance(v, bytes) else v for v in values.tolist()]
