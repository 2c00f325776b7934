"""Variable-length inputs stay variable: a token input ``INT64 [N, -1]`` whose data is all padded to
``max_length`` is exported with a dynamic length axis, judged at several lengths, and a graph fixed to
one length is refused naming it. The bag of embeddings also makes onnxruntime's quantizer fail: that
variant is skipped with the quantizer's reason while the fp32 one is kept."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch

from pillars.components.optimize.lengths import length_probes, probe_lengths, with_length
from pillars.components.optimize.onnx_export import ExportError, check_onnx
from pillars.components.optimize.variants import OptimizeParams, optimize_model
from pillars.components.model.predictor import load_predictor
from pillars.components.task import Signature, TensorSpec
from tests.optimize.toy import MAX_TOKENS


@pytest.fixture(scope="module")
def tokens_report(tokens, tmp_path_factory):
    params = OptimizeParams(variants=("onnx", "onnx-int8"), timing_repeats=2)
    return optimize_model(tokens.directory, tokens.trained.data, tmp_path_factory.mktemp("tokens-variants"), params,
                          parent="tokens/1")


def test_the_test_split_is_of_one_length_and_the_probes_cover_one_to_max_length(tokens):
    test = tokens.trained.inputs("test")
    assert test["ids"].shape[1] == MAX_TOKENS  # what made the exporter fix the length before
    signature = load_predictor(tokens.directory).signature
    assert probe_lengths(signature) == (1, 16, 32)
    assert {n: rows["ids"].shape for n, rows in length_probes(signature, test).items()} == {
        n: (len(test["ids"]), n) for n in (1, 16, 32)}


def test_every_minus_one_dimension_is_a_dynamic_axis_and_the_guard_scores_each_length(tokens_report, tokens):
    onnx_variant, int8 = tokens_report.variants
    assert onnx_variant.state == "passed", onnx_variant.reason
    graph = onnx.load(f"{onnx_variant.directory}/model.onnx")
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    assert [d.HasField("dim_param") for d in dims] == [True, True]  # [batch, length], neither fixed
    assert set(onnx_variant.length_metrics) == set(tokens_report.original.length_metrics) == {1, 16, 32}
    assert "within the guard at lengths 1, 16, 32" in onnx_variant.reason

    served, champion = load_predictor(onnx_variant.directory), tokens.trained
    rows = champion.inputs("test")["ids"][:8]
    for length in range(1, MAX_TOKENS + 1):  # every length the champion answers, through the checked path
        got = served.predict({"ids": rows[:, :length]})
        np.testing.assert_allclose(got["probabilities"], champion.predict({"ids": rows[:, :length]})["probabilities"],
                                   atol=1e-4)


def test_a_variant_the_quantizer_cannot_make_is_skipped_with_its_reason_and_the_others_kept(tokens_report):
    onnx_variant, int8 = tokens_report.variants
    assert int8.state == "skipped" and int8.footprint is None
    assert int8.reason.startswith("cannot make onnx-int8 of tests.optimize.toy:Tokens: onnxruntime's quantizer failed")
    assert "\n" not in int8.reason
    assert tokens_report.edge() is onnx_variant
    assert "onnx-int8         skipped: cannot make onnx-int8" in tokens_report.summary()


def test_a_graph_fixed_to_one_length_is_refused_naming_the_length(tokens, tmp_path):
    predictor = load_predictor(tokens.directory)
    example = {"ids": torch.as_tensor(tokens.trained.inputs("test")["ids"][:8])}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(predictor.model, (), str(tmp_path / "fixed.onnx"), kwargs=example, dynamo=True,
                          dynamic_shapes={"ids": {0: torch.export.Dim.DYNAMIC}}, input_names=["ids"],
                          output_names=["head"], external_data=False)
    with pytest.raises(ExportError, match="fails on inputs of length 1: "):
        check_onnx(predictor, tmp_path / "fixed.onnx", tokens.trained.inputs("test"))


def test_with_length_cuts_or_cycles_each_variable_axis_up_to_its_own_max_length_and_leaves_labels():
    signature = Signature((TensorSpec("ids", "INT64", (-1,), max_length=4),
                           TensorSpec("frames", "FP32", (-1, 2), max_length=8),
                           TensorSpec("plan", "BYTES")), (TensorSpec("score", "FP32"),))
    examples = {"ids": np.array([[1, 2, 3]]), "frames": np.arange(6, dtype=np.float32).reshape(1, 3, 2),
                "plan": np.array(["pro"], dtype=object), "label": np.array([1])}
    assert probe_lengths(signature) == (1, 4, 8)
    longer = with_length(signature, examples, 8)
    assert longer["ids"].tolist() == [[1, 2, 3, 1]]  # capped at its max_length 4, values cycled
    assert longer["frames"][0, :, 0].tolist() == [0, 2, 4, 0, 2, 4, 0, 2]
    assert longer["plan"] is examples["plan"] and longer["label"] is examples["label"]
    assert with_length(signature, examples, 1)["ids"].tolist() == [[1]]
