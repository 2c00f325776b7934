"""A Triton model repository for an ONNX variant, for KServe's stock Triton runtime (``modelFormat: onnx``).

Layout (what ``tritonserver --model-repository`` and KServe's ``kserve-tritonserver`` runtime read)::

    <repository>/<name>/config.pbtxt      # platform onnxruntime_onnx, inputs/outputs from the graph
    <repository>/<name>/1/model.onnx

The configuration is derived from the ONNX graph itself: each graph input and output with its
``TYPE_*`` and its dimensions after the batch axis (``-1`` where the graph leaves one dynamic),
``max_batch_size`` and ``dynamic_batching`` so Triton batches concurrent requests.

Triton runs the graph only: its inputs are the task's *encoded* tensors and its output the model's
head (logits, standardised values), not the task's signature. For a task whose ``encode`` only casts
(images, already scaled features) that is the same request; for one that normalises, tokenizes or
looks up ids, clients must do that step, or serve the variant with Pillars' own runtime, which runs
``encode``/``decode`` around the same graph (and adds drift, auth and the task's outputs).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import onnx

from pillars.components.errors import ConfigError

MODEL_VERSION = "1"
PLATFORM = "onnxruntime_onnx"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
TRITON_TYPES = {
    onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.DOUBLE: "TYPE_FP64", onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.BFLOAT16: "TYPE_BF16", onnx.TensorProto.INT8: "TYPE_INT8", onnx.TensorProto.INT16: "TYPE_INT16",
    onnx.TensorProto.INT32: "TYPE_INT32", onnx.TensorProto.INT64: "TYPE_INT64", onnx.TensorProto.UINT8: "TYPE_UINT8",
    onnx.TensorProto.UINT16: "TYPE_UINT16", onnx.TensorProto.UINT32: "TYPE_UINT32",
    onnx.TensorProto.UINT64: "TYPE_UINT64", onnx.TensorProto.BOOL: "TYPE_BOOL", onnx.TensorProto.STRING: "TYPE_STRING",
}
"""ONNX element type -> Triton ``DataType``."""


def _tensors(values: list[onnx.ValueInfoProto], kind: str, source: Path) -> list[tuple[str, str, list[int]]]:
    """(name, TYPE_*, dims after the batch axis) of each graph input or output."""
    result = []
    for value in values:
        tensor = value.type.tensor_type
        if tensor.elem_type not in TRITON_TYPES:
            raise ConfigError(f"{source}: {kind} {value.name!r} has ONNX element type "
                              f"{onnx.TensorProto.DataType.Name(tensor.elem_type)}, which Triton has no type for")
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        if not dims or dims[0] != -1:
            raise ConfigError(f"{source}: {kind} {value.name!r} has no dynamic batch axis (shape {dims}); "
                              "export it with a dynamic first dimension")
        result.append((value.name, TRITON_TYPES[tensor.elem_type], dims[1:]))
    return result


def model_config(name: str, onnx_file: str | Path, max_batch_size: int = 64, max_queue_delay_us: int = 1000,
                 instances: int = 1) -> str:
    """The ``config.pbtxt`` text of ``onnx_file`` served as ``name``.

    Raises:
        ConfigError: a bad name or setting, a tensor type Triton lacks, or a tensor without a batch axis.
    """
    if not _NAME.match(name):
        raise ConfigError(f"Triton model name {name!r}: letters, digits, '_', '.', '-' only (a folder name)")
    if max_batch_size < 1 or max_queue_delay_us < 0 or instances < 1:
        raise ConfigError(f"max_batch_size and instances must be >= 1 and the queue delay >= 0; got "
                          f"{max_batch_size}, {instances}, {max_queue_delay_us}")
    source = Path(onnx_file)
    graph = onnx.load(str(source), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    inputs = _tensors([i for i in graph.input if i.name not in initializers], "input", source)
    outputs = _tensors(list(graph.output), "output", source)

    def block(kind: str, tensors: list[tuple[str, str, list[int]]]) -> str:
        items = ",\n".join(f'  {{\n    name: "{n}"\n    data_type: {t}\n    dims: [ {", ".join(map(str, d)) or "1"} ]'
                           + ("\n    reshape: { shape: [ ] }" if not d else "") + "\n  }" for n, t, d in tensors)
        return f"{kind} [\n{items}\n]\n"

    return (f'name: "{name}"\nplatform: "{PLATFORM}"\nmax_batch_size: {max_batch_size}\n'
            + block("input", inputs) + block("output", outputs)
            + f"dynamic_batching {{\n  max_queue_delay_microseconds: {max_queue_delay_us}\n}}\n"
            + f"instance_group [\n  {{\n    count: {instances}\n    kind: KIND_CPU\n  }}\n]\n")


def write_repository(repository: str | Path, name: str, onnx_file: str | Path, max_batch_size: int = 64,
                     max_queue_delay_us: int = 1000, instances: int = 1) -> Path:
    """Write ``<repository>/<name>/config.pbtxt`` and ``<repository>/<name>/1/model.onnx``; returns the
    model's folder. The configuration is checked (:func:`model_config`) before anything is written."""
    config = model_config(name, onnx_file, max_batch_size, max_queue_delay_us, instances)
    folder = Path(repository) / name
    (folder / MODEL_VERSION).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_file, folder / MODEL_VERSION / "model.onnx")
    (folder / "config.pbtxt").write_text(config)
    return folder
