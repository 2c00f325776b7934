"""The table data step on Spark ``local[N]`` against pandas: rows/s on the same generated tables, same run,
and whether the two give the same answer.

    python benchmarks/spark_prepare_bench.py --rows 100000,1000000 --features 32 --master 'local[2]'

For each size a synthetic 32-feature classification table (5% missing values in one feature, as Parquet
files of 250k rows) is prepared by :func:`pillars.components.data.tables.prepare_table_pandas` and by
:func:`pillars.components.data.spark.prepare_table_spark` (one Spark session for the run; its start is
reported once, not counted in the per-size times). For each size it compares the two results: split
membership (the row hashes in each split's shards), the fill values, and the preprocessing statistics (mean,
std, quantiles: largest relative difference; histograms and counts: equal). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from _common import write_table
from pillars.components.data import hashsplit
from pillars.components.data.shards import ROW_HASH, shard_files
from pillars.components.data.tables import TableResult, prepare_table_pandas
from pillars.components.task import DataParams, TableSource


def membership(folder: Path) -> dict[str, set[int]]:
    return {split: set(pq.read_table(shard_files(folder / split), columns=[ROW_HASH]).column(0).to_pylist())
            for split in hashsplit.SPLITS}


def _max_rel(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(a), 1e-300))) if a.size else 0.0


def compare(a: TableResult, b: TableResult, folder_a: Path, folder_b: Path) -> dict[str, Any]:
    """How far the Spark result ``b`` is from the pandas result ``a``."""
    features_a, features_b = a.profile["features"], b.profile["features"]
    return {
        "same_split_rows": a.split_rows == b.split_rows,
        "same_membership": membership(folder_a) == membership(folder_b),
        "same_data_hash": a.info["data_hash"] == b.info["data_hash"],
        "same_cleaning_report": a.info["cleaning"] == b.info["cleaning"],
        "fill_values_max_rel_diff": _max_rel(a.info["cleaning"]["fill_values"], b.info["cleaning"]["fill_values"]),
        "mean_max_rel_diff": _max_rel(a.statistics.mean, b.statistics.mean),
        "std_max_rel_diff": _max_rel(a.statistics.std, b.statistics.std),
        "quantiles_max_rel_diff": max(_max_rel(list(features_a[n]["quantiles"].values()),
                                               list(features_b[n]["quantiles"].values())) for n in features_a),
        "same_histograms": all(features_a[n]["histogram"]["counts"] == features_b[n]["histogram"]["counts"]
                               for n in features_a),
        "same_class_counts": a.profile["label"] == b.profile["label"],
        "same_reference_sample": a.profile["reference_sample"] == b.profile["reference_sample"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="100000,1000000", help="comma-separated table sizes")
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--spark-memory", default="2g")
    parser.add_argument("--skip-pandas-above", type=int, default=0,
                        help="rows above which pandas is not run (0: always)")
    args = parser.parse_args()
    from pillars.components.data.spark import local_session, prepare_table_spark

    report: dict[str, Any] = {"features": args.features, "master": args.master, "spark_heap": args.spark_memory,
                              "sizes": {}}
    params = DataParams(seed=0, missing_policy="median")
    with tempfile.TemporaryDirectory(prefix="pillars-spark-bench-") as tmp:
        started = time.perf_counter()
        with local_session(args.master, memory=args.spark_memory,
                           conf={"spark.ui.showConsoleProgress": "false"}) as spark:
            report["spark_session_start_seconds"] = round(time.perf_counter() - started, 1)
            for rows in (int(r) for r in args.rows.split(",")):
                root = Path(tmp, str(rows))
                source_bytes = write_table(root / "table", rows, args.features, seed=rows, missing_share=0.05)
                source = TableSource(str(root / "table"), "label", "classification")
                entry: dict[str, Any] = {"source_mb": round(source_bytes / 2**20, 1)}
                by_pandas = None
                if not args.skip_pandas_above or rows <= args.skip_pandas_above:
                    started = time.perf_counter()
                    by_pandas = prepare_table_pandas(source, params, root / "pandas")
                    seconds = time.perf_counter() - started
                    entry["pandas"] = {"seconds": round(seconds, 1), "rows_per_s": round(rows / seconds),
                                       # the process's peak so far: pandas' own at the first (largest) size
                                       "process_peak_rss_mb": round(resource.getrusage(
                                           resource.RUSAGE_SELF).ru_maxrss / 1024)}
                started = time.perf_counter()
                by_spark = prepare_table_spark(spark, source, params, root / "spark")
                seconds = time.perf_counter() - started
                entry["spark"] = {"seconds": round(seconds, 1), "rows_per_s": round(rows / seconds)}
                if by_pandas is not None:
                    entry["spark_over_pandas_rows_per_s"] = round(
                        entry["spark"]["rows_per_s"] / entry["pandas"]["rows_per_s"], 3)
                    entry["same_answer"] = compare(by_pandas, by_spark, root / "pandas", root / "spark")
                report["sizes"][str(rows)] = entry
                print(json.dumps({rows: entry}), file=sys.stderr, flush=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
