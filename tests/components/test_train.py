"""Training: the loss goes down, early stopping, checkpoints and resume after a kill."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from pillars.components.errors import ConfigError
from pillars.components.data.prepare import PrepareParams, prepare
from pillars.components.training.checkpoints import CHECKPOINT
from pillars.components.training.fit import TrainParams, fit


@pytest.fixture(scope="module")
def digits():
    return prepare(PrepareParams(task="digits"))


@pytest.fixture(scope="module")
def cancer():
    return prepare(PrepareParams(task="breast_cancer"))


def test_a_dropout_hyperparameter_sets_every_dropout_of_the_tasks_model_unless_minus_one(cancer):
    from torch import nn

    from pillars.components.training.fit import init_model

    rates = lambda model: {m.p for m in model.modules() if isinstance(m, nn.Dropout)}  # noqa: E731
    assert rates(init_model(cancer.task, cancer.metadata["prep"], TrainParams(dropout=0.3))) == {0.3}
    assert rates(init_model(cancer.task, cancer.metadata["prep"], TrainParams())) == {0.1}  # the task's own


def test_two_epochs_lower_the_loss(cancer):
    result = fit(cancer.splits["train"], cancer.splits["val"], cancer.metadata, TrainParams(epochs=2), progress=False)
    first, second = result.history
    assert second["train_loss"] < first["train_loss"] and second["val_loss"] < first["val_loss"]
    assert result.device == "cpu" and result.start_epoch == 1


def test_cnn_learns_digits(digits):
    result = fit(digits.splits["train"], digits.splits["val"], digits.metadata, TrainParams(epochs=8), progress=False)
    assert result.model.config.architecture == "cnn"
    assert result.history[-1]["val_accuracy"] > 0.9


def test_early_stopping_keeps_the_best_epoch(cancer):
    params = TrainParams(epochs=200, patience=3, learning_rate=3e-3)
    result = fit(cancer.splits["train"], cancer.splits["val"], cancer.metadata, params, progress=False)
    assert result.stopped_early and len(result.history) < 200
    assert len(result.history) - result.best_epoch == 3
    best = min(h["val_loss"] for h in result.history)
    assert result.best_val_loss == pytest.approx(best)


def test_regression_predicts_on_the_original_target_scale():
    data = prepare(PrepareParams(task="diabetes"))
    result = fit(data.splits["train"], data.splits["val"], data.metadata, TrainParams(epochs=40), progress=False)
    val = data.splits["val"]
    y_val = val["label"]
    with torch.no_grad():
        head = result.model(**data.task.encode({"input-0": val["input-0"]}, result.prep))
    pred = data.task.decode(head, val, result.prep)["value"]
    assert abs(pred.mean() - y_val.mean()) < 0.3 * y_val.std()
    assert np.sqrt(np.mean((pred - y_val) ** 2)) < y_val.std()
    assert result.history[-1]["val_loss"] < 1.0  # MSE on the standardised target scale: better than the mean


EPOCHS = 100  # each about 10 ms: the kill, within 20 ms of the first checkpoint, lands long before the end
_KILLABLE = textwrap.dedent(f"""
    import sys
    from pillars.components.data.prepare import PrepareParams, prepare
    from pillars.components.training.fit import TrainParams, fit
    data = prepare(PrepareParams(task="breast_cancer"))
    fit(data.splits["train"], data.splits["val"], data.metadata,
        TrainParams(epochs={EPOCHS}, patience={EPOCHS}), checkpoint_dir=sys.argv[1], progress=False)
""")


def test_checkpoint_of_another_job_is_not_resumed(tmp_path, cancer):
    fit(cancer.splits["train"], cancer.splits["val"], cancer.metadata, TrainParams(epochs=2), tmp_path, progress=False)
    other = fit(cancer.splits["train"], cancer.splits["val"], cancer.metadata, TrainParams(epochs=2, seed=7),
                tmp_path, progress=False)
    assert other.start_epoch == 1 and len(other.history) == 2


def test_killed_training_resumes_from_its_last_checkpoint(tmp_path, cancer):
    ckpt = tmp_path / "ckpt"
    proc = subprocess.Popen([sys.executable, "-c", _KILLABLE, str(ckpt)])
    deadline = time.monotonic() + 120
    while not (ckpt / CHECKPOINT).exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    done = torch.load(ckpt / CHECKPOINT, weights_only=True)["epoch"]
    assert done < EPOCHS, "the kill came after training finished; the test proves nothing"

    seen: list[int] = []
    result = fit(cancer.splits["train"], cancer.splits["val"], cancer.metadata,
                 TrainParams(epochs=EPOCHS, patience=EPOCHS), ckpt, on_epoch=lambda e, m: seen.append(e), progress=False)
    assert result.start_epoch == done + 1
    assert seen[0] == done + 1 and seen[-1] == EPOCHS
    assert [h["epoch"] for h in result.history] == list(range(1, EPOCHS + 1))


def test_a_finished_job_is_not_trained_again(tmp_path, cancer):
    params = TrainParams(epochs=3)
    fit(cancer.splits["train"], cancer.splits["val"], cancer.metadata, params, tmp_path, progress=False)
    seen: list[int] = []
    again = fit(cancer.splits["train"], cancer.splits["val"], cancer.metadata, params, tmp_path,
                on_epoch=lambda e, m: seen.append(e), progress=False)
    assert seen == [] and again.start_epoch == 4 and len(again.history) == 3


@pytest.mark.parametrize("field,value", [("epochs", 0), ("batch_size", 0), ("learning_rate", -1.0),
                                         ("dropout", 1.0), ("patience", 0), ("device", "tpu")])
def test_invalid_hyperparameters_are_named(field, value):
    with pytest.raises(ConfigError, match=f"invalid {field}"):
        TrainParams(**{field: value})


def test_asking_for_cuda_without_a_gpu_fails_clearly(cancer):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match="no CUDA device"):
        fit(cancer.splits["train"], cancer.splits["val"], cancer.metadata, TrainParams(epochs=1, device="cuda"))
