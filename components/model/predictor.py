"""The saved-model format of the task API and the one inference path (pyfunc, gate, evaluation, server).

A saved model is a folder, loadable without unpickling anything:

- ``config.json``: ``{"format": "pillars.v2", "api_version": 1, "task": "package.module:attribute",
  "task_args": {...}, "signature": {...}, "framework": "torch"}``;
- ``model.safetensors``: the module's weights (``framework == "torch"``), or ``model.onnx``: the
  exported graph (``framework == "onnx"``, an optimised variant run by ONNX Runtime, see
  :mod:`pillars.components.optimize.variants`); :func:`load_predictor` picks the runtime from ``framework``;
- ``preprocessing.json``: what preprocessing learned from the train split (vocabulary, scalers, id maps);
- ``data_profile.json`` (optional): the drift baseline.

The task code is imported from installed packages (:func:`pillars.components.task.load_task`), never from
the folder; a model whose task is not installed fails with one line naming the package to install.
The MLflow pyfunc keeps the same files under ``artifacts/``; :func:`locate_model_dir` finds them.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import torch
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state
from safetensors.torch import load_file, save_file
from torch import nn

from pillars.components.task.contract import Signature
from pillars.components.task.contract import check_inputs as check_inputs  # re-exported: the one input check
from pillars.components.errors import ConfigError
from pillars.components.records import from_fields
from pillars.components.settings import Settings
from pillars.components.task import API_VERSION, Examples, Outputs, Preprocessing, Task, load_task

FORMAT = "pillars.v2"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
ONNX_FILE = "model.onnx"
FRAMEWORKS = ("torch", "onnx")
ORT_ERRORS = (ort_state.Fail, ort_state.InvalidArgument, ort_state.NoSuchFile, ort_state.InvalidGraph,
              ort_state.InvalidProtobuf, ort_state.RuntimeException, ort_state.NotImplemented)
"""What ONNX Runtime raises for a graph it cannot load or run (its own types, not RuntimeError)."""
PREPROCESSING_FILE = "preprocessing.json"
PROFILE_FILE = "data_profile.json"


@dataclasses.dataclass
class SavedConfig:
    """``config.json`` of a saved model."""

    task: str
    task_args: dict[str, Any]
    signature: dict[str, Any]
    framework: str = "torch"
    api_version: int = API_VERSION
    format: str = FORMAT
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Free-form facts about this model (e.g. an optimised variant's kind and parent)."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SavedConfig:
        if data.get("format") != FORMAT:
            raise ConfigError(f"unsupported model format {data.get('format')!r}; expected {FORMAT!r}")
        return from_fields(cls, data, "model config")


def save_model(task: Task, reference: str, prep: Preprocessing, model: nn.Module, directory: str | Path,
               extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``config.json``, ``model.safetensors`` and ``preprocessing.json`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": FORMAT})
    _write_config(task, reference, prep, directory, "torch", extra)
    return directory


def save_onnx_model(task: Task, reference: str, prep: Preprocessing, onnx_file: str | Path,
                    directory: str | Path, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``config.json`` (framework ``onnx``), ``model.onnx`` (a copy of ``onnx_file``) and
    ``preprocessing.json`` into ``directory``: a model :func:`load_predictor` runs with ONNX Runtime.

    The graph's inputs are named as the keyword arguments ``task.encode`` returns, its first output is
    the head ``task.decode`` takes (what :func:`pillars.components.optimize.onnx_export.export_onnx` writes).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_file, directory / ONNX_FILE)
    _write_config(task, reference, prep, directory, "onnx", extra)
    return directory


def _write_config(task: Task, reference: str, prep: Preprocessing, directory: Path, framework: str,
                  extra: Mapping[str, Any] | None) -> None:
    (directory / PREPROCESSING_FILE).write_text(json.dumps(prep))
    config = SavedConfig(reference, task.task_args(), task.signature(prep).to_dict(), framework=framework,
                         extra=dict(extra or {}))
    (directory / CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(config), indent=2))


def locate_model_dir(path: str | Path) -> Path:
    """The folder holding ``config.json``: ``path`` itself, or its MLflow ``artifacts/`` subfolder."""
    path = Path(path)
    for candidate in (path, path / "artifacts"):
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    raise ConfigError(f"no Pillars model in {path}: expected {CONFIG_FILE}")


def read_config(directory: Path) -> tuple[SavedConfig, Preprocessing]:
    """The saved config and preprocessing of the model in ``directory`` (a 0.1 model is translated)."""
    try:
        data = json.loads((directory / CONFIG_FILE).read_text())
        if data.get("format") == LEGACY_FORMAT:
            return _from_legacy(data, directory)
        config = SavedConfig.from_dict(data)
    except (json.JSONDecodeError, TypeError, KeyError) as e:
        raise ConfigError(f"{directory / CONFIG_FILE} is not a valid model config: {e}") from e
    prep_file = directory / PREPROCESSING_FILE
    return config, (json.loads(prep_file.read_text()) if prep_file.is_file() else {})


LEGACY_FORMAT = "pillars.v1"
LEGACY_BUILTINS = ("breast_cancer", "digits", "diabetes")


def _from_legacy(data: Mapping[str, Any], directory: Path) -> tuple[SavedConfig, Preprocessing]:
    """A ``pillars.v1`` model (Pillars 0.1: an MLP or CNN over a table) as the tabular task's v2 config.

    The 0.1 weights hold the input standardisation (and a regressor's target scale) as buffers; they
    become the preprocessing the tabular task rebuilds its network from.
    """
    weights = load_file(str(directory / WEIGHTS_FILE))
    kind = data["kind"]
    prep: Preprocessing = {"feature_names": list(data["feature_names"]), "input_shape": list(data["input_shape"]),
                           "mean": weights["standardize.mean"].reshape(-1).tolist(),
                           "std": weights["standardize.std"].reshape(-1).tolist()}
    if kind == "classification":
        prep["classes"] = list(data["classes"])
    else:
        prep["target_mean"] = float(weights["target_mean"][0])
        prep["target_std"] = float(weights["target_std"][0])
    cls = "TabularClassification" if kind == "classification" else "TabularRegression"
    args = {"builtin": data["task"] if data["task"] in LEGACY_BUILTINS else "",
            "architecture": data["architecture"], "hidden_sizes": list(data.get("hidden_sizes", [128, 64])),
            "dropout": float(data.get("dropout", 0.1))}
    reference = f"pillars.tasks.tabular:{cls}"
    task = load_task(reference, args)
    return SavedConfig(reference, task.task_args(), task.signature(prep).to_dict(),
                       extra={"upgraded_from": LEGACY_FORMAT}), prep


def load_profile(path: str | Path) -> dict[str, Any] | None:
    """The training data profile stored beside the model, or None when there is none."""
    profile = locate_model_dir(path) / PROFILE_FILE
    return json.loads(profile.read_text()) if profile.is_file() else None


def drift_matrix(task: Task, inputs: Examples, prep: Preprocessing) -> tuple[list[str], np.ndarray]:
    """``task.drift_features`` of a batch as names and a float64 ``[N, F]`` matrix: what the server
    computes per request and what the training profile (``data_profile.json``) describes
    (:meth:`pillars.components.task.Task.drift_matrix`)."""
    return task.drift_matrix(inputs, prep)


class Predictor:
    """A loaded model with its task: checks inputs, encodes, runs the network, decodes.

    Subclasses differ only in :meth:`forward` (PyTorch here; ONNX Runtime for optimised variants).
    """

    def __init__(self, task: Task, prep: Preprocessing, config: SavedConfig) -> None:
        self.task = task
        self.prep = prep
        self.config = config
        self.signature = Signature.from_dict(config.signature)

    def forward(self, encoded: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def check(self, inputs: Mapping[str, Any]) -> Examples:
        """``inputs`` as arrays that fit the signature (:func:`pillars.components.task.contract.check_inputs`).

        Raises:
            InputError: naming the input and what is wrong.
        """
        return check_inputs(self.signature, inputs)

    def predict(self, inputs: Mapping[str, Any]) -> Outputs:
        """Check, encode, run and decode a batch.

        Raises:
            InputError: the batch does not fit the signature, or the task's encode refused a value.
        """
        return self.predict_checked(self.check(inputs))

    @torch.inference_mode()
    def predict_checked(self, inputs: Examples) -> Outputs:
        """:meth:`predict` for inputs already checked (by :meth:`check` or the server's edge)."""
        encoded = self.task.encode(inputs, self.prep)
        return self.task.decode(self.forward(encoded), inputs, self.prep)

    def drift_rows(self, inputs: Examples) -> tuple[list[str], np.ndarray]:
        """The task's drift features of a batch: names and a float64 ``[N, F]`` matrix."""
        return drift_matrix(self.task, inputs, self.prep)


class TorchPredictor(Predictor):
    """A PyTorch model on a device."""

    def __init__(self, task: Task, prep: Preprocessing, config: SavedConfig, model: nn.Module,
                 device: torch.device) -> None:
        super().__init__(task, prep, config)
        self.model = model
        self.device = device

    def forward(self, encoded: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(**{k: v.to(self.device) for k, v in encoded.items()})


class OnnxPredictor(Predictor):
    """An exported ONNX graph run by ONNX Runtime (an optimised variant: ``framework == "onnx"``).

    :meth:`forward` feeds the session the task's encoded tensors by name and returns its first output
    as a CPU tensor, so ``task.decode`` (and everything around it: checks, batching, drift) is unchanged.
    """

    def __init__(self, task: Task, prep: Preprocessing, config: SavedConfig,
                 session: onnxruntime.InferenceSession) -> None:
        super().__init__(task, prep, config)
        self.session = session
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_name = session.get_outputs()[0].name
        self.device = torch.device("cpu")

    def forward(self, encoded: dict[str, torch.Tensor]) -> torch.Tensor:
        missing = [n for n in self.input_names if n not in encoded]
        if missing:
            raise ConfigError(f"the ONNX graph takes {missing}, which the task's encode does not produce "
                              f"(it produces {sorted(encoded)}); export the model again")
        feeds = {n: encoded[n].detach().cpu().contiguous().numpy() for n in self.input_names}
        (head,) = self.session.run([self.output_name], feeds)
        return torch.from_numpy(head)


def onnx_session(path: str | Path, threads: int = 0, device: str | torch.device = "cpu"
                 ) -> onnxruntime.InferenceSession:
    """An ONNX Runtime session of ``path``: ``threads`` intra-op threads (0: ONNX Runtime's default, one
    per core), on CUDA when ``device`` is a GPU and this onnxruntime build has the CUDA provider."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(int(threads), 0)
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    # No busy-waiting between runs: the server's event loop, batcher and drift thread share these cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CPUExecutionProvider"]
    if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return onnxruntime.InferenceSession(str(path), sess_options=options, providers=providers)
    except ORT_ERRORS as e:
        raise ConfigError(f"{path}: ONNX Runtime cannot load this graph: {e}") from e


def load_predictor(path: str | Path, device: str | torch.device = "cpu", onnx_threads: int | None = None
                   ) -> Predictor:
    """Load a saved model (plain folder or MLflow model folder) for inference, without unpickling.

    The runtime follows the saved ``framework``: PyTorch (``torch``) or ONNX Runtime (``onnx``).

    Args:
        device: where a PyTorch model runs (ONNX graphs run on CPU unless onnxruntime has CUDA).
        onnx_threads: intra-op threads of an ONNX session; None: the ``PILLARS_ONNX_THREADS`` setting.

    Raises:
        ConfigError: no model there, an unknown format or framework, or its task is not installed (one
            line naming it).
    """
    directory = locate_model_dir(path)
    config, prep = read_config(directory)
    if config.framework not in FRAMEWORKS:
        raise ConfigError(f"{directory}: unknown model framework {config.framework!r}; "
                          f"known: {', '.join(FRAMEWORKS)}")
    task = load_task(config.task, config.task_args)
    if config.framework == "onnx":
        threads = Settings().onnx_threads if onnx_threads is None else onnx_threads
        return OnnxPredictor(task, prep, config, onnx_session(directory / ONNX_FILE, threads, device))
    device = torch.device(device)
    model = task.build_model(prep)
    model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
    return TorchPredictor(task, prep, config, model.to(device).eval(), device)
