"""``pillars run training --param engine=spark`` as a user runs it: the table prepared on Spark (local[*]),
trained by streaming its shards, evaluated, gated and registered with its lineage; a task without a table
source refused in one line with nothing registered."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tests.pipelines.test_cli import _clean_env, _pillars


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
