"""The network of the built-in tabular tasks (:mod:`pillars.tasks.tabular`): an MLP over a table's
features, or a small CNN over 1xHxW images, with the train split's standardisation (and a regressor's
target scale) held as buffers so the model takes raw features.

Saving, loading and predicting go through the task API (:mod:`pillars.components.model.predictor`); the
weights' names here are those Pillars 0.1 saved, so its models load into this network unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from pillars.components.errors import ConfigError
from pillars.components.records import from_fields

FORMAT = "pillars.v1"
"""The ``format`` of a Pillars 0.1 ``config.json`` (a serialised :class:`ModelConfig`)."""
ARCHITECTURES = ("mlp", "cnn")
KINDS = ("classification", "regression")


@dataclasses.dataclass
class ModelConfig:
    """The shape of a tabular network (as Pillars 0.1 saved it in ``config.json``)."""

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
        return from_fields(cls, data, "model config")


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
