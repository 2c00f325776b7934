"""The Spark engine of the table data step (``engine=spark``): the steps of
:mod:`pillars.components.data.tables` on Apache Spark, so the table never has to fit one process.

Locally Spark runs in ``local[*]`` mode inside the step (pyspark and a Java 17 runtime); on a cluster the
step submits this same code as a SparkApplication to the Kubeflow Spark Operator
(:mod:`pillars.components.data.spark_application`). The row hash is the same Python function as the pandas
engine's, run by Spark as a vectorised (Arrow) UDF; everything else is Spark SQL. Statistics: exact
percentiles up to :data:`EXACT_QUANTILE_ROWS` train rows, ``percentile_approx`` (accuracy
:data:`APPROX_ACCURACY`) beyond, where the engines may then differ by the approximation's rank error.

An ``s3://`` source is read as ``s3a://`` (the image needs ``hadoop-aws``; credentials from the usual
``AWS_*`` variables and ``AWS_ENDPOINT_URL``/``MLFLOW_S3_ENDPOINT_URL``).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import pandas as pd

from pillars.components.data import hashsplit
from pillars.components.data.profile import HISTOGRAM_BINS, REFERENCE_ROWS
from pillars.components.data.shards import LABEL, PARQUET_BLOCK_BYTES, ROW_HASH, feature_column
from pillars.components.data.tables import (
    QUANTILES,
    TableResult,
    assemble,
    check_classes,
    check_table_files,
    class_order,
    table_files,
)
from pillars.components.errors import ConfigError, DataError
from pillars.components.task import DataParams, TableSource

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

EXACT_QUANTILE_ROWS = 5_000_000
APPROX_ACCURACY = 100_000
JAVA_HINT = ("Spark needs a Java 17 runtime and none was found (no `java` on PATH, no JAVA_HOME): install it "
             "(apt-get install openjdk-17-jre-headless) or use engine=pandas")
_SPLIT = "_split"


def check_java() -> str:
    """The ``java`` Spark will run, or a ConfigError saying how to install one."""
    home = os.environ.get("JAVA_HOME")
    if home and Path(home, "bin", "java").is_file():
        return str(Path(home, "bin", "java"))
    found = shutil.which("java")
    if not found:
        raise ConfigError(JAVA_HINT)
    return found


@contextmanager
def local_session(master: str = "local[*]", memory: str = "1g",
                  conf: Mapping[str, str] | None = None) -> Iterator[SparkSession]:
    """A Spark session for the step (stopped when the block ends); on the cluster the operator's driver
    already has one and ``getOrCreate`` returns it.

    Raises:
        ConfigError: no Java runtime (one line saying how to install it), or pyspark missing.
    """
    check_java()
    try:
        from pyspark.sql import SparkSession
    except ImportError as e:
        raise ConfigError("engine=spark needs pyspark: pip install 'pyspark==3.5.*'") from e
    # Spark's Python workers run this interpreter (so they import the same packages); Spark reads it only
    # from the environment when the session starts.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = (SparkSession.builder.master(master).appName("pillars-prepare-data")
               .config("spark.ui.enabled", "false").config("spark.driver.memory", memory)
               .config("spark.sql.shuffle.partitions", "8").config("spark.sql.execution.arrow.pyspark.enabled", "true"))
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    try:
        yield session
    finally:
        session.stop()


def _col(name: str) -> Column:
    from pyspark.sql import functions as F

    return F.col(f"`{name}`")


def read_source(spark: SparkSession, source: TableSource) -> tuple[DataFrame, list[str]]:
    """The raw table as a Spark DataFrame and its columns (local files checked first from their headers)."""
    if source.source.startswith(("s3://", "s3a://")):
        paths = ["s3a://" + source.source.split("://", 1)[1]]
        csv = source.source.endswith(".csv")
        columns = None
    else:
        paths = table_files(source.source)
        columns = check_table_files(paths, source.label_column)
        csv = paths[0].endswith(".csv")
    try:
        reader = spark.read
        frame = (reader.option("header", True).option("inferSchema", True).csv(paths) if csv
                 else reader.parquet(*paths))
    except Exception as e:  # Spark's AnalysisException and Py4J errors: one line naming the source
        raise DataError(f"cannot read {source.source}: {str(e).splitlines()[0]}") from e
    if columns is None:
        columns = frame.columns
        if source.label_column not in columns:
            raise DataError(f"label column {source.label_column!r} not in {source.source}; columns are: "
                            f"{', '.join(columns)}")
    return frame, list(columns)


def prepare_table_spark(spark: SparkSession, source: TableSource, params: DataParams,
                        out_dir: str | Path) -> TableResult:
    """Prepare a table on Spark and write ``out_dir/{train,val,test}/part-*.parquet``.

    Raises:
        DataError: the table is missing, unreadable, lacks the label, has non-numeric features or too few rows.
        ConfigError: ``balance`` (not supported on a table source).
    """
    from pyspark import StorageLevel
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    if params.balance:
        raise ConfigError("balance is not supported for a table source (engine pandas or spark); leave it false")
    raw, columns = read_source(spark, source)
    label = source.label_column
    names = [c for c in columns if c != label]
    bad = [n for n in names if not isinstance(raw.schema[n].dataType, (T.NumericType, T.BooleanType))]
    if bad:
        raise DataError(f"non-numeric values in feature column(s) {', '.join(bad)} of {source.source}; "
                        "encode them as numbers or drop them")
    label_numeric = isinstance(raw.schema[label].dataType, T.NumericType)
    rows_in = raw.count()
    missing = _col(label).isNull() | (F.isnan(_col(label)) if label_numeric else F.lit(False))
    labelled = raw.where(~missing)
    rows_labelled = labelled.count()
    deduped = labelled.dropDuplicates()
    rows_unique = deduped.count()
    report: dict[str, Any] = {"rows_in": rows_in, "dropped_missing_label": rows_in - rows_labelled,
                              "dropped_duplicates": rows_labelled - rows_unique}
    # The hashed form: features (and a numeric label) as double with NaN as null, as the pandas engine's.
    as_double = {n: F.when(F.isnan(_col(n).cast("double")), None).otherwise(_col(n).cast("double"))
                 for n in names}
    hashed_columns = [source.key_column] if source.key_column else columns
    hash_inputs = [as_double[c] if c in as_double else (_col(c).cast("double") if label_numeric else _col(c))
                   for c in hashed_columns]
    frame = deduped.select(*[as_double[n].alias(feature_column(i)) for i, n in enumerate(names)],
                           _col(label).alias(LABEL),
                           _hash_udf(hashed_columns, label, params.seed)(*hash_inputs).alias(ROW_HASH))
    features = [feature_column(i) for i in range(len(names))]
    if params.missing_policy == "drop":
        complete = frame.where(F.greatest(*[F.col(f).isNull().cast("int") for f in features]) == 0) \
            if features else frame
        report["dropped_missing_features"] = rows_unique - complete.count()
        frame = complete
    u = F.shiftrightunsigned(F.col(ROW_HASH), 11).cast("double") * F.lit(hashsplit.UNIT)
    frame = frame.withColumn(_SPLIT, F.when(u < params.test_fraction, 2)
                             .when(u < params.test_fraction + params.val_fraction, 1).otherwise(0))
    classes = None
    if source.kind == "classification":
        values, classes = class_order([r[0] for r in frame.select(LABEL).distinct().collect()])
        check_classes(values, source)
        mapping = F.create_map(*[x for i, v in enumerate(values) for x in (F.lit(v), F.lit(i))])
        frame = frame.withColumn(LABEL, mapping[F.col(LABEL)].cast("long"))
    else:
        if not label_numeric:
            raise DataError(f"label column {label!r} of {source.source} must be numeric for regression")
        frame = frame.withColumn(LABEL, F.col(LABEL).cast("float"))
    frame = frame.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        summary = _summarise_and_write(frame, features, source, params, len(classes or []), Path(out_dir))
    finally:
        frame.unpersist()
    return assemble(source, params, columns, classes, summary.feature_stats, summary.label_stats, summary.fill,
                    summary.split_rows, summary.split_xor, summary.reference, report, "spark",
                    {"spark_app_id": spark.sparkContext.applicationId})


class _Summary(NamedTuple):
    split_rows: dict[str, int]
    split_xor: dict[str, int]
    fill: list[float]
    feature_stats: list[dict[str, Any]]
    label_stats: dict[str, Any]
    reference: list[list[float]]


def _summarise_and_write(frame: Any, features: list[str], source: TableSource, params: DataParams, n_classes: int,
                         out: Path) -> _Summary:
    """Rows and hash digest per split, the train split's fill values and statistics, the drift reference, and
    each split written as Parquet shards under ``out``."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    counts = {r[_SPLIT]: (r["n"], r["x"]) for r in
              frame.groupBy(_SPLIT).agg(F.count("*").alias("n"), F.expr(f"bit_xor({ROW_HASH})").alias("x"))
              .collect()}
    split_rows = {name: int(counts.get(i, (0, 0))[0]) for i, name in enumerate(hashsplit.SPLITS)}
    split_xor = {name: int(counts.get(i, (0, 0))[1] or 0) for i, name in enumerate(hashsplit.SPLITS)}
    train = frame.where(F.col(_SPLIT) == 0)
    fill = _fill_values(train, features, params.missing_policy, split_rows["train"])
    imputed = frame.select(*[F.coalesce(F.col(f).cast("float"), F.lit(v).cast("float")).alias(f)
                             for f, v in zip(features, fill)], LABEL, ROW_HASH, _SPLIT)
    imputed = imputed.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        train = imputed.where(F.col(_SPLIT) == 0)
        exact = split_rows["train"] <= EXACT_QUANTILE_ROWS
        feature_stats = _column_stats(train, features, exact)
        if source.kind == "classification":
            by_class = dict(train.groupBy(LABEL).count().collect())
            label_stats: dict[str, Any] = {"class_counts": [int(by_class.get(i, 0))
                                                            for i in range(n_classes)]}
        else:
            label_stats = _column_stats(train, [LABEL], exact)[0]
        reference = [[round(float(v), 6) for v in row] for row in
                     train.orderBy(ROW_HASH).limit(REFERENCE_ROWS).select(*features).collect()]
        for code, name in enumerate(hashsplit.SPLITS):
            (imputed.where(F.col(_SPLIT) == code).select(*features, LABEL, ROW_HASH)
             .write.mode("overwrite").option("parquet.block.size", PARQUET_BLOCK_BYTES)
             .parquet(str(out / name)))
    finally:
        imputed.unpersist()
    return _Summary(split_rows, split_xor, fill, feature_stats, label_stats, reference)


def _hash_udf(columns: list[str], label: str, seed: int) -> Any:
    """The row hash as a vectorised Spark UDF: the pandas engine's own functions over Arrow batches."""
    from pyspark.sql.functions import pandas_udf

    @pandas_udf("long")  # type: ignore[call-overload]
    def row_hash(*values: pd.Series) -> pd.Series:
        frame = pd.DataFrame({name: value.reset_index(drop=True) for name, value in zip(columns, values)})
        return pd.Series(hashsplit.as_signed(hashsplit.row_hashes(hashsplit.normalised(frame, label), seed)))

    return row_hash


def _fill_values(train: DataFrame, features: list[str], policy: str, rows: int) -> list[float]:
    from pyspark.sql import functions as F

    if policy in ("zero", "drop") or not features:
        return [0.0] * len(features)
    if policy == "median":
        extra = "" if rows <= EXACT_QUANTILE_ROWS else f", {APPROX_ACCURACY}"
        function = "percentile" if rows <= EXACT_QUANTILE_ROWS else "percentile_approx"
        exprs = [F.expr(f"{function}(CAST(CAST({f} AS FLOAT) AS DOUBLE), 0.5{extra})") for f in features]
    else:
        exprs = [F.avg(F.col(f).cast("float").cast("double")) for f in features]
    row = train.agg(*[e.alias(f) for e, f in zip(exprs, features)]).collect()[0]
    return [float(row[f]) if row[f] is not None else 0.0 for f in features]


def _column_stats(frame: DataFrame, columns: list[str], exact: bool) -> list[dict[str, Any]]:
    """Per column (float values as double): count, mean, population std, min, max, quantiles, histogram."""
    from pyspark.sql import functions as F

    quantiles = ", ".join(str(q) for q in QUANTILES)
    aggregates = []
    for c in columns:
        x = f"CAST({c} AS DOUBLE)"
        q = (f"percentile({x}, array({quantiles}))" if exact
             else f"percentile_approx({x}, array({quantiles}), {APPROX_ACCURACY})")
        aggregates += [F.count(F.col(c)).alias(f"{c}__n"), F.expr(f"avg({x})").alias(f"{c}__mean"),
                       F.expr(f"stddev_pop({x})").alias(f"{c}__std"), F.expr(f"min({x})").alias(f"{c}__min"),
                       F.expr(f"max({x})").alias(f"{c}__max"), F.expr(q).alias(f"{c}__q")]
    row = frame.agg(*aggregates).collect()[0]
    stats = []
    for c in columns:
        lo, hi = float(row[f"{c}__min"] or 0.0), float(row[f"{c}__max"] or 0.0)
        stats.append({"count": int(row[f"{c}__n"]), "mean": float(row[f"{c}__mean"] or 0.0),
                      "std": float(row[f"{c}__std"] or 0.0), "min": lo, "max": hi,
                      "quantiles": [float(v) for v in (row[f"{c}__q"] or [0.0] * len(QUANTILES))]})
    bins = []
    for c, s in zip(columns, stats):
        scale = HISTOGRAM_BINS / (s["max"] - s["min"] if s["max"] > s["min"] else 1.0)
        b = F.least(F.greatest(F.floor((F.col(c).cast("double") - F.lit(s["min"])) * F.lit(scale)), F.lit(0)),
                    F.lit(HISTOGRAM_BINS - 1))
        bins += [F.sum(F.when(b == k, 1).otherwise(0)).alias(f"{c}__b{k}") for k in range(HISTOGRAM_BINS)]
    row = frame.agg(*bins).collect()[0]
    for c, s in zip(columns, stats):
        s["counts"] = [int(row[f"{c}__b{k}"] or 0) for k in range(HISTOGRAM_BINS)]
    return stats
