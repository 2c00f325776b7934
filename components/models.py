"""Model architectures, the saved-model format, and the predictor used by MLflow pyfunc and the server.

A saved model is a folder with two files, loadable without unpickling anything:

- ``config.json``: a :class:`ModelConfig` (task, kind, architecture, input shape, feature and class names).
- ``model.safetensors``: the weights, including the input standardisation fitted on the train split
  (and, for regression, the target scale), so the model takes raw features.

The MLflow pyfunc model keeps these files (and ``data_profile.json``) under ``artifacts/``;
:func:`locate_model_dir` finds them in either layout.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from pillars.components.errors import ConfigError, PillarsError

FORMAT = "pillars.v1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PROFILE_FILE = "data_profile.json"
ARCHITECTURES = ("mlp", "cnn")
KINDS = ("classification", "regression")


class InputError(PillarsError, ValueError):
    """A prediction request's input does not fit the model (shape, type, NaN/Inf, empty batch)."""


@dataclasses.dataclass
class ModelConfig:
    """Everything needed to rebuild a model and to check its inputs."""

    task: str
    kind: str
    architecture: str
    input_shape: list[int]
    feature_names: list[str]
    classes: list[str] | None = None
    hidden_sizes: list[int] = dataclasses.field(default_factory=lambda: [128, 64])
    dropout: float = 0.1
    format: str = FORMAT
    cnn_channels: list[int] = dataclasses.field(default_factory=lambda: [32, 64])
    """Output channels of the CNN's two convolutions (its distilled student uses fewer)."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"model kind must be one of {KINDS}, got {self.kind!r}")
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        if self.architecture == "cnn" and len(self.input_shape) != 3:
            raise ConfigError(f"a cnn needs a [channels, height, width] input shape, got {self.input_shape}")
        if self.kind == "classification" and (not self.classes or len(self.classes) < 2):
            raise ConfigError("a classifier needs at least two classes")
        if int(np.prod(self.input_shape)) != len(self.feature_names):
            raise ConfigError(
                f"input shape {self.input_shape} holds {int(np.prod(self.input_shape))} values "
                f"but {len(self.feature_names)} feature names were given"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if len(self.cnn_channels) != 2 or min(self.cnn_channels) < 1:
            raise ConfigError(f"cnn_channels must be two positive widths, got {self.cnn_channels}")

    @property
    def n_features(self) -> int:
        """Number of scalar input values per example."""
        return len(self.feature_names)

    @property
    def n_outputs(self) -> int:
        """Width of the network's head: classes for a classifier, 1 for a regressor."""
        return len(self.classes) if self.kind == "classification" and self.classes else 1

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``cnn_channels`` only when not the default, so 0.1 readers still read it)."""
        data = dataclasses.asdict(self)
        if data["cnn_channels"] == [32, 64]:
            del data["cnn_channels"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from a dict read from ``config.json``, rejecting unknown formats and keys."""
        if data.get("format", FORMAT) != FORMAT:
            raise ConfigError(f"unsupported model format {data.get('format')!r}; expected {FORMAT!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown keys in model config: {', '.join(unknown)}")
        return cls(**data)


class Standardize(nn.Module):
    """Subtracts the train-split mean and divides by its standard deviation (buffers, saved with the weights)."""

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(*shape))
        self.register_buffer("std", torch.ones(*shape))

    def fit(self, mean: np.ndarray, std: np.ndarray) -> None:
        """Set the statistics; zero deviations become 1 so constant features pass through."""
        std = np.where(np.asarray(std) > 1e-12, std, 1.0)
        self.mean.copy_(torch.as_tensor(np.asarray(mean), dtype=torch.float32).reshape(self.mean.shape))
        self.std.copy_(torch.as_tensor(std, dtype=torch.float32).reshape(self.std.shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _mlp(n_in: int, hidden: Sequence[int], n_out: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    width = n_in
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
        width = size
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


def _small_cnn(channels: int, n_out: int, dropout: float, widths: Sequence[int] = (32, 64)) -> nn.Sequential:
    first, second = widths
    return nn.Sequential(
        nn.Conv2d(channels, first, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(first, second, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d((4, 4)),
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(second * 16, 128),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(128, n_out),
    )


class PillarsNet(nn.Module):
    """Standardisation, a body chosen by architecture, and (for regression) the target scale.

    ``forward`` returns the head: class logits, or the regression value on the standardised
    target scale. :meth:`decode` turns the head into what users get back.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        shape = config.input_shape if config.architecture == "cnn" else [config.n_features]
        self.input_shape = list(shape)
        self.standardize = Standardize(shape)
        if config.architecture == "cnn":
            self.body = _small_cnn(shape[0], config.n_outputs, config.dropout, config.cnn_channels)
        else:
            self.body = _mlp(config.n_features, config.hidden_sizes, config.n_outputs, config.dropout)
        self.register_buffer("target_mean", torch.zeros(1))
        self.register_buffer("target_std", torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], *self.input_shape)
        return self.body(self.standardize(x))

    def encode_target(self, y: torch.Tensor) -> torch.Tensor:
        """Regression targets onto the standardised scale the head predicts."""
        return (y - self.target_mean) / self.target_std

    def decode(self, head: torch.Tensor) -> torch.Tensor:
        """Probabilities for a classifier; values on the original target scale for a regressor."""
        if self.config.kind == "classification":
            return torch.softmax(head.float(), dim=-1)
        return head.float().squeeze(-1) * self.target_std + self.target_mean


def build_model(config: ModelConfig) -> PillarsNet:
    """A fresh, untrained network for ``config``."""
    return PillarsNet(config)


def save_model(model: PillarsNet, directory: str | Path) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``directory`` (created if missing)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": FORMAT})
    (directory / CONFIG_FILE).write_text(json.dumps(model.config.to_dict(), indent=2))
    return directory


def locate_model_dir(path: str | Path) -> Path:
    """The folder holding ``config.json``: ``path`` itself, or its MLflow ``artifacts/`` subfolder."""
    path = Path(path)
    for candidate in (path, path / "artifacts"):
        if (candidate / CONFIG_FILE).is_file() and (candidate / WEIGHTS_FILE).is_file():
            return candidate
    raise ConfigError(f"no Pillars model in {path}: expected {CONFIG_FILE} and {WEIGHTS_FILE}")


def load_model(path: str | Path, device: str | torch.device = "cpu") -> PillarsNet:
    """Load a saved model (plain folder or MLflow model folder) for inference, without unpickling."""
    directory = locate_model_dir(path)
    try:
        config = ModelConfig.from_dict(json.loads((directory / CONFIG_FILE).read_text()))
    except (json.JSONDecodeError, TypeError) as e:
        raise ConfigError(f"{directory / CONFIG_FILE} is not a valid model config: {e}") from e
    model = build_model(config)
    model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
    return model.to(device).eval()


def load_profile(path: str | Path) -> dict[str, Any] | None:
    """The training data profile stored beside the model, or None when there is none."""
    directory = locate_model_dir(path)
    profile = directory / PROFILE_FILE
    return json.loads(profile.read_text()) if profile.is_file() else None


class Predictor:
    """Checks inputs and runs a loaded model; the one inference path for pyfunc and the server."""

    def __init__(self, model: PillarsNet) -> None:
        self.model = model
        self.config = model.config
        self.device = next(model.parameters()).device

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> Predictor:
        """Load from a model folder (plain or MLflow layout)."""
        return cls(load_model(path, device))

    def check_input(self, x: Any) -> np.ndarray:
        """Return ``x`` as a float32 batch of shape ``[N, n_features]``, or raise :class:`InputError`."""
        try:
            arr = np.asarray(x, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise InputError(f"inputs must be numbers: {e}") from e
        n = self.config.n_features
        if arr.ndim == 0:
            raise InputError("inputs must be a batch, got a scalar")
        if arr.shape[0] == 0:
            raise InputError("empty batch: at least one instance is needed")
        per_example = int(np.prod(arr.shape[1:])) if arr.ndim > 1 else 1
        if arr.ndim == 1 or per_example != n or (arr.ndim > 2 and list(arr.shape[1:]) != self.config.input_shape):
            expected = [n] if len(self.config.input_shape) == 1 else f"[{n}] or {self.config.input_shape}"
            raise InputError(
                f"each instance must have shape {expected} ({n} features), got {list(arr.shape[1:])}"
            )
        if not np.isfinite(arr).all():
            raise InputError("inputs contain NaN or Inf")
        return arr.reshape(arr.shape[0], n)

    @torch.inference_mode()
    def predict(self, x: Any) -> dict[str, np.ndarray]:
        """Predict a batch.

        Returns:
            For a classifier ``probabilities`` ``[N, K]`` float32, ``class_index`` ``[N]`` int64 and
            ``label`` ``[N]`` class names; for a regressor ``value`` ``[N]`` float32.

        Raises:
            InputError: the batch does not fit the model.
        """
        return self.predict_checked(self.check_input(x))

    @torch.inference_mode()
    def predict_checked(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """:meth:`predict` for a float32 ``[N, n_features]`` batch that :meth:`check_input` (or a caller
        checking the same way, such as the model server at its edge) has already accepted."""
        out = self.model.decode(self.model(torch.from_numpy(batch).to(self.device))).cpu().numpy()
        if self.config.kind == "classification":
            index = out.argmax(axis=1).astype(np.int64)
            labels = np.asarray(self.config.classes, dtype=object)[index]
            return {"probabilities": out.astype(np.float32), "class_index": index, "label": labels}
        return {"value": out.astype(np.float32)}
