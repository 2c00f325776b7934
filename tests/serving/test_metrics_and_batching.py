"""Prometheus metrics on /metrics, and adaptive micro-batching observed from outside."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from pillars.serving.demo import v2_request
from tests.serving.toy import toy_rows


def scrape(served) -> dict[str, dict[tuple, float]]:
    """``{sample name: {sorted label items: value}}`` from the server's /metrics, via prometheus' parser."""
    text = httpx.get(f"{served.http}/metrics").text
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


def _value(samples, name, **labels) -> float:
    return sum(v for k, v in samples.get(name, {}).items() if set(labels.items()) <= set(k))


def test_metrics_count_requests_by_model_version_protocol_status(served):
    before = scrape(served)
    httpx.post(f"{served.http}/v2/models/toy/infer", json=v2_request(toy_rows(3)))
    httpx.post(f"{served.http}/v2/models/toy/infer", json=v2_request(np.ones((1, 2))))
    httpx.post(f"{served.http}/v1/models/toy:predict", json={"instances": toy_rows(2).tolist()})
    httpx.post(f"{served.http}/v2/models/other/infer", json=v2_request(toy_rows(1)))
    after = scrape(served)

    def delta(name, **labels):
        return _value(after, name, **labels) - _value(before, name, **labels)

    total = "pillars_serving_requests_total"
    assert delta(total, model="toy", version="1", protocol="v2", status="200") == 1
    assert delta(total, model="toy", version="1", protocol="v2", status="400") == 1
    assert delta(total, model="toy", version="1", protocol="v1", status="200") == 1
    assert delta(total, model="unknown", protocol="v2", status="404") == 1  # names never become labels
    assert delta("pillars_serving_inference_seconds_count", model="toy") >= 2
    # KServe's own histograms: the bad V2 request was refused at the edge and never reached the model
    assert delta("request_preprocess_seconds_count", model_name="toy") == 2
    assert delta("request_predict_seconds_count", model_name="toy") >= 2


def test_a_scrape_diff_does_not_give_back_a_requests_inputs_or_prediction(served):
    row = np.array([[6.125, 7.375, 3.0625, 9.4375]], dtype=np.float32)  # values no counter would hit by chance
    before = scrape(served)
    answer = httpx.post(f"{served.http}/v2/models/toy/infer", json=v2_request(row)).json()
    after = scrape(served)
    label = next(o for o in answer["outputs"] if o["name"] == "label")["data"][0]
    deltas = {(name, labels): value - before.get(name, {}).get(labels, 0.0)
              for name, series in after.items() for labels, value in series.items()}
    changed = {key: d for key, d in deltas.items() if d}
    assert changed, "the scrape shows no request at all"
    for value in row[0]:
        leaks = [key for key, d in changed.items() if abs(d - float(value)) < 1e-3]
        assert not leaks, f"feature value {value} readable from {leaks}"
    assert not [key for key in changed if label in dict(key[1]).values()], f"the label {label} is a metric label"
    assert not [name for name in after if "input_feature" in name or name.startswith("pillars_serving_predictions")]


def test_concurrent_requests_are_batched_with_results_identical_to_unbatched(served):
    rows = toy_rows(48, seed=7)
    url = f"{served.http}/v2/models/toy/infer"

    def outputs(answer):
        return {o["name"]: o["data"] for o in answer["outputs"]}

    with httpx.Client() as client:
        alone = [outputs(client.post(url, json=v2_request(r[None])).json()) for r in rows]

    async def together():
        limits = httpx.Limits(max_connections=48)
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:
            answers = await asyncio.gather(*(client.post(url, json=v2_request(r[None])) for r in rows))
        return [outputs(a.json()) for a in answers]

    before = scrape(served)
    batched = asyncio.run(together())
    after = scrape(served)

    merged = {k: after["pillars_serving_batch_size_bucket"][k] - before["pillars_serving_batch_size_bucket"].get(k, 0)
              for k in after["pillars_serving_batch_size_bucket"] if dict(k)["model"] == "toy"}
    up_to_one = sum(v for k, v in merged.items() if dict(k)["le"] == "1.0")
    passes = sum(v for k, v in merged.items() if dict(k)["le"] == "+Inf")
    assert passes - up_to_one > 0, "no forward pass merged more than one request"
    assert passes < len(rows)
    for one, many in zip(alone, batched, strict=True):
        assert one["label"] == many["label"] and one["class_index"] == many["class_index"]
        # float32 matrix kernels may round the last bit differently for different batch shapes
        np.testing.assert_allclose(one["probabilities"], many["probabilities"], rtol=1e-5, atol=1e-7)


def test_grpc_inference_is_counted_by_model_version_and_status_code(served):
    """gRPC's one interceptor counts ModelInfer as the REST middleware counts V2: OK, a refused input by its
    code, an unknown model as ``unknown`` (names never become labels); other methods are not counted."""
    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc

    def request(model: str, rows: np.ndarray) -> pb.ModelInferRequest:
        tensor = pb.ModelInferRequest.InferInputTensor(name="input-0", datatype="FP32", shape=list(rows.shape))
        return pb.ModelInferRequest(model_name=model, inputs=[tensor],
                                    raw_input_contents=[rows.astype(np.float32).tobytes()])

    before = scrape(served)
    codes = []
    with grpc.insecure_channel(served.grpc) as channel:
        stub = grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(channel)
        for message in (request("toy", toy_rows(2)), request("toy", np.ones((1, 2))), request("other", toy_rows(1))):
            try:
                stub.ModelInfer(message, timeout=30)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as e:
                codes.append(e.code())
        stub.ServerLive(pb.ServerLiveRequest(), timeout=30)
    after = scrape(served)
    assert codes == [grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND]

    def delta(name, **labels):
        return _value(after, name, **labels) - _value(before, name, **labels)

    total = "pillars_serving_requests_total"
    assert delta(total, model="toy", version="1", protocol="grpc", status="OK") == 1
    assert delta(total, model="toy", version="1", protocol="grpc", status="INVALID_ARGUMENT") == 1
    assert delta(total, model="unknown", protocol="grpc", status="NOT_FOUND") == 1
    assert delta(total, protocol="grpc") == 3  # ServerLive is not an inference
    assert delta("pillars_serving_request_seconds_count", model="toy", protocol="grpc") == 2
    assert delta("request_predict_seconds_count", model_name="toy") == 1  # the refused one never ran
