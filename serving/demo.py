"""One V2 REST and one gRPC ModelInfer request against a running server (``pillars demo``'s last step)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import httpx
import numpy as np

from pillars.components.task.contract import numpy_dtype

INPUT_NAME = "input-0"
"""The input of the built-in table and image tasks: a bare array of rows is sent under this name."""

Inputs = np.ndarray | Mapping[str, Any]


def named_arrays(inputs: Inputs) -> dict[str, np.ndarray]:
    """``inputs`` as named arrays: a bare array of rows is the float32 ``input-0`` of a table."""
    if isinstance(inputs, np.ndarray):
        return {INPUT_NAME: np.asarray(inputs, dtype=np.float32)}
    return {name: np.asarray(value) for name, value in inputs.items()}


def datatype_of(array: np.ndarray) -> str:
    """The V2 datatype a numpy array travels as: FP32 for floats, INT64 for integers, BOOL, BYTES for text."""
    kind = array.dtype.kind
    return {"f": "FP32", "i": "INT64", "u": "INT64", "b": "BOOL"}.get(kind, "BYTES")


def _wire(array: np.ndarray, datatype: str) -> np.ndarray:
    if datatype == "BYTES":
        return array.astype(object)
    return array.astype(numpy_dtype(datatype))


def v2_request(inputs: Inputs) -> dict[str, Any]:
    """The Open Inference Protocol JSON body for a float32 batch, or for named input arrays."""
    tensors = []
    for name, array in named_arrays(inputs).items():
        datatype = datatype_of(array)
        data = _wire(array, datatype).ravel().tolist()
        tensors.append({"name": name, "shape": list(array.shape), "datatype": datatype,
                        "data": [str(v) for v in data] if datatype == "BYTES" else data})
    return {"inputs": tensors}


def query_once(http_url: str, grpc_target: str, model_name: str, inputs: Inputs,
               token: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Send ``inputs`` once over V2 REST (httpx) and once over gRPC (KServe's ``InferenceGRPCClient``).

    Args:
        http_url: e.g. ``http://127.0.0.1:8080``.
        grpc_target: e.g. ``127.0.0.1:8081``.
        model_name: the served model's name.
        inputs: a ``[N, n_features]`` batch of a table, or named input arrays (strings for ``BYTES``).
        token: bearer token when the server has auth on.

    Returns:
        ``(http_answer, grpc_answer)``, each ``{output name: list of values}``.

    Raises:
        httpx.HTTPStatusError, grpc.RpcError: the server refused the request.
    """
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.post(f"{http_url}/v2/models/{model_name}/infer", json=v2_request(inputs),
                          headers=headers, timeout=30)
    response.raise_for_status()
    http_answer = {o["name"]: _shaped(o["data"], o["shape"]) for o in response.json()["outputs"]}
    grpc_answer = asyncio.run(_grpc_infer(grpc_target, model_name, inputs, token))
    return http_answer, grpc_answer


async def _grpc_infer(target: str, model_name: str, inputs: Inputs, token: str | None) -> dict[str, Any]:
    from kserve import InferenceGRPCClient, InferInput, InferRequest

    tensors = []
    for name, array in named_arrays(inputs).items():
        datatype = datatype_of(array)
        tensor = InferInput(name=name, shape=list(array.shape), datatype=datatype)
        tensor.set_data_from_numpy(_wire(array, datatype), binary_data=False)
        tensors.append(tensor)
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    async with InferenceGRPCClient(target, timeout=30, retries=0) as client:
        result = await client.infer(InferRequest(model_name=model_name, infer_inputs=tensors), headers=metadata)
    return {o.name: _plain(o.as_numpy()) for o in result.outputs}


def _shaped(data: list[Any], shape: list[int]) -> list[Any]:
    """Nest V2's flat (row-major) data by its shape, as gRPC clients see it after ``as_numpy``."""
    return np.asarray(data, dtype=object).reshape(shape).tolist() if len(shape) > 1 else data


def _plain(values: np.ndarray) -> list[Any]:
    def plain(v: Any) -> Any:
        if isinstance(v, list):
            return [plain(x) for x in v]
        return v.decode() if isinstance(v, bytes) else v

    return [plain(v) for v in values.tolist()]
