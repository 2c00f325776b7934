"""The saved-model format: safetensors + JSON config, no pickle, and the input checks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pillars.components.errors import ConfigError
from pillars.components.models import InputError, ModelConfig, Predictor, build_model, load_model, save_model


def _config(**overrides):
    base = dict(task="digits", kind="classification", architecture="cnn", input_shape=[1, 8, 8],
                feature_names=[f"p{i}" for i in range(64)], classes=[str(i) for i in range(10)])
    return ModelConfig(**{**base, **overrides})


def test_save_and_load_give_identical_predictions(tmp_path):
    model = build_model(_config())
    model.standardize.fit(np.full(64, 3.0), np.full(64, 2.0))
    save_model(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    x = np.random.default_rng(0).uniform(0, 16, size=(5, 64)).astype(np.float32)
    before = Predictor(model.eval()).predict(x)
    after = Predictor.load(tmp_path).predict(x)
    np.testing.assert_allclose(before["probabilities"], after["probabilities"], rtol=1e-6)
    assert list(after["label"]) == list(before["label"])


def test_weights_are_not_a_pickle(tmp_path):
    save_model(build_model(_config()), tmp_path)
    head = (tmp_path / "model.safetensors").read_bytes()[:16]
    assert not head.startswith(b"\x80")  # pickle protocol marker
    header_len = int.from_bytes(head[:8], "little")
    header = json.loads((tmp_path / "model.safetensors").read_bytes()[8:8 + header_len])
    assert "standardize.mean" in header


def test_images_accept_flat_or_shaped_inputs(tmp_path):
    predictor = Predictor(build_model(_config()).eval())
    flat = np.zeros((2, 64))
    assert predictor.predict(flat)["probabilities"].shape == (2, 10)
    assert predictor.predict(flat.reshape(2, 1, 8, 8))["class_index"].shape == (2,)


@pytest.mark.parametrize("x,message", [
    (np.zeros((0, 64)), "empty batch"),
    (np.zeros((2, 63)), "64 features"),
    (np.zeros((2, 8, 8)), "64 features"),
    (np.zeros(64), "64 features"),
    (np.full((1, 64), np.nan), "NaN or Inf"),
    ([["a"] * 64], "must be numbers"),
    (3.0, "scalar"),
])
def test_bad_inputs_are_rejected_with_the_reason(x, message):
    predictor = Predictor(build_model(_config()).eval())
    with pytest.raises(InputError, match=message):
        predictor.predict(x)


def test_invalid_configs_are_rejected(tmp_path):
    with pytest.raises(ConfigError, match="kind"):
        _config(kind="ranking")
    with pytest.raises(ConfigError, match="two classes"):
        _config(classes=["only"])
    with pytest.raises(ConfigError, match="64 values but 3"):
        _config(feature_names=["a", "b", "c"])
    save_model(build_model(_config()), tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**data, "format": "pillars.v99"}))
    with pytest.raises(ConfigError, match="unsupported model format"):
        load_model(tmp_path)
    with pytest.raises(ConfigError, match="no Pillars model"):
        load_model(tmp_path / "missing")
