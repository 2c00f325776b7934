"""``pillars run training --param engine=spark`` as a user runs it: the table prepared on Spark (local[*]),
trained by streaming its shards, evaluated, gated and registered with its lineage; a task without a table
source refused in one line with nothing registered."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.pipelines.test_cli import _clean_env, _pillars


@pytest.mark.slow
def test_a_table_prepared_on_spark_trains_end_to_end_and_the_version_shows_its_lineage(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({f"x{i}": rng.normal(size=3000) for i in range(4)})
    frame["y"] = np.where(frame["x0"] - frame["x1"] > 0, "yes", "no")
    frame.to_csv(tmp_path / "table.csv", index=False)
    env = _clean_env(OMP_NUM_THREADS="1")
    run = _pillars("run", "training", "--task", "tabular_classification", "--param", "source=table.csv",
                   "--param", "label_column=y", "--param", "engine=spark", "--param", "epochs=3",
                   tmp_path=tmp_path, env=env, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "gate     approved" in run.stdout + run.stderr, run.stdout
    show = _pillars("models", "show", "tabular_classification", tmp_path=tmp_path, env=env)
    assert show.returncode == 0, show.stderr
    line = show.stdout.strip().splitlines()[-1]
    assert " engine=spark rows=3000 spark_app=local-" in line, line


def test_engine_spark_for_a_task_without_a_table_source_fails_in_one_line_and_registers_nothing(tmp_path):
    env = _clean_env(OMP_NUM_THREADS="1")
    run = _pillars("run", "training", "--task", "breast_cancer", "--param", "engine=spark", tmp_path=tmp_path,
                   env=env, timeout=600)
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("pillars: error: step prepare-data failed: engine=spark needs a task that reads a "
                           "table"), run.stderr
    listed = _pillars("models", "list", tmp_path=tmp_path, env=env)
    assert "breast_cancer" not in listed.stdout


def test_models_show_ends_a_version_line_with_its_data_lineage_and_older_versions_stay_as_they_were():
    from pillars.components.records import VersionRecord
    from pillars.pipelines.cli.models import version_line

    tags = {"gate_approved": "true", "data_hash": "fa7ab498133f1af9", "data_engine": "spark",
            "data_rows": '{"test": 450, "train": 2100, "val": 450}', "spark_app_id": "local-17"}
    line = version_line("churn", VersionRecord("3", ["champion"], "2026-12-07T10:00:00+00:00", "r", tags,
                                               {"accuracy": 0.9}))
    assert line.endswith("accuracy=0.9000  data=fa7ab498133f1af9 engine=spark rows=3000 spark_app=local-17")
    old = version_line("churn", VersionRecord("1", [], "2026-11-01T10:00:00+00:00", "r", {"gate_approved": "true"},
                                              {"accuracy": 0.8}))
    assert old.endswith("gate=true  accuracy=0.8000")
