"""Tiny trained models (tests/optimize/toy.py) and one optimisation run of the CNN shared by the tests."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pillars.components.optimize.variants import FitParams, OptimizeParams, OptimizeReport, optimize_model
from pillars.components.model.predictor import save_model
from tests.optimize.toy import REFERENCE, Blobs, Line, Tokens
from tests.tasks.conftest import Trained, train_in_process


@dataclasses.dataclass
class Saved:
    """A toy task trained in-process and saved in the v2 format."""

    trained: Trained
    directory: Path


def _train_and_save(task, reference: str, folder: Path, epochs: int) -> Saved:
    trained = train_in_process(task, epochs=epochs, learning_rate=3e-3)
    return Saved(trained, save_model(task, reference, trained.prep, trained.model, folder))


@pytest.fixture(scope="session")
def blobs(tmp_path_factory: pytest.TempPathFactory) -> Saved:
    return _train_and_save(Blobs(rows=600, channels=16, hidden=64), f"{REFERENCE}:Blobs",
                           tmp_path_factory.mktemp("blobs"), epochs=6)


@pytest.fixture(scope="session")
def line(tmp_path_factory: pytest.TempPathFactory) -> Saved:
    return _train_and_save(Line(), f"{REFERENCE}:Line", tmp_path_factory.mktemp("line"), epochs=15)


@pytest.fixture(scope="session")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Saved:
    return _train_and_save(Tokens(), f"{REFERENCE}:Tokens", tmp_path_factory.mktemp("tokens"), epochs=8)


FAST = OptimizeParams(prune_fit=FitParams(epochs=1, learning_rate=1e-4),
                      distill_fit=FitParams(epochs=12, learning_rate=3e-3), timing_repeats=5)
"""Short fine-tunes and few timing rounds: the tests judge behaviour, the benchmark judges speed."""


@pytest.fixture(scope="session")
def blobs_report(blobs: Saved, tmp_path_factory: pytest.TempPathFactory) -> OptimizeReport:
    """Every variant of the CNN, judged on its test split (one run shared by the tests)."""
    return optimize_model(blobs.directory, blobs.trained.data, tmp_path_factory.mktemp("blobs-variants"), FAST,
                          parent="blobs/1")
