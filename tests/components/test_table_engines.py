"""The table data step's two engines (pandas in the process, Spark in local mode) on the same generated
tables: the same split membership (by row hash), the same preprocessing statistics, profile and data hash;
and the refusals both share (a Parquet schema that changes between files, a file without the label, no Java).

One Spark session serves the module (starting one costs tens of seconds on two cores) and is stopped at
its end.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pillars.components.data import hashsplit
from pillars.components.data.shards import ROW_HASH, load_examples, shard_files
from pillars.components.data.spark import JAVA_HINT, check_java, local_session, prepare_table_spark
from pillars.components.data.tables import TableResult, prepare_table_pandas
from pillars.components.errors import ConfigError, DataError
from pillars.components.task import DataParams, TableSource


@pytest.fixture(scope="module")
def spark() -> Iterator[object]:
    with local_session("local[2]") as session:
        yield session


def _table(rows: int, seed: int, classification: bool) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({f"x{i}": rng.normal(i, 1 + i, size=rows) for i in range(4)})
    frame["count"] = rng.integers(0, 7, size=rows)  # an integer feature
    frame.loc[rng.choice(rows, rows // 20, replace=False), "x1"] = np.nan
    signal = frame["x0"] - 0.5 * frame["x2"] + rng.normal(0, 0.5, size=rows)
    frame["target"] = np.where(signal > 0, "churned", "stayed") if classification else signal.round(4)
    frame.loc[rng.choice(rows, rows // 100, replace=False), "target"] = None  # rows without a label
    return pd.concat([frame, frame.iloc[: rows // 50]], ignore_index=True)  # and duplicates


def _membership(folder: Path) -> dict[str, set[int]]:
    return {split: set(pq.read_table(shard_files(folder / split), columns=[ROW_HASH])  # type: ignore[arg-type]
                       .column(ROW_HASH).to_pylist())
            for split in hashsplit.SPLITS}


def _assert_same(a: TableResult, b: TableResult, folder_a: Path, folder_b: Path) -> None:
    assert a.split_rows == b.split_rows
    assert _membership(folder_a) == _membership(folder_b)
    assert a.info["data_hash"] == b.info["data_hash"]
    assert a.info["cleaning"] == b.info["cleaning"]
    assert a.statistics.feature_names == b.statistics.feature_names
    assert a.statistics.classes == b.statistics.classes
    np.testing.assert_allclose(a.statistics.mean, b.statistics.mean, rtol=1e-12)
    np.testing.assert_allclose(a.statistics.std, b.statistics.std, rtol=1e-12)
    if a.statistics.target_mean is not None:
        assert a.statistics.target_mean == pytest.approx(b.statistics.target_mean, rel=1e-12)
        assert a.statistics.target_std == pytest.approx(b.statistics.target_std, rel=1e-12)
    profiles = [(name, p, b.profile["features"][name]) for name, p in a.profile["features"].items()]
    if a.statistics.classes is None:
        profiles.append(("label", a.profile["label"], b.profile["label"]))
    else:
        assert a.profile["label"] == b.profile["label"]
    for name, pa_profile, pb in profiles:
        assert pa_profile["histogram"] == pb["histogram"], name
        assert pa_profile["quantiles"] == pytest.approx(pb["quantiles"], rel=1e-12), name
        assert (pa_profile["count"], pa_profile["min"], pa_profile["max"]) == (pb["count"], pb["min"], pb["max"])
        assert (pa_profile["mean"], pa_profile["std"]) == pytest.approx((pb["mean"], pb["std"]), rel=1e-12)
    assert a.profile["reference_sample"] == b.profile["reference_sample"]
    # the shards hold the same rows with the same values, whichever engine wrote them
    ex_a, ex_b = load_examples(folder_a / "train", a.table), load_examples(folder_b / "train", b.table)
    order_a = np.argsort(pq.read_table(shard_files(folder_a / "train"), columns=[ROW_HASH]).column(0).to_numpy())
    order_b = np.argsort(pq.read_table(shard_files(folder_b / "train"), columns=[ROW_HASH]).column(0).to_numpy())
    np.testing.assert_array_equal(ex_a["input-0"][order_a], ex_b["input-0"][order_b])
    np.testing.assert_array_equal(ex_a["label"][order_a], ex_b["label"][order_b])


@pytest.mark.slow
def test_pandas_and_spark_put_the_same_rows_in_each_split_with_the_same_statistics(spark, tmp_path):
    source = tmp_path / "churn.csv"
    _table(6000, 1, classification=True).to_csv(source, index=False)
    table = TableSource(str(source), "target", "classification")
    params = DataParams(seed=7, missing_policy="median")
    by_pandas = prepare_table_pandas(table, params, tmp_path / "pandas")
    by_spark = prepare_table_spark(spark, table, params, tmp_path / "spark")
    _assert_same(by_pandas, by_spark, tmp_path / "pandas", tmp_path / "spark")
    assert by_pandas.info["cleaning"]["dropped_duplicates"] > 0 and by_pandas.info["cleaning"]["dropped_missing_label"] > 0
    assert by_pandas.statistics.classes == ["churned", "stayed"]
    assert by_spark.info["engine"] == "spark" and by_spark.info["spark_app_id"].startswith("local-")
    rows = sum(by_pandas.split_rows.values())
    assert by_pandas.split_rows["test"] / rows == pytest.approx(0.15, abs=0.03)


@pytest.mark.slow
def test_the_engines_agree_on_a_regression_over_a_folder_of_parquet_files(spark, tmp_path):
    frame = _table(4000, 2, classification=False)
    folder = tmp_path / "table"
    folder.mkdir()
    frame.iloc[:2500].to_parquet(folder / "part-a.parquet", index=False)
    frame.iloc[2500:].to_parquet(folder / "part-b.parquet", index=False)
    table = TableSource(str(folder), "target", "regression")
    params = DataParams(seed=3, missing_policy="drop")
    by_pandas = prepare_table_pandas(table, params, tmp_path / "pandas")
    by_spark = prepare_table_spark(spark, table, params, tmp_path / "spark")
    _assert_same(by_pandas, by_spark, tmp_path / "pandas", tmp_path / "spark")
    assert by_pandas.info["cleaning"]["dropped_missing_features"] > 0


def test_a_row_keeps_its_split_when_the_table_is_reordered_or_grows():
    frame = hashsplit.normalised(_table(3000, 4, classification=True).dropna(subset=["target"]), "target")
    codes = hashsplit.split_codes(hashsplit.row_hashes(frame, 5), 0.15, 0.15)
    shuffled = frame.sample(frac=1.0, random_state=0)
    again = pd.Series(hashsplit.split_codes(hashsplit.row_hashes(shuffled, 5), 0.15, 0.15), index=shuffled.index)
    np.testing.assert_array_equal(again.sort_index().to_numpy(), codes)
    grown = pd.concat([frame, hashsplit.normalised(_table(500, 9, classification=True), "target")])
    np.testing.assert_array_equal(hashsplit.split_codes(hashsplit.row_hashes(grown, 5), 0.15, 0.15)[:len(frame)],
                                  codes)
    other_seed = hashsplit.split_codes(hashsplit.row_hashes(frame, 6), 0.15, 0.15)
    assert (other_seed != codes).mean() > 0.2


def test_a_parquet_schema_that_changes_between_files_is_refused_naming_the_column(tmp_path):
    folder = tmp_path / "table"
    folder.mkdir()
    pd.DataFrame({"a": [1.0, 2.0], "target": [0, 1]}).to_parquet(folder / "1.parquet")
    pd.DataFrame({"a": ["x", "y"], "target": [0, 1]}).to_parquet(folder / "2.parquet")
    with pytest.raises(DataError, match=r"schema changes between shards: column 'a' is double in .*1.parquet "
                                        r"but string in .*2.parquet"):
        prepare_table_pandas(TableSource(str(folder), "target", "classification"), DataParams(), tmp_path / "out")


def test_a_file_without_the_label_column_is_refused_naming_the_file(tmp_path):
    folder = tmp_path / "table"
    folder.mkdir()
    pd.DataFrame({"a": [1.0, 2.0], "target": [0, 1]}).to_csv(folder / "1.csv", index=False)
    pd.DataFrame({"a": [1.0, 2.0], "b": [0, 1]}).to_csv(folder / "2.csv", index=False)
    with pytest.raises(DataError, match=r"label column 'target' not in .*2.csv"):
        prepare_table_pandas(TableSource(str(folder), "target", "classification"), DataParams(), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_without_java_the_spark_engine_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(ConfigError) as caught:
        check_java()
    assert str(caught.value) == JAVA_HINT and "openjdk-17-jre-headless" in JAVA_HINT


def test_quantiles_and_medians_from_order_statistics_are_bit_identical_to_numpy():
    from pillars.components.data.spark_stats import numpy_median, numpy_quantile, quantile_ranks
    from pillars.components.data.tables import QUANTILES

    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 7, 10, 101, 600, 1001):
        x = rng.normal(size=n).astype(np.float32).astype(np.float64)
        ordered = np.sort(x)
        assert [numpy_quantile(n, q, lambda k: ordered[k]) for q in QUANTILES] == np.quantile(x, QUANTILES).tolist()
        assert numpy_median(n, lambda k: ordered[k]) == np.nanmedian(np.c_[x, x], axis=0)[0]
        assert all(0 <= lo <= hi < n and hi - lo <= 1 for lo, hi in (quantile_ranks(n, q) for q in QUANTILES))


@pytest.mark.slow
def test_order_statistics_are_numpy_s_whatever_the_sample_guessed(spark, monkeypatch):
    from pillars.components.data import spark_stats
    from pillars.components.data.tables import numpy_column_stats

    rng = np.random.default_rng(3)
    n = 6000
    columns = {
        "normal": rng.normal(size=n),
        "ties": np.where(rng.random(n) < 0.7, 0.0, rng.integers(1, 4, size=n)).astype(np.float64),
        "wide": rng.standard_cauchy(size=n) * 1e6,
        "infinite": np.where(rng.random(n) < 0.1, np.inf, rng.normal(size=n)),
        "empty": np.full(n, np.nan),
    }
    columns["infinite"][rng.random(n) < 0.05] = -np.inf
    columns["normal"][rng.random(n) < 0.1] = np.nan
    frame = spark.createDataFrame(pd.DataFrame(columns)).repartition(3)
    names = list(columns)
    passes = []
    one_pass = spark_stats._pass
    monkeypatch.setattr(spark_stats, "_pass", lambda *a: passes.append(1) or one_pass(*a))
    # a small sample and narrow margins misplace brackets (counted again over the whole column); a small
    # limit makes wide ones narrowed (and counted again)
    monkeypatch.setattr(spark_stats, "SAMPLE_ROWS", 40)
    monkeypatch.setattr(spark_stats, "Z", 0.3)
    monkeypatch.setattr(spark_stats, "COLLECT_LIMIT", 100)
    monkeypatch.setattr(spark_stats, "REFINE_BINS", 64)
    stats = spark_stats.column_stats(frame, names, n)
    assert len(passes) >= 2  # counted, then missed or narrowed, counted again
    for name, got in zip(names, stats):
        want = numpy_column_stats(columns[name])
        assert (got["count"], got["min"], got["max"], got["quantiles"], got["counts"]) == \
            (want["count"], want["min"], want["max"], want["quantiles"], want["counts"]), name
        assert (got["mean"], got["std"]) == pytest.approx((want["mean"], want["std"]), rel=1e-12, abs=1e-300)
    medians = spark_stats.medians(frame, names, n)
    with np.errstate(invalid="ignore"), pytest.warns(RuntimeWarning):  # numpy warns of the empty column
        expected = np.nanmedian(np.c_[[columns[c] for c in names]].T, axis=0)
    assert medians == np.nan_to_num(expected, nan=0.0, posinf=np.inf, neginf=-np.inf).tolist()


@pytest.mark.slow
def test_beyond_the_sample_spark_still_gives_numpy_s_quantiles(spark, tmp_path, monkeypatch):
    from pillars.components.data import spark_stats

    source = tmp_path / "churn.csv"
    _table(5000, 6, classification=True).to_csv(source, index=False)
    table = TableSource(str(source), "target", "classification")
    params = DataParams(seed=2, missing_policy="median")  # the medians, then the statistics of the filled split
    by_pandas = prepare_table_pandas(table, params, tmp_path / "pandas")
    monkeypatch.setattr(spark_stats, "SAMPLE_ROWS", 300)  # the path of a table of billions of rows, scaled down
    monkeypatch.setattr(spark_stats, "COLLECT_LIMIT", 100)
    monkeypatch.setattr(spark_stats, "REFINE_BINS", 64)
    by_spark = prepare_table_spark(spark, table, params, tmp_path / "spark")
    _assert_same(by_pandas, by_spark, tmp_path / "pandas", tmp_path / "spark")
