"""One contract, five doors: the same batch gets the same decision, in the same words, through MLflow pyfunc's
path (``load_predictor(...).predict``, in process), V1 REST, V2 REST JSON, V2 REST binary and V2 gRPC.

One real server serves the toy task (a BYTES ``text``, an INT64 ``user_id``, a variable-length FP32
``history`` and an optional INT64 ``k``), with ``--max_rows`` small. Each case is one batch of named
arrays; every path encodes it as its protocol would and must accept it (with the same outputs) or refuse
it with exactly the expected message (400 / INVALID_ARGUMENT, or 413 / RESOURCE_EXHAUSTED for rows).
A case a protocol cannot express is left out for that path, and says why.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc

from pillars.components.task.contract import InputError, datatype_of, numpy_dtype
from pillars.components.model.predictor import Predictor, load_predictor
from tests.serving.conftest import Served, start_server
from tests.serving.toy_task import MAX_HISTORY, MAX_TEXT_BYTES, make_toy_model, toy_inputs

NAME = "parity"
MAX_ROWS = 8
PATHS = ("pyfunc", "v1", "v2_json", "v2_binary", "grpc")
JSON_PATHS = ("v1", "v2_json")
TAKES = "this model takes ['history', 'k', 'text', 'user_id']"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory):
    return make_toy_model(tmp_path_factory.mktemp("parity") / "model", profile=False)


@pytest.fixture(scope="module")
def predictor(model_dir) -> Predictor:
    return load_predictor(model_dir)


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    log = tmp_path_factory.mktemp("parity-log") / "server.log"
    served = start_server(["--model_dir", str(model_dir), "--model_name", NAME, "--max_rows", str(MAX_ROWS),
                           "--no_drift", "--max_latency_ms", "1"], log, model=NAME)
    yield served
    served.process.stop()


@dataclass(frozen=True)
class Outcome:
    """What a path answered: the ``item_ids`` of an accepted batch, or the refusal's kind and message."""

    accepted: bool
    message: str = ""
    too_many_rows: bool = False
    item_ids: list[Any] | None = field(default=None, compare=False)


# ---- the five paths ---------------------------------------------------------------------------------

def _pyfunc(predictor: Predictor, server: Served, batch: dict[str, Any]) -> Outcome:
    try:
        return Outcome(True, item_ids=predictor.predict(batch)["item_ids"].tolist())
    except InputError as e:
        return Outcome(False, str(e))


def _rest(response: httpx.Response, item_ids: Callable[[dict], list]) -> Outcome:
    if response.status_code == 200:
        return Outcome(True, item_ids=item_ids(response.json()))
    assert response.status_code in (400, 413), response.text
    return Outcome(False, response.json()["error"], too_many_rows=response.status_code == 413)


def _v2_item_ids(answer: dict) -> list:
    out = next(o for o in answer["outputs"] if o["name"] == "item_ids")
    return np.asarray(out["data"]).reshape(out["shape"]).tolist()


def _v1(predictor: Predictor, server: Served, batch: dict[str, Any]) -> Outcome:
    rows = len(next(iter(batch.values())))
    instances = [{name: _plain(value[i]) for name, value in batch.items()} for i in range(rows)]
    response = httpx.post(f"{server.http}/v1/models/{NAME}:predict", json={"instances": instances}, timeout=30)
    return _rest(response, lambda answer: [p["item_ids"] for p in answer["predictions"]])


def _plain(value: Any) -> Any:
    return value.tolist() if isinstance(value, np.ndarray) else value.item() if isinstance(value, np.generic) else value


def _v2_json(predictor: Predictor, server: Served, batch: dict[str, np.ndarray]) -> Outcome:
    inputs = [{"name": name, "datatype": datatype_of(a), "shape": list(a.shape), "data": a.reshape(-1).tolist()}
              for name, a in batch.items()]
    response = httpx.post(f"{server.http}/v2/models/{NAME}/infer", json={"inputs": inputs}, timeout=30)
    return _rest(response, _v2_item_ids)


def _wire_bytes(array: np.ndarray) -> bytes:
    if datatype_of(array) == "BYTES":
        return b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in array.reshape(-1).tolist())
    return array.astype(numpy_dtype(datatype_of(array)).newbyteorder("<")).tobytes()


def _v2_binary(predictor: Predictor, server: Served, batch: dict[str, np.ndarray]) -> Outcome:
    chunks = {name: _wire_bytes(a) for name, a in batch.items()}
    header = json.dumps({"inputs": [
        {"name": name, "datatype": datatype_of(a), "shape": list(a.shape),
         "parameters": {"binary_data_size": len(chunks[name])}} for name, a in batch.items()]}).encode()
    response = httpx.post(f"{server.http}/v2/models/{NAME}/infer", content=header + b"".join(chunks.values()),
                          headers={"inference-header-content-length": str(len(header))}, timeout=30)
    return _rest(response, _v2_item_ids)


CONTENTS = {"BYTES": "bytes_contents", "FP32": "fp32_contents", "FP64": "fp64_contents",
            "INT64": "int64_contents", "BOOL": "bool_contents"}


def _grpc(predictor: Predictor, server: Served, batch: dict[str, np.ndarray]) -> Outcome:
    tensors = []
    for name, array in batch.items():
        datatype = datatype_of(array)
        tensor = pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=list(array.shape))
        values = array.reshape(-1).tolist()
        getattr(tensor.contents, CONTENTS[datatype]).extend(
            [v.encode() for v in values] if datatype == "BYTES" else values)
        tensors.append(tensor)
    with grpc.insecure_channel(server.grpc) as channel:
        stub = grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(channel)
        try:
            answer = stub.ModelInfer(pb.ModelInferRequest(model_name=NAME, inputs=tensors), timeout=30)
        except grpc.RpcError as e:
            assert e.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED), e.details()
            return Outcome(False, e.details(), too_many_rows=e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED)
    index = next(i for i, o in enumerate(answer.outputs) if o.name == "item_ids")
    output = answer.outputs[index]
    data = (np.frombuffer(answer.raw_output_contents[index], dtype="<i8") if answer.raw_output_contents
            else np.asarray(output.contents.int64_contents))
    return Outcome(True, item_ids=data.reshape(list(output.shape)).tolist())


SEND = {"pyfunc": _pyfunc, "v1": _v1, "v2_json": _v2_json, "v2_binary": _v2_binary, "grpc": _grpc}


# ---- the cases --------------------------------------------------------------------------------------

def _good(rows: int = 2, **replace: Any) -> dict[str, Any]:
    batch: dict[str, Any] = toy_inputs(rows, seed=rows)
    for name, value in replace.items():
        if value is None:
            del batch[name]
        else:
            batch[name] = value
    return batch


@dataclass(frozen=True)
class Case:
    name: str
    batch: dict[str, Any]
    refusal: str | None = None
    """The exact message every path refuses with; None: every path accepts, with the same outputs."""
    paths: tuple[str, ...] = PATHS
    why_not: str = ""
    """Why the paths left out cannot express this batch."""
    too_many_rows: bool = False


CASES = [
    Case("good", _good()),
    Case("good with the optional k", _good(k=np.full(2, 3, dtype=np.int64))),
    Case("integers for the FP32 input", _good(history=np.arange(6, dtype=np.int64).reshape(2, 3))),
    Case("unknown input", _good(color=np.array(["red", "blue"])), f"unknown input(s) ['color']; {TAKES}"),
    Case("missing input", _good(history=None), f"input 'history' is missing; {TAKES} (optional: ['k'])"),
    Case("strings for the FP32 input", _good(history=np.array([["a", "b"], ["c", "d"]])),
         "input 'history' has datatype BYTES; expected FP32 (or another numeric type): found str 'a'"),
    Case("booleans for the FP32 input", _good(history=np.ones((2, 3), dtype=bool)),
         "input 'history' has datatype BOOL; expected FP32 (or another numeric type)"),
    Case("fractions for the INT64 input", _good(user_id=np.array([1.5, 2.0])),
         "input 'user_id' has datatype FP64; expected INT64 (or another integer type)"),
    Case("numbers for the BYTES input", _good(text=np.array([1, 2], dtype=np.int64)),
         "input 'text' has datatype INT64; expected BYTES"),
    Case("history longer than max_length", _good(history=np.zeros((2, MAX_HISTORY + 1), dtype=np.float32)),
         f"input 'history': each instance must have shape [1..{MAX_HISTORY}]; expected [N, 1..{MAX_HISTORY}], "
         f"got shape [2, {MAX_HISTORY + 1}]"),
    Case("a string longer than max_bytes", _good(text=np.array(["good", "a" * (MAX_TEXT_BYTES + 1)])),
         f"input 'text': element 1 is longer than {MAX_TEXT_BYTES} bytes"),
    Case("values beyond FP32", _good(history=np.array([[1.0, 1e300], [2.0, 3.0]])),
         "input 'history': NaN or Inf (or values beyond FP32) in row(s) [0]"),
    Case("NaN", _good(history=np.array([[1.0, 2.0], [np.nan, 3.0]], dtype=np.float32)),
         "input 'history': NaN or Inf (or values beyond FP32) in row(s) [1]",
         paths=("pyfunc", "v2_binary", "grpc"), why_not="JSON has no NaN"),
    Case("empty batch", _good(0), "input 'text': empty batch: at least one instance is needed"),
    Case("inputs with different rows", _good(user_id=np.array([1, 2, 3])),
         "input 'user_id' has 3 rows; input 'text' has 2: every input needs one row per instance",
         paths=("pyfunc", "v2_json", "v2_binary", "grpc"), why_not="a V1 instance is one row of every input"),
    Case("ragged instances", _good(history=[[1.0, 2.0], [1.0]]),
         "input 'history': instances have different lengths (shapes); a batch is one array: pad to one length "
         "or send one instance per request",
         paths=("pyfunc", "v1"), why_not="a V2 tensor declares one shape"),
    Case("an id the task's encode refuses", _good(user_id=np.array([1, 99])),
         "input 'user_id': unknown user id(s) [99]"),
    Case("too many rows", _good(MAX_ROWS + 1),
         f"{MAX_ROWS + 1} rows; at most {MAX_ROWS} rows per request are accepted (--max_rows)",
         paths=("v1", "v2_json", "v2_binary", "grpc"), too_many_rows=True,
         why_not="--max_rows bounds a server's requests; in process, pyfunc takes any batch (checked below)"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_every_path_gives_the_same_decision_and_message(case: Case, predictor: Predictor, server: Served):
    outcomes = {path: SEND[path](predictor, server, case.batch) for path in case.paths}
    if case.refusal is None:
        assert all(o.accepted for o in outcomes.values()), outcomes
        ids = {path: o.item_ids for path, o in outcomes.items()}
        assert all(v == ids["pyfunc"] for v in ids.values()), ids
        return
    expected = Outcome(False, case.refusal, too_many_rows=case.too_many_rows)
    assert outcomes == dict.fromkeys(case.paths, expected)


def test_the_row_limit_is_the_servers_and_pyfunc_takes_any_batch(predictor: Predictor):
    assert predictor.predict(_good(MAX_ROWS + 1))["item_ids"].shape == (MAX_ROWS + 1, 2)

