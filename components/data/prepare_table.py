"""The data step for a task's table source (``engine=spark``, or the pandas table engine): prepare the table
on the chosen engine, learn the task's preprocessing from the train split's statistics, and write the
metadata every later step reads, beside the splits' Parquet shards.

The metadata has the keys of :func:`pillars.components.data.prepare.prepare`'s (task, arguments, info,
preprocessing, signature, data hash, split rows, seed, source, profile) plus ``table`` (how shard rows
become the task's examples, :mod:`pillars.components.data.shards`), ``engine`` and, on Spark,
``spark_app_id``: the lineage the train step logs to the run and registration to the version.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pillars.components.data.prepare import PrepareParams, parse_task_args
from pillars.components.data.shards import write_layout
from pillars.components.data.splits import save_metadata
from pillars.components.data.tables import check_engine, prepare_table_pandas
from pillars.components.errors import ConfigError
from pillars.components.registry.references import default_model_name
from pillars.components.task import task_reference


def prepare_table(params: PrepareParams, engine: str, splits: Mapping[str, str | Path],
                  spark_conf: Mapping[str, str] | None = None, master: str = "local[*]",
                  api: Any = None) -> dict[str, Any]:
    """Prepare the task's table source on ``engine`` into the split folders ``splits`` (train, val, test).

    With ``params.spark_launcher == "operator"`` Spark runs as a SparkApplication on the cluster
    (:func:`pillars.components.data.spark_application.run_on_operator`; ``api``: its Kubernetes API object,
    default the pod's own), else ``master`` in this process.

    Returns:
        The metadata (also what :func:`run_prepare_table` writes).

    Raises:
        ConfigError: the task has no table source, an unknown engine, no Java for Spark.
        DataError: the table is missing, malformed or too small (the message names the file or column).
        SparkApplicationError: the operator's CRD is missing, or the application failed (the driver's error).
    """
    check_engine(engine)
    task = params.load()
    reference = task_reference(params.task)
    source = task.table_source(params.data_params())
    if source is None:
        raise ConfigError(f"engine={engine} needs a task that reads a table (tabular_classification or "
                          f"tabular_regression with --param source=...); {reference} has no table source: "
                          "use engine=pandas")
    folders = {name: Path(splits[name]) for name in ("train", "val", "test")}
    out = _common_parent(folders)
    if engine == "spark" and params.spark_launcher == "operator":
        from pillars.components.data.spark_application import run_on_operator

        result = run_on_operator(params, out, api=api)
    elif engine == "spark":
        from pillars.components.data.spark import local_session, prepare_table_spark

        with local_session(master, memory=params.spark_driver_memory, conf=spark_conf) as spark:
            result = prepare_table_spark(spark, source, params.data_params(), out)
    else:
        result = prepare_table_pandas(source, params.data_params(), out)
    for name, folder in folders.items():
        if (out / name).resolve() != folder.resolve():
            (out / name).rename(folder)
    if out.name.endswith(".table"):
        out.rmdir()
    for folder in folders.values():
        write_layout(folder, result.table)
    prep = task.fit_table_preprocessing(result.statistics, result.info)
    info = json.loads(json.dumps(result.info))
    return {
        "task": reference,
        "task_name": default_model_name(params.task),
        "task_args": parse_task_args(params.task_args),
        "kind": task.kind,
        "info": info,
        "prep": json.loads(json.dumps(prep)),
        "signature": json.loads(json.dumps(task.signature(prep).to_dict())),
        "data_hash": info["data_hash"],
        "split_rows": dict(result.split_rows),
        "seed": params.seed,
        "source": source.source,
        "profile": result.profile,
        "table": result.table,
        "engine": engine,
        "spark_app_id": info.get("spark_app_id", ""),
    }


def _common_parent(folders: Mapping[str, Path]) -> Path:
    """Where the engine writes ``train``/``val``/``test``: the splits' own parent when they are named so,
    else a working folder beside the train split (the folders are moved into place afterwards)."""
    parents = {p.parent for p in folders.values()}
    if len(parents) == 1 and all(p.name == name for name, p in folders.items()):
        return parents.pop()
    work = folders["train"].parent / f".{folders['train'].name}.table"
    work.mkdir(parents=True, exist_ok=True)
    return work


def run_prepare_table(params: PrepareParams, engine: str, train_path: str, val_path: str, test_path: str,
                      metadata_path: str) -> str:
    """Prepare the table into the three split folders and write the metadata; returns the data hash."""
    metadata = prepare_table(params, engine, {"train": train_path, "val": val_path, "test": test_path})
    save_metadata(metadata_path, metadata)
    return str(metadata["data_hash"])
