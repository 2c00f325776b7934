"""Data preparation through the task API: built-in data sets, cleaning, splits, normalisation, the
metadata and profile contract, and the bad-data errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pillars.components.errors import ConfigError, DataError
from pillars.components.model.predictor import drift_matrix
from pillars.components.data.prepare import PrepareParams, prepare, run_prepare
from pillars.components.data.splits import PreparedMetadata, load_metadata, load_split, save_metadata
from pillars.components.data.profile import build_profile
from pillars.components.task import TaskNotFound


def _xy(split):
    """A tabular split as ``(x [N, F], y)``."""
    x = split["input-0"]
    return x.reshape(len(x), -1), split["label"]


def _xys(data):
    return {name: _xy(split) for name, split in data.splits.items()}


@pytest.mark.parametrize("task,n_features,shape,kind", [
    ("breast_cancer", 30, [30], "classification"),
    ("digits", 64, [1, 8, 8], "classification"),
    ("diabetes", 10, [10], "regression"),
])
def test_builtin_tasks_split_into_disjoint_train_val_test(task, n_features, shape, kind):
    data = prepare(PrepareParams(task=task))
    meta = data.metadata
    assert meta["kind"] == kind and meta["info"]["input_shape"] == shape
    assert len(meta["info"]["feature_names"]) == n_features
    assert meta["task"] == f"pillars.tasks.tabular:{task}" and meta["task_name"] == task
    sizes = {name: len(y) for name, (_, y) in _xys(data).items()}
    total = sum(sizes.values())
    assert sizes["test"] == pytest.approx(0.15 * total, abs=2) and sizes["val"] == pytest.approx(0.15 * total, abs=2)
    rows = {name: {x.tobytes() for x in xs} for name, (xs, _) in _xys(data).items()}
    assert not rows["train"] & rows["test"] and not rows["train"] & rows["val"]


def test_the_source_a_run_records_for_a_built_in_data_set_loads_it_again():
    """The optimize step reloads a version's test split from its run's logged ``source``: for a built-in
    task that is the data set's origin (``sklearn:digits``), not a file."""
    data = prepare(PrepareParams(task="digits"))
    assert data.metadata["source"] == "sklearn:digits"
    again = prepare(PrepareParams(task="digits", source=data.metadata["source"]))
    assert np.array_equal(again.splits["test"]["input-0"], data.splits["test"]["input-0"])


def test_split_is_stratified_and_seeded():
    a = prepare(PrepareParams(task="breast_cancer", seed=1))
    b = prepare(PrepareParams(task="breast_cancer", seed=1))
    c = prepare(PrepareParams(task="breast_cancer", seed=2))
    assert np.array_equal(a.splits["test"]["input-0"], b.splits["test"]["input-0"])
    assert not np.array_equal(a.splits["test"]["input-0"], c.splits["test"]["input-0"])
    shares = [np.bincount(y).astype(float)[1] / len(y) for _, y in _xys(a).values()]
    assert max(shares) - min(shares) < 0.03
    assert a.metadata["info"]["cleaning"]["stratified"] is True


def test_normalisation_is_fitted_on_the_train_split_only():
    data = prepare(PrepareParams(task="breast_cancer"))
    x_train = _xy(data.splits["train"])[0]
    all_x = np.concatenate([x for x, _ in _xys(data).values()])
    mean = np.asarray(data.metadata["prep"]["mean"])
    np.testing.assert_allclose(mean, x_train.mean(axis=0), rtol=1e-5)
    assert not np.allclose(mean, all_x.mean(axis=0), rtol=1e-6)


def _write(tmp_path, frame, name="data.csv"):
    path = tmp_path / name
    if name.endswith(".csv"):
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path)
    return str(path)


def _table(n=60, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    return pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": (x[:, 0] > 0).astype(int)})


@pytest.mark.parametrize("name", ["data.csv", "data.parquet"])
def test_own_table_from_csv_or_parquet(tmp_path, name):
    source = _write(tmp_path, _table(), name)
    data = prepare(PrepareParams(task="tabular_classification", source=source, label_column="y"))
    assert data.metadata["info"]["feature_names"] == ["a", "b", "c"] and data.metadata["prep"]["classes"] == ["0", "1"]


def test_duplicates_dropped_and_missing_values_imputed_with_train_median(tmp_path):
    frame = _table(80)
    frame = pd.concat([frame, frame.iloc[:5]])
    frame.loc[frame.index[10:14], "b"] = np.nan
    data = prepare(PrepareParams(task="tabular_classification", source=_write(tmp_path, frame), label_column="y"))
    report = data.metadata["info"]["cleaning"]
    assert report["dropped_duplicates"] == 5 and report["missing_values"] == {"b": 4}
    assert all(np.isfinite(x).all() for x, _ in _xys(data).values())


def test_missing_policy_drop_removes_rows(tmp_path):
    frame = _table(80)
    frame.loc[frame.index[:6], "a"] = np.nan
    data = prepare(PrepareParams(task="tabular_classification", source=_write(tmp_path, frame), label_column="y",
                                 missing_policy="drop"))
    assert data.metadata["info"]["cleaning"]["dropped_missing_features"] == 6
    assert sum(len(y) for _, y in _xys(data).values()) == 74


def test_balance_oversamples_the_minority_class_in_train_only(tmp_path):
    frame = _table(200)
    frame["y"] = (frame["a"] > 0.8).astype(int)  # about 20 % positives
    source = _write(tmp_path, frame)
    data = prepare(PrepareParams(task="tabular_classification", source=source, label_column="y", balance=True))
    counts = np.bincount(data.splits["train"]["label"])
    assert counts[0] == counts[1]
    assert np.bincount(data.splits["test"]["label"])[1] < np.bincount(data.splits["test"]["label"])[0]


def test_run_prepare_writes_npz_splits_and_metadata(tmp_path):
    paths = [str(tmp_path / n) for n in ("train", "val", "test", "meta.json")]
    data_hash = run_prepare(PrepareParams(task="diabetes"), *paths)
    x, y = _xy(load_split(paths[0]))
    meta = load_metadata(paths[3])
    assert x.dtype == np.float32 and x.shape[1] == 10 and len(x) == len(y)
    assert meta["data_hash"] == data_hash and meta["prep"]["target_std"] > 0
    assert set(meta["profile"]["features"]) == set(meta["info"]["feature_names"])


def test_the_metadata_names_the_task_and_carries_preprocessing_and_the_split_sizes():
    data = prepare(PrepareParams(task="breast_cancer", task_args=json.dumps({"hidden_sizes": [32]}), seed=3))
    meta = json.loads(data.metadata.to_json())  # JSON as written
    assert {"task", "task_name", "task_args", "kind", "info", "prep", "signature", "data_hash", "split_rows",
            "seed", "source", "profile"} <= set(meta)
    assert meta["task"] == "pillars.tasks.tabular:breast_cancer" and meta["task_args"] == {"hidden_sizes": [32]}
    assert data.task.hidden_sizes == [32] and meta["seed"] == 3 and meta["source"] == "sklearn:breast_cancer"
    assert meta["split_rows"] == {name: len(split["label"]) for name, split in data.splits.items()}
    assert meta["signature"]["inputs"][0]["name"] == "input-0" and len(meta["prep"]["mean"]) == 30


def test_the_metadata_is_a_typed_value_read_back_from_its_json_and_still_read_as_a_mapping(tmp_path):
    data = prepare(PrepareParams(task="breast_cancer"))
    path = tmp_path / "meta.json"
    save_metadata(path, data.metadata)
    back = load_metadata(path)
    assert isinstance(back, PreparedMetadata) and back == data.metadata
    assert back.prep == back["prep"] and back.split_rows["train"] == len(data.splits["train"]["label"])
    assert back.table is None and "table" not in back and back.get("table") is None  # written only when set
    assert json.loads(path.read_text()) == dict(back)


def test_what_is_not_prepared_data_metadata_is_refused_by_name_and_not_written(tmp_path):
    data = prepare(PrepareParams(task="breast_cancer"))
    path = tmp_path / "meta.json"
    with pytest.raises(DataError, match="unknown keys in the prepared-data metadata: bogus"):
        save_metadata(path, {**data.metadata, "bogus": 1})
    assert not path.exists()
    with pytest.raises(DataError, match=r"missing \['task_name'"):
        PreparedMetadata.from_json('{"task": "x"}')
    with pytest.raises(DataError, match="not JSON"):
        PreparedMetadata.from_json("{")


def test_the_profile_describes_the_train_splits_drift_features():
    data = prepare(PrepareParams(task="breast_cancer"))
    profile, prep = data.metadata["profile"], data.metadata["prep"]
    train = data.splits["train"]
    names, matrix = drift_matrix(data.task, {"input-0": train["input-0"]}, prep)
    assert [s["name"] for s in profile["schema"]] == names == prep["feature_names"]
    assert profile["rows"] == len(matrix) and profile["kind"] == "classification"
    assert np.asarray(profile["reference_sample"]).shape == (200, len(names))
    assert profile["features"][names[0]]["mean"] == pytest.approx(matrix[:, 0].mean())
    assert profile["label"] == data.task.label_profile(train, prep)
    # For a table the drift features are its raw features: the profile Pillars always wrote.
    x, y = _xy(train)
    assert profile == {**build_profile(x, y, prep["feature_names"], "classification", prep["classes"]),
                       "kind": "classification"}


def test_strings_are_saved_as_numpy_unicode_and_read_without_pickle(tmp_path):
    from pillars.components.data.splits import save_split

    save_split(tmp_path / "s.npz", {"text": np.asarray(["ok", "naïve"], dtype=object), "y": np.arange(2)})
    split = load_split(tmp_path / "s.npz")
    assert split["text"].dtype.kind == "U" and split["text"].tolist() == ["ok", "naïve"]


# --- bad data: each fails with a message naming the problem ------------------------------------

def test_empty_file_is_rejected(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(DataError, match="empty"):
        prepare(PrepareParams(task="tabular_classification", source=str(path), label_column="y"))


def test_header_only_file_is_rejected(tmp_path):
    path = tmp_path / "header.csv"
    path.write_text("a,b,y\n")
    with pytest.raises(DataError, match="no rows"):
        prepare(PrepareParams(task="tabular_classification", source=str(path), label_column="y"))


def test_missing_label_column_is_named(tmp_path):
    with pytest.raises(DataError, match="label column 'target' not in .*columns are: a, b, c, y"):
        prepare(PrepareParams(task="tabular_classification", source=_write(tmp_path, _table()),
                              label_column="target"))


def test_non_numeric_features_are_named(tmp_path):
    frame = _table()
    frame["b"] = frame["b"].astype(object)
    frame.loc[3, "b"] = "n/a?"
    with pytest.raises(DataError, match="non-numeric values in feature column\\(s\\) b"):
        prepare(PrepareParams(task="tabular_classification", source=_write(tmp_path, frame), label_column="y"))


def test_one_class_only_is_rejected(tmp_path):
    frame = _table()
    frame["y"] = 1
    with pytest.raises(DataError, match="only one class"):
        prepare(PrepareParams(task="tabular_classification", source=_write(tmp_path, frame), label_column="y"))


def test_non_numeric_regression_target_is_rejected(tmp_path):
    frame = _table()
    frame["y"] = "high"
    with pytest.raises(DataError, match="must be numeric for regression"):
        prepare(PrepareParams(task="tabular_regression", source=_write(tmp_path, frame), label_column="y"))


def test_missing_file_and_wrong_type_are_named(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        prepare(PrepareParams(task="tabular_classification", source=str(tmp_path / "nope.csv"), label_column="y"))
    (tmp_path / "data.txt").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="unsupported file type '.txt'"):
        prepare(PrepareParams(task="tabular_classification", source=str(tmp_path / "data.txt"), label_column="y"))


def test_own_data_task_without_source_says_what_to_pass():
    with pytest.raises(DataError, match="source=PATH"):
        prepare(PrepareParams(task="tabular_classification"))


def test_folder_source_takes_the_newest_table(tmp_path):
    import os

    old, new = _table(40, seed=1), _table(70, seed=2)
    _write(tmp_path, old, "old.csv")
    path = _write(tmp_path, new, "new.csv")
    os.utime(path, (2e9, 2e9))
    data = prepare(PrepareParams(task="tabular_classification", source=str(tmp_path), label_column="y"))
    assert data.metadata["info"]["cleaning"]["rows_in"] == 70


def test_invalid_parameters_are_rejected():
    with pytest.raises(TaskNotFound, match="unknown task 'nope'; installed tasks: .*breast_cancer"):
        prepare(PrepareParams(task="nope"))
    with pytest.raises(TaskNotFound, match="install 'no_such_package'"):
        prepare(PrepareParams(task="no_such_package.tasks:churn"))
    with pytest.raises(ConfigError, match="does not take these arguments"):
        prepare(PrepareParams(task="breast_cancer", task_args='{"no_such_field": 1}'))
    with pytest.raises(ConfigError, match="task_args must be a JSON object"):
        PrepareParams(task_args="[1, 2]")
    with pytest.raises(ConfigError, match="missing_policy"):
        PrepareParams(missing_policy="guess")
    with pytest.raises(ConfigError, match="test_fraction"):
        PrepareParams(test_fraction=0.7)
