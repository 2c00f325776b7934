"""A toy task with several inputs, written on the public task API, for the serving tests.

Inputs: ``text`` BYTES [N] (a few words), ``user_id`` INT64 [N] (0..4; others are unknown),
``history`` FP32 [N, -1] (1 to 8 past values) and the optional ``k`` INT64 [N] (1..4, default 2).
Outputs: ``label`` BYTES [N] (the best item's name), ``item_ids`` INT64 [N, k] and ``scores`` FP32 [N, k].
The model server imports it as ``tests.serving.toy_task:ToyTask`` (cwd = the repository root).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pillars.components.model.predictor import PROFILE_FILE, save_model
from pillars.components.data.profile import feature_profile
from pillars.components.task import (
    DataParams,
    Dataset,
    Examples,
    InputError,
    Outputs,
    Preprocessing,
    Signature,
    Task,
    TensorSpec,
)

REFERENCE = "tests.serving.toy_task:ToyTask"
VOCAB = ["good", "bad", "fine", "awful", "great", "meh"]
N_USERS = 5
N_ITEMS = 6
MAX_K = 4
DEFAULT_K = 2
MAX_HISTORY = 8
MAX_TEXT_BYTES = 64


class ToyNet(nn.Module):
    """Words (mean of embeddings), a user embedding and two history statistics -> item scores."""

    def __init__(self, vocab_size: int, n_users: int, n_items: int) -> None:
        super().__init__()
        self.words = nn.EmbeddingBag(vocab_size + 1, 8, mode="mean")  # index 0: a word not in the vocabulary
        self.users = nn.Embedding(n_users, 8)
        self.history = nn.Linear(2, 8)
        self.head = nn.Linear(8, n_items)

    def forward(self, tokens: torch.Tensor, offsets: torch.Tensor, user: torch.Tensor,
                history: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.words(tokens, offsets) + self.users(user) + self.history(history)))


class ToyTask(Task):
    """Scores items for a user from a short text and a history of values (the serving tests' toy)."""

    kind = "ranking"
    primary_metric = "hit_rate"
    description = "Serving tests' toy: BYTES + INT64 + a variable-length FP32 history + an optional k."

    def load_data(self, params: DataParams) -> Dataset:
        rng = np.random.default_rng(params.seed)
        n = 300
        words = rng.integers(0, len(VOCAB), size=(n, 3))
        lengths = rng.integers(1, 4, size=n)
        text = np.asarray([" ".join(VOCAB[w] for w in row[:k]) for row, k in zip(words, lengths)], dtype=str)
        users = rng.integers(0, N_USERS, size=n).astype(np.int64)
        history = rng.normal(size=(n, 4)).astype(np.float32)
        item = ((words[:, 0] + users) % N_ITEMS).astype(np.int64)
        examples = {"text": text, "user_id": users, "history": history, "item": item}
        parts = {"train": slice(0, 200), "val": slice(200, 250), "test": slice(250, n)}
        splits = {name: {k: v[part] for k, v in examples.items()} for name, part in parts.items()}
        return Dataset(splits["train"], splits["val"], splits["test"], {"source": "generated"})

    def fit_preprocessing(self, train: Examples, info: Mapping[str, Any]) -> Preprocessing:
        return {"vocab": VOCAB, "n_users": N_USERS, "n_items": N_ITEMS}

    def build_model(self, prep: Preprocessing) -> nn.Module:
        return ToyNet(len(prep["vocab"]), prep["n_users"], prep["n_items"])

    def signature(self, prep: Preprocessing) -> Signature:
        return Signature(
            (TensorSpec("text", "BYTES", (), max_bytes=MAX_TEXT_BYTES, description="a few words"),
             TensorSpec("user_id", "INT64", ()),
             TensorSpec("history", "FP32", (-1,), max_length=MAX_HISTORY),
             TensorSpec("k", "INT64", (), optional=True, description=f"items to return (default {DEFAULT_K})")),
            (TensorSpec("label", "BYTES"),
             TensorSpec("item_ids", "INT64", (-1,), max_length=MAX_K),
             TensorSpec("scores", "FP32", (-1,), max_length=MAX_K)))

    def encode(self, inputs: Examples, prep: Preprocessing) -> dict[str, torch.Tensor]:
        index = {w: i + 1 for i, w in enumerate(prep["vocab"])}
        tokens: list[int] = []
        offsets: list[int] = []
        for i, text in enumerate(inputs["text"].tolist()):
            words = text.split()
            if not words:
                raise InputError(f"input 'text': element {i} is empty")
            offsets.append(len(tokens))
            tokens.extend(index.get(w.lower(), 0) for w in words)
        users = np.asarray(inputs["user_id"], dtype=np.int64)
        unknown = sorted({int(u) for u in users if not 0 <= u < prep["n_users"]})
        if unknown:
            raise InputError(f"input 'user_id': unknown user id(s) {unknown[:5]}")
        _k(inputs)
        history = np.asarray(inputs["history"], dtype=np.float32)
        stats = np.stack([history.mean(axis=1), history[:, -1]], axis=1)
        return {"tokens": torch.tensor(tokens), "offsets": torch.tensor(offsets),
                "user": torch.from_numpy(users), "history": torch.from_numpy(stats)}

    def targets(self, examples: Examples, prep: Preprocessing) -> torch.Tensor:
        return torch.as_tensor(examples["item"], dtype=torch.int64)

    def loss(self, head: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(head, targets)

    def decode(self, head: torch.Tensor, inputs: Examples, prep: Preprocessing) -> Outputs:
        scores = head.float().cpu().numpy()
        top = np.argsort(-scores, axis=1, kind="stable")[:, :_k(inputs)]
        return {"label": np.asarray([f"item-{i}" for i in top[:, 0]], dtype=object),
                "item_ids": top.astype(np.int64),
                "scores": np.take_along_axis(scores, top, axis=1).astype(np.float32)}

    def evaluate(self, predict: Callable[[Examples], Outputs], examples: Examples,
                 prep: Preprocessing) -> dict[str, float]:
        out = predict({k: v for k, v in examples.items() if k != "item"})
        return {"hit_rate": float((out["item_ids"] == examples["item"][:, None]).any(axis=1).mean())}

    def drift_features(self, inputs: Examples, prep: Preprocessing) -> dict[str, np.ndarray]:
        history = np.asarray(inputs["history"], dtype=np.float64)
        return {"words": np.asarray([len(t.split()) for t in inputs["text"].tolist()], dtype=np.float64),
                "history_mean": history.mean(axis=1),
                "history_length": np.full(len(history), float(history.shape[1]))}


def _k(inputs: Examples) -> int:
    """The one ``k`` of a batch (the default when not given), or an InputError naming ``k``."""
    if "k" not in inputs:
        return DEFAULT_K
    values = np.unique(np.asarray(inputs["k"]))
    if len(values) != 1:
        raise InputError(f"input 'k': every row of a request asks for the same number of items, "
                         f"got {values[:5].tolist()}")
    if not 1 <= int(values[0]) <= MAX_K:
        raise InputError(f"input 'k': must be 1 to {MAX_K}, got {int(values[0])}")
    return int(values[0])


def make_toy_model(directory: Path, seed: int = 0, profile: bool = True) -> Path:
    """The toy task's model (a few training steps) saved in the v2 format, with a drift profile."""
    task = ToyTask()
    data = task.load_data(DataParams(seed=0))
    prep = task.fit_preprocessing(data.train, data.info)
    torch.manual_seed(seed)
    model = task.build_model(prep)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    inputs = {k: v for k, v in data.train.items() if k != "item"}
    for _ in range(20):
        optimizer.zero_grad()
        task.loss(model(**task.encode(inputs, prep)), task.targets(data.train, prep)).backward()
        optimizer.step()
    model.eval()
    save_model(task, REFERENCE, prep, model, directory)
    if profile:
        features = task.drift_features(inputs, prep)
        names = list(features)
        matrix = np.stack([features[n] for n in names], axis=1)
        document = {"rows": len(matrix), "schema": [{"name": n, "type": "float64"} for n in names],
                    "features": {n: feature_profile(features[n]) for n in names}, "label": None,
                    "reference_sample": np.round(matrix[:100], 6).tolist(), "kind": task.kind}
        (Path(directory) / PROFILE_FILE).write_text(json.dumps(document))
    return Path(directory)


def toy_inputs(n: int, seed: int = 1, history: int = 4, k: int | None = None) -> dict[str, np.ndarray]:
    """``n`` valid request rows of the toy task (``history`` values each; ``k`` given when not None)."""
    rng = np.random.default_rng(seed)
    text = np.asarray([" ".join(rng.choice(VOCAB, size=rng.integers(1, 4))) for _ in range(n)], dtype=str)
    inputs = {"text": text, "user_id": rng.integers(0, N_USERS, size=n).astype(np.int64),
              "history": rng.normal(size=(n, history)).astype(np.float32)}
    if k is not None:
        inputs["k"] = np.full(n, k, dtype=np.int64)
    return inputs
