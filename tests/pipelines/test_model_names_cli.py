"""The CLI checks model names once, before anything runs: one line naming the bad name."""

from __future__ import annotations

import pytest

from pillars.pipelines.cli import main


@pytest.mark.parametrize("args", [
    ["run", "training", "--param", "model_name=../../x"],
    ["models", "show", "../../x"],
    ["up", "--model", "../../x"],
    ["deploy", "../../x@champion", "-n", "ml", "--dry-run"],
])
def test_a_path_like_model_name_is_refused_in_one_line(args, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PILLARS_HOME", str(tmp_path / ".pillars"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pillars: error:") and "invalid model name '../../x'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / ".pillars").exists(), "nothing was created before the name was checked"
