"""The saved-model format through the tabular task: safetensors + JSON config and preprocessing, no pickle,
the input checks, and the tabular network's own config checks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pillars.components.errors import ConfigError
from pillars.tasks.tabular.network import ModelConfig
from pillars.components.model.predictor import load_predictor, save_model
from pillars.components.task import InputError
from tests.models import TABULAR, predictor_of, tabular_classifier

PIXELS = [f"p{i}" for i in range(64)]
DIGITS = [str(i) for i in range(10)]


def _digits():
    return tabular_classifier(PIXELS, DIGITS, architecture="cnn", input_shape=[1, 8, 8])


def test_save_and_load_give_identical_predictions(tmp_path):
    task, prep, model = _digits()
    prep = {**prep, "mean": [3.0] * 64, "std": [2.0] * 64}
    model = task.build_model(prep).eval()
    save_model(task, TABULAR, prep, model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors", "preprocessing.json"]
    x = np.random.default_rng(0).uniform(0, 16, size=(5, 64)).astype(np.float32)
    before = predictor_of(task, prep, model).predict({"input-0": x})
    after = load_predictor(tmp_path).predict({"input-0": x})
    np.testing.assert_allclose(before["probabilities"], after["probabilities"], rtol=1e-6)
    assert list(after["label"]) == list(before["label"])
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["format"] == "pillars.v2" and config["task"] == TABULAR and config["task_args"]["architecture"] == "cnn"


def test_weights_are_not_a_pickle(tmp_path):
    task, prep, model = _digits()
    save_model(task, TABULAR, prep, model, tmp_path)
    head = (tmp_path / "model.safetensors").read_bytes()[:16]
    assert not head.startswith(b"\x80")  # pickle protocol marker
    header_len = int.from_bytes(head[:8], "little")
    header = json.loads((tmp_path / "model.safetensors").read_bytes()[8:8 + header_len])
    assert "standardize.mean" in header


def test_images_accept_flat_or_shaped_inputs():
    predictor = predictor_of(*_digits())
    flat = np.zeros((2, 64))
    assert predictor.predict({"input-0": flat})["probabilities"].shape == (2, 10)
    assert predictor.predict({"input-0": flat.reshape(2, 1, 8, 8)})["class_index"].shape == (2,)


@pytest.mark.parametrize("x,message", [
    (np.zeros((0, 64)), "empty batch"),
    (np.zeros((2, 63)), r"expected \[N, 1, 8, 8\], got shape \[2, 63\]"),
    (np.zeros((2, 8, 8)), r"shape \[2, 8, 8\] is not a batch; expected \[N, 1, 8, 8\]"),
    (np.zeros(64), r"\(64 features\); expected \[N, 1, 8, 8\], got shape \[64\]"),
    (np.full((1, 64), np.nan), "NaN or Inf"),
    ([["a"] * 64], "has datatype BYTES; expected FP32"),
    (np.ones((1, 64), dtype=bool), "has datatype BOOL; expected FP32"),
    (3.0, r"shape \[\] is not a batch"),
])
def test_bad_inputs_are_rejected_with_the_reason(x, message):
    predictor = predictor_of(*_digits())
    with pytest.raises(InputError, match=f"input 'input-0'.*{message}|{message}"):
        predictor.predict({"input-0": x})


def test_invalid_configs_are_rejected(tmp_path):
    base = dict(task="digits", kind="classification", architecture="cnn", input_shape=[1, 8, 8],
                feature_names=PIXELS, classes=DIGITS)
    with pytest.raises(ConfigError, match="kind"):
        ModelConfig(**{**base, "kind": "ranking"})
    with pytest.raises(ConfigError, match="two classes"):
        ModelConfig(**{**base, "classes": ["only"]})
    with pytest.raises(ConfigError, match="64 values but 3"):
        ModelConfig(**{**base, "feature_names": ["a", "b", "c"]})
    task, prep, model = _digits()
    save_model(task, TABULAR, prep, model, tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**data, "format": "pillars.v99"}))
    with pytest.raises(ConfigError, match="unsupported model format"):
        load_predictor(tmp_path)
    with pytest.raises(ConfigError, match="no Pillars model"):
        load_predictor(tmp_path / "missing")
