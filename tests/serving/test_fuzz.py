"""Fuzzing the V2 infer endpoint with malformed requests: never a 5xx, and the server stays alive."""

from __future__ import annotations

import json
import string

import httpx
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pillars.serving.demo import v2_request

EXAMPLES = 1200
HEADER_CHARS = string.ascii_letters + string.digits + "-."

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
datatypes = st.sampled_from(["FP32", "FP64", "FP16", "INT64", "INT8", "UINT8", "BOOL", "BYTES", "fp32", "", "X"])
shapes = st.lists(st.integers(-3, 10) | st.sampled_from([4, 2**40]), max_size=4) | json_values
tensor = st.fixed_dictionaries(
    {},
    optional={"name": st.text(max_size=8) | json_values, "shape": shapes, "datatype": datatypes | json_values,
              "data": st.lists(st.floats() | st.integers(-300, 300) | st.text(max_size=3), max_size=40) | json_values,
              "parameters": st.dictionaries(st.sampled_from(["binary_data_size", "content_type", "x"]),
                                            st.integers(-5, 100) | json_values, max_size=2)},
)
bodies = st.one_of(
    st.fixed_dictionaries({"inputs": st.lists(tensor, max_size=3)},
                          optional={"outputs": st.lists(st.fixed_dictionaries({"name": st.text(max_size=12)}),
                                                        max_size=3) | json_values,
                                    "parameters": st.dictionaries(st.sampled_from(["binary_data_output", "y"]),
                                                                  json_values, max_size=2),
                                    "id": json_values}),
    json_values.map(lambda v: {"inputs": v}),
    json_values,
)


def _encode(body, raw: bytes | None, truncate: int | None) -> bytes:
    text = json.dumps(body).encode() if raw is None else raw
    return text[:truncate] if truncate is not None else text


def test_fuzzed_v2_requests_never_get_a_5xx(served):
    statuses: list[int] = []
    client = httpx.Client(timeout=30)
    url = f"{served.http}/v2/models/toy/infer"

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(body=bodies, raw=st.none() | st.binary(max_size=64), truncate=st.none() | st.integers(0, 60),
           header=st.none() | st.integers(-5, 200).map(str) | st.text(HEADER_CHARS, max_size=4),
           content_type=st.sampled_from(["application/json", "application/octet-stream", "text/plain", ""]))
    def send(body, raw, truncate, header, content_type):
        headers = {"content-type": content_type} if content_type else {}
        if header is not None:
            headers["inference-header-content-length"] = header
        response = client.post(url, content=_encode(body, raw, truncate), headers=headers)
        statuses.append(response.status_code)
        assert response.status_code < 500, (response.status_code, response.text, body, raw, header)

    try:
        send()
    finally:
        client.close()
    assert len(statuses) >= 1000
    assert sum(400 <= s < 500 for s in statuses) > 0.9 * len(statuses)
    ok = httpx.post(url, json=v2_request(np.ones((1, 4))))
    assert ok.status_code == 200 and served.process.proc.poll() is None
