"""Model names are checked once, against MLflow's own rules plus a filesystem-safe rule: `../../x`
never becomes a checkpoint path."""

from __future__ import annotations

import pytest

from pillars.components.errors import ConfigError
from pillars.components.training.fit import TrainParams
from pillars.components.registry.references import ModelRef, check_model_name
from pillars.components.training.train import checkpoint_dir_for, run_training

METADATA = {"data_hash": "h", "task": "breast_cancer"}


@pytest.mark.parametrize("name", ["../../x", "..", "a/b", "a:b", "a\\b", "a@b", " a", "", "x" * 300, "a\x00b"])
def test_bad_model_names_are_one_line_errors_naming_them(name):
    with pytest.raises(ConfigError, match="invalid model name") as error:
        check_model_name(name)
    assert len(str(error.value).splitlines()) == 1


@pytest.mark.parametrize("name", ["breast_cancer", "Churn", "fraud-v2", "my model.v1"])
def test_good_model_names_pass(name):
    assert check_model_name(name) == name


def test_a_model_name_cannot_leave_the_checkpoint_root(tmp_path):
    with pytest.raises(ConfigError, match=r"invalid model name '\.\./\.\./x'"):
        checkpoint_dir_for(tmp_path / "ckpt", "../../x", METADATA, TrainParams())
    folder = checkpoint_dir_for(tmp_path / "ckpt", "iris", METADATA, TrainParams())
    assert folder.parent == (tmp_path / "ckpt" / "iris").resolve()


def test_the_train_step_refuses_a_bad_name_before_writing_anything(tmp_path):
    with pytest.raises(ConfigError, match=r"invalid model name '\.\./\.\./x'"):
        run_training("train", "val", "meta.json", TrainParams(), str(tmp_path / "model"), "../../x",
                     checkpoint_root=str(tmp_path / "ckpt"))
    assert list(tmp_path.iterdir()) == []


def test_model_references_parse_once_into_a_typed_value():
    assert ModelRef.parse("models:/iris@champion") == ModelRef("iris", alias="champion")
    assert ModelRef.parse("models:/iris/3") == ModelRef("iris", version="3")
    assert ModelRef.parse("models:/iris@champion").pinned("4").uri == "models:/iris/4"
    for bad in ("models:/iris", "models:/iris/x", "models:/../../x@champion", "models:/iris@"):
        with pytest.raises(ConfigError, match="bad model reference"):
            ModelRef.parse(bad)
