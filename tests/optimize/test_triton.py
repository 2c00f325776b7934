"""The Triton model repository written beside each ONNX variant: parsed with Triton's own ModelConfig
schema (tritonclient's protobuf) and checked against the ONNX graph it serves."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import onnx
import pytest
import tritonclient
from google.protobuf import text_format

from pillars.components.errors import ConfigError
from pillars.components.deploy.triton import model_config, write_repository


def _triton_model_config() -> object:
    """Triton's ``model_config_pb2`` alone: importing ``tritonclient.grpc`` would also register Triton's
    service protos, whose ``inference.*`` names clash with KServe's in one process's descriptor pool."""
    path = Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


model_config_pb2 = _triton_model_config()
ELEMENT = {onnx.TensorProto.FLOAT: model_config_pb2.TYPE_FP32, onnx.TensorProto.INT64: model_config_pb2.TYPE_INT64}


def _parse(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _dims(value: onnx.ValueInfoProto) -> list[int]:
    return [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]


@pytest.mark.parametrize("variant", ["onnx", "onnx-int8", "onnx-int8-static"])
def test_each_onnx_variant_has_a_triton_repository_that_matches_its_graph(blobs_report, variant):
    folder = Path(next(v.directory for v in blobs_report.variants if v.variant == variant))
    config = _parse(folder / "triton" / "blobs" / "config.pbtxt")
    served = folder / "triton" / "blobs" / "1" / "model.onnx"
    assert served.read_bytes() == (folder / "model.onnx").read_bytes()
    graph = onnx.load(str(served)).graph
    assert config.name == "blobs" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 64 and config.HasField("dynamic_batching")
    for declared, actual in [*zip(config.input, graph.input, strict=True), *zip(config.output, graph.output, strict=True)]:
        assert declared.name == actual.name
        assert declared.data_type == ELEMENT[actual.type.tensor_type.elem_type]
        assert _dims(actual)[0] == -1 and list(declared.dims) == _dims(actual)[1:]
    assert [i.name for i in config.input] == ["image"] and list(config.input[0].dims) == [1, 8, 8]
    assert list(config.output[0].dims) == [4]


def test_a_graph_without_a_batch_axis_or_a_bad_name_is_refused_before_writing(tmp_path):
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [3, 2])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [3, 2])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "fixed", [x], [y])
    path = tmp_path / "fixed.onnx"
    onnx.save(onnx.helper.make_model(graph), str(path))
    with pytest.raises(ConfigError, match="input 'x' has no dynamic batch axis"):
        write_repository(tmp_path / "repo", "fixed", path)
    assert not (tmp_path / "repo").exists()
    with pytest.raises(ConfigError, match="Triton model name 'a/b'"):
        model_config("a/b", path)


def test_a_scalar_per_row_output_is_declared_as_one_value_reshaped(tmp_path):
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch"])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch"])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "scalar", [x], [y])
    path = tmp_path / "scalar.onnx"
    onnx.save(onnx.helper.make_model(graph), str(path))
    config = _parse(write_repository(tmp_path / "repo", "scalar", path, max_batch_size=8) / "config.pbtxt")
    assert list(config.input[0].dims) == [1] and list(config.input[0].reshape.shape) == []
    assert config.max_batch_size == 8
