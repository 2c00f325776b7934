"""The Spark engine of the table data step (``engine=spark``): the steps of
:mod:`pillars.components.data.tables` on Apache Spark, so the table never has to fit one process.

With ``spark_launcher=local`` Spark runs in ``local[*]`` mode inside the step (pyspark and a Java 17 runtime);
with ``spark_launcher=operator`` the step submits this same code as a SparkApplication to the Kubeflow Spark
Operator (:mod:`pillars.components.data.spark_application`), whose driver is
:mod:`pillars.components.data.spark_driver`. The row hash is the same Python function as the pandas
engine's, run by Spark as a vectorised (Arrow) UDF; the cleaning, split and counts are Spark SQL; the
statistics are :mod:`pillars.components.data.spark_stats` (a few Arrow passes, numpy per record batch), the
pandas engine's to the bit for quantiles and histograms at any size.

An ``s3://`` source is read as ``s3a://`` (the image needs ``hadoop-aws``; credentials from the usual
``AWS_*`` variables and ``AWS_ENDPOINT_URL``/``MLFLOW_S3_ENDPOINT_URL``).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import pandas as pd

from pillars.components.data import hashsplit, spark_stats
from pillars.components.data.profile import REFERENCE_ROWS
from pillars.components.data.shards import LABEL, PARQUET_BLOCK_BYTES, ROW_HASH, feature_column
from pillars.components.data.tables import (
    TableResult,
    assemble,
    check_classes,
    check_table_files,
    class_order,
    table_files,
)
from pillars.components.errors import ConfigError, DataError, PillarsError
from pillars.components.task import DataParams, TableSource

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

CELLS_PER_PARTITION = 4_000_000
"""Values (rows x columns) per shuffle partition: about 32 MB of doubles, so a task of the dedup shuffle and of
the cache holds a bounded slice of the table whatever its size (8 fixed partitions ran a 1 GB table out of a
2 GB heap)."""
JAVA_HINT = ("Spark needs a Java 17 runtime and none was found (no `java` on PATH, no JAVA_HOME): install it "
             "(apt-get install openjdk-17-jre-headless) or use engine=pandas")
_SPLIT = "_split"
_COMPLETE = "_complete"


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
def local_session(master: str | None = "local[*]", memory: str = "1g",
                  conf: Mapping[str, str] | None = None) -> Iterator[SparkSession]:
    """A Spark session for the step (stopped when the block ends). ``master=None``: the SparkApplication's
    driver, where spark-submit already set the master and the driver's memory.

    Raises:
        ConfigError: no Java runtime (one line saying how to install it), or pyspark missing.
    """
    check_java()
    try:
        from py4j.protocol import Py4JJavaError
        from pyspark.errors.exceptions.captured import CapturedException
        from pyspark.sql import SparkSession
    except ImportError as e:
        raise ConfigError("engine=spark needs pyspark: pip install 'pyspark==3.5.*'") from e
    # Spark's Python workers run this interpreter (so they import the same packages); Spark reads it only
    # from the environment when the session starts.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = (SparkSession.builder.appName("pillars-prepare-data").config("spark.ui.enabled", "false")
               .config("spark.sql.execution.arrow.pyspark.enabled", "true"))
    if master is not None:
        builder = (builder.master(master).config("spark.driver.memory", memory)
                   .config("spark.sql.shuffle.partitions", "8"))
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    logging.getLogger("py4j").setLevel(logging.WARNING)  # its INFO lines would follow a step's traceback
    try:
        yield session
    except (Py4JJavaError, CapturedException) as e:  # read while the JVM runs: their text needs it
        raise spark_failure(e) from None
    finally:
        session.stop()
        if master is not None:
            stop_gateway()


def spark_failure(error: Exception) -> PillarsError:
    """A failed Spark call as one line: the Java exception at the root of ``error`` (a ``Py4JJavaError``, or
    pyspark's converted ``CapturedException``), e.g. ``java.lang.OutOfMemoryError: Java heap space``; a
    ConfigError naming ``spark_driver_memory`` for a heap that ran out, else a DataError. Needs the JVM."""
    java = getattr(error, "java_exception", None) or getattr(error, "_origin", None)
    text = ""
    try:
        while java is not None and java.getCause() is not None:
            java = java.getCause()
        text = str(java.toString()) if java is not None else ""
    except Exception:  # noqa: BLE001  (the JVM went away: the Python side's text below)
        text = ""
    if not text:
        text = f"{type(error).__name__}: {getattr(error, 'desc', '') or ''}"
    text = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
    if "OutOfMemoryError" in text:
        return ConfigError(f"Spark ran out of memory ({text}): raise --param spark_driver_memory (now the "
                           "driver's heap) or give the step more memory")
    return DataError(f"the Spark job failed: {text}")


def stop_gateway(timeout_s: float = 30.0) -> None:
    """End the JVM pyspark launched for the session. ``SparkSession.stop()`` leaves it running (about a tenth
    of a core, and its heap) until the Python process exits; it exits when its stdin closes. The next session
    launches a new one."""
    from pyspark import SparkContext

    gateway = SparkContext._gateway
    if gateway is None:
        return
    proc = getattr(gateway, "proc", None)
    gateway.shutdown()
    SparkContext._gateway = None
    SparkContext._jvm = None
    if proc is None:
        return
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


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

    ``out_dir`` is a local folder or a URI Spark writes to (``s3a://bucket/prefix``: the driver of a
    SparkApplication, :mod:`pillars.components.data.spark_driver`).

    The cleaned, hashed and split table is cached once (features as float, what every later step reads);
    the counts, the statistics and the shards are then a fixed number of passes over that cache.

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
    if source.kind != "classification" and not label_numeric:
        raise DataError(f"label column {label!r} of {source.source} must be numeric for regression")
    missing = _col(label).isNull() | (F.isnan(_col(label)) if label_numeric else F.lit(False))
    rows_in, rows_unlabelled = raw.agg(F.count(F.lit(1)), F.sum(missing.cast("long"))).collect()[0]
    spark.conf.set("spark.sql.shuffle.partitions", str(shuffle_partitions(int(rows_in), len(columns))))
    deduped = raw.where(~missing).dropDuplicates()
    # The hashed form: features (and a numeric label) as double with NaN as null, as the pandas engine's.
    as_double = {n: F.when(F.isnan(_col(n).cast("double")), None).otherwise(_col(n).cast("double"))
                 for n in names}
    hashed_columns = [source.key_column] if source.key_column else columns
    hash_inputs = [as_double[c] if c in as_double else (_col(c).cast("double") if label_numeric else _col(c))
                   for c in hashed_columns]
    features = [feature_column(i) for i in range(len(names))]
    hashed = deduped.select(*[as_double[n].alias(feature_column(i)) for i, n in enumerate(names)],
                            _col(label).alias(LABEL),
                            _hash_udf(hashed_columns, label, params.seed)(*hash_inputs).alias(ROW_HASH))
    u = F.shiftrightunsigned(F.col(ROW_HASH), 11).cast("double") * F.lit(hashsplit.UNIT)
    complete = (F.greatest(*[F.col(f).isNull().cast("int") for f in features]) == 0) if features else F.lit(True)
    # What every later pass reads: features as float (all that is used after the hash), split and completeness.
    base = hashed.select(*[F.col(f).cast("float").alias(f) for f in features], LABEL, ROW_HASH,
                         F.when(u < params.test_fraction, 2).when(u < params.test_fraction + params.val_fraction, 1)
                         .otherwise(0).alias(_SPLIT), complete.alias(_COMPLETE))
    base = base.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        groups = _groups(base, source.kind == "classification")
        report: dict[str, Any] = {"rows_in": int(rows_in), "dropped_missing_label": int(rows_unlabelled or 0),
                                  "dropped_duplicates": int(rows_in) - int(rows_unlabelled or 0)
                                  - sum(g.rows for g in groups)}
        frame = base
        if params.missing_policy == "drop":
            report["dropped_missing_features"] = sum(g.rows for g in groups if not g.complete)
            groups = [g for g in groups if g.complete]
            frame = base.where(F.col(_COMPLETE))
        classes = None
        if source.kind == "classification":
            values, classes = class_order(sorted({g.label for g in groups}, key=repr))
            check_classes(values, source)
            mapping = F.create_map(*[x for i, v in enumerate(values) for x in (F.lit(v), F.lit(i))])
            frame = frame.withColumn(LABEL, mapping[F.col(LABEL)].cast("long"))
            class_counts = [sum(g.rows for g in groups if g.split == 0 and g.label == v) for v in values]
        else:
            frame = frame.withColumn(LABEL, F.col(LABEL).cast("float"))
            class_counts = []
        summary = _summarise_and_write(frame, groups, features, source, params, class_counts, str(out_dir))
    finally:
        base.unpersist()
    return assemble(source, params, columns, classes, summary.feature_stats, summary.label_stats, summary.fill,
                    summary.split_rows, summary.split_xor, summary.reference, report, "spark",
                    {"spark_app_id": spark.sparkContext.applicationId})


def shuffle_partitions(rows: int, columns: int) -> int:
    """Shuffle partitions for a table of ``rows`` x ``columns``: at least 8, else :data:`CELLS_PER_PARTITION`
    values each (adaptive execution merges the small ones of a small table)."""
    return max(8, math.ceil(rows * (columns + 2) / CELLS_PER_PARTITION))


class _Group(NamedTuple):
    split: int
    complete: bool
    label: Any
    rows: int
    xor: int


def _groups(base: DataFrame, by_label: bool) -> list[_Group]:
    """Rows and the XOR of their hashes per split, completeness and (for a classifier) label value: every
    count the step needs, in the pass that fills the cache."""
    from pyspark.sql import functions as F

    keys = [_SPLIT, _COMPLETE] + ([LABEL] if by_label else [])
    rows = base.groupBy(*keys).agg(F.count(F.lit(1)).alias("n"), F.expr(f"bit_xor({ROW_HASH})").alias("x")).collect()
    return [_Group(int(r[_SPLIT]), bool(r[_COMPLETE]), r[LABEL] if by_label else None, int(r["n"]), int(r["x"] or 0))
            for r in rows]


class _Summary(NamedTuple):
    split_rows: dict[str, int]
    split_xor: dict[str, int]
    fill: list[float]
    feature_stats: list[dict[str, Any]]
    label_stats: dict[str, Any]
    reference: list[list[float]]


def _summarise_and_write(frame: DataFrame, groups: list[_Group], features: list[str], source: TableSource,
                         params: DataParams, class_counts: list[int], out: str) -> _Summary:
    """Rows and hash digest per split, the train split's fill values and statistics, the drift reference, and
    each split written as Parquet shards under ``out``."""
    from pyspark.sql import functions as F

    split_rows = {name: sum(g.rows for g in groups if g.split == i) for i, name in enumerate(hashsplit.SPLITS)}
    split_xor = {}
    for i, name in enumerate(hashsplit.SPLITS):
        xor = 0
        for g in groups:
            if g.split == i:
                xor ^= g.xor
        split_xor[name] = xor
    train_rows = split_rows["train"]
    train = frame.where(F.col(_SPLIT) == 0)
    fill = _fill_values(train, features, params.missing_policy, train_rows)
    imputed = frame.select(*[F.coalesce(F.col(f), F.lit(v).cast("float")).alias(f)
                             for f, v in zip(features, fill)], LABEL, ROW_HASH, _SPLIT)
    train = imputed.where(F.col(_SPLIT) == 0)
    measured = features + ([] if source.kind == "classification" else [LABEL])
    stats = spark_stats.column_stats(train, measured, train_rows)
    feature_stats = stats[:len(features)]
    label_stats: dict[str, Any] = ({"class_counts": class_counts} if source.kind == "classification"
                                   else stats[len(features)])
    reference = [[round(float(v), 6) for v in row] for row in
                 train.orderBy(ROW_HASH).limit(REFERENCE_ROWS).select(*features).collect()]
    for code, name in enumerate(hashsplit.SPLITS):
        (imputed.where(F.col(_SPLIT) == code).select(*features, LABEL, ROW_HASH)
         .write.mode("overwrite").option("parquet.block.size", PARQUET_BLOCK_BYTES)
         .parquet(f"{out.rstrip('/')}/{name}"))
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
    """Per feature, the fill of the missing-value policy from the train split (nulls skipped; 0.0 for a
    feature without a value there), as the pandas engine's."""
    from pyspark.sql import functions as F

    if policy in ("zero", "drop") or not features:
        return [0.0] * len(features)
    if policy == "median":
        return spark_stats.medians(train, features, rows)
    row = train.agg(*[F.avg(F.col(f).cast("double")).alias(f) for f in features]).collect()[0]
    return [float(row[f]) if row[f] is not None else 0.0 for f in features]
