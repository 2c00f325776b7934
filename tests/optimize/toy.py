"""Tiny tasks on the public task API for the optimisation tests: generated data, seconds to train.

- :class:`Blobs`: 1x8x8 images of a bright square in one of four quadrants, a small CNN (``channels``,
  ``hidden``); its :meth:`Blobs.student` is the same task with a quarter of the widths.
- :class:`Line`: a regression of a noisy linear function of 6 features by an MLP.
- :class:`Branchy`: a model whose forward branches on the data, which ``torch.export`` cannot trace.
- :class:`BrokenStudent`: :class:`Line` whose student cannot be built: distillation crashes.
- :class:`Tokens`: token ids ``INT64 [N, -1]`` padded to one length, read by an ``nn.EmbeddingBag``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from pillars.components.task import (ClassificationTask, DataParams, Dataset, Examples, Preprocessing,
                                     RegressionTask, Signature, TensorSpec)

REFERENCE = "tests.optimize.toy"


def _split(inputs: Examples, n: int, seed: int) -> tuple[Examples, Examples, Examples]:
    order = np.random.default_rng(seed).permutation(n)
    cut1, cut2 = int(n * 0.7), int(n * 0.85)
    train, val, test = ({k: v[idx] for k, v in inputs.items()} for idx in (order[:cut1], order[cut1:cut2], order[cut2:]))
    return train, val, test


class BlobNet(nn.Module):
    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels * 2, 3, padding=1)
        self.fc1 = nn.Linear(channels * 2 * 16, hidden)
        self.fc2 = nn.Linear(hidden, 4)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.conv1(image)), 2)
        x = torch.relu(self.conv2(x))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


@dataclasses.dataclass
class Blobs(ClassificationTask):
    """Where is the bright square? Four classes of noisy 8x8 images."""

    channels: int = 16
    hidden: int = 64
    rows: int = 1200

    def load_data(self, params: DataParams) -> Dataset:
        rng = np.random.default_rng(1234)
        label = rng.integers(0, 4, self.rows)
        image = rng.normal(0.0, 0.6, (self.rows, 1, 8, 8)).astype(np.float32)
        for i, c in enumerate(label):
            r, col = (c // 2) * 4 + rng.integers(0, 2), (c % 2) * 4 + rng.integers(0, 2)
            image[i, 0, r:r + 2, col:col + 2] += 1.5
        train, val, test = _split({"image": image, "label": label.astype(np.int64)}, self.rows, params.seed)
        return Dataset(train, val, test, {"classes": ["top-left", "top-right", "bottom-left", "bottom-right"]})

    def build_model(self, prep: Preprocessing) -> nn.Module:
        return BlobNet(self.channels, self.hidden)

    def signature(self, prep: Preprocessing) -> Signature:
        return Signature((TensorSpec("image", "FP32", (1, 8, 8)),), self.outputs(prep))

    def encode(self, inputs: Examples, prep: Preprocessing) -> dict[str, torch.Tensor]:
        return {"image": torch.as_tensor(np.asarray(inputs["image"], dtype=np.float32))}

    def student(self) -> Blobs:
        return dataclasses.replace(self, channels=max(self.channels // 4, 1), hidden=max(self.hidden // 4, 1))


class LineNet(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(6, hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(features)))


@dataclasses.dataclass
class Line(RegressionTask):
    """y = w.x + noise, 6 features, standardised by the train split's mean and scale."""

    hidden: int = 32

    def load_data(self, params: DataParams) -> Dataset:
        rng = np.random.default_rng(7)
        x = rng.normal(0, 1, (600, 6)).astype(np.float32)
        y = x @ np.array([1.0, -2.0, 0.5, 0.0, 3.0, 1.0]) + 10 + rng.normal(0, 0.3, 600)
        train, val, test = _split({"features": x, "label": y}, 600, params.seed)
        return Dataset(train, val, test, {})

    def fit_preprocessing(self, train: Examples, info: Mapping[str, Any]) -> Preprocessing:
        x = np.asarray(train["features"], dtype=np.float64)
        return {**super().fit_preprocessing(train, info), "mean": x.mean(0).tolist(), "std": x.std(0).tolist()}

    def build_model(self, prep: Preprocessing) -> nn.Module:
        return LineNet(self.hidden)

    def signature(self, prep: Preprocessing) -> Signature:
        return Signature((TensorSpec("features", "FP32", (6,)),), self.outputs(prep))

    def encode(self, inputs: Examples, prep: Preprocessing) -> dict[str, torch.Tensor]:
        x = (np.asarray(inputs["features"], dtype=np.float32) - np.asarray(prep["mean"], np.float32)) / np.asarray(
            prep["std"], np.float32)
        return {"features": torch.as_tensor(x)}


class BranchNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if float(features.sum()) > 0:  # a Python branch on the data: torch.export cannot trace it
            return self.fc(features)
        return -self.fc(features)


@dataclasses.dataclass
class Branchy(Line):
    """:class:`Line` with a model that branches on its input in Python."""

    def build_model(self, prep: Preprocessing) -> nn.Module:
        return BranchNet()


MAX_TOKENS = 32


class BagNet(nn.Module):
    def __init__(self, vocabulary: int) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(vocabulary, 16, mode="mean", padding_idx=0)  # 0 pads a row
        self.out = nn.Linear(16, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(self.bag(ids))


@dataclasses.dataclass
class Tokens(ClassificationTask):
    """Is the mean token id of a row above the middle? Token ids ``INT64 [N, -1]`` (``max_length`` 32),
    every row of the data padded with 0 to 32, read by an ``nn.EmbeddingBag``: a test split of one length,
    and a graph onnxruntime's quantizer cannot take (its shape inference fails on the bag's ``Loop``)."""

    vocabulary: int = 50
    rows: int = 600

    def load_data(self, params: DataParams) -> Dataset:
        rng = np.random.default_rng(5)
        ids = np.zeros((self.rows, MAX_TOKENS), dtype=np.int64)
        label = np.zeros(self.rows, dtype=np.int64)
        for i in range(self.rows):
            n = int(rng.integers(4, MAX_TOKENS + 1))
            ids[i, :n] = rng.integers(1, self.vocabulary, n)
            label[i] = int(ids[i, :n].mean() > self.vocabulary / 2)
        train, val, test = _split({"ids": ids, "label": label}, self.rows, params.seed)
        return Dataset(train, val, test, {"classes": ["low", "high"]})

    def build_model(self, prep: Preprocessing) -> nn.Module:
        return BagNet(self.vocabulary)

    def signature(self, prep: Preprocessing) -> Signature:
        return Signature((TensorSpec("ids", "INT64", (-1,), max_length=MAX_TOKENS),), self.outputs(prep))

    def encode(self, inputs: Examples, prep: Preprocessing) -> dict[str, torch.Tensor]:
        return {"ids": torch.as_tensor(np.asarray(inputs["ids"], dtype=np.int64))}


@dataclasses.dataclass
class BrokenStudent(Line):
    """:class:`Line` whose student's model cannot be built (a bug in the user's code): distillation crashes."""

    def student(self) -> Line:
        return dataclasses.replace(self, hidden=-1)  # nn.Linear(6, -1) raises RuntimeError
