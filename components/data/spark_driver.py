"""The driver program of the data step's SparkApplication (``spark_launcher=operator``), and how the step
reads its output back.

The operator runs this file from the image (``mainApplicationFile: local://.../spark_driver.py``) with
:func:`driver_arguments`: the run's data parameters as JSON and a work location (``s3://bucket/prefix/NAME``,
or a folder every pod mounts). :func:`run_driver` prepares the task's table with the same code as
``spark_launcher=local`` (:func:`pillars.components.data.spark.prepare_table_spark`) on the session
spark-submit configured, writes the splits under the work location (``train/``, ``val/``, ``test/``, Spark
through ``s3a://``) and then :data:`RESULT_FILE`, the statistics, profile and counts the step fits the task's
preprocessing from; the result is written last, so a location with it is complete.

The step (:func:`pillars.components.data.spark_application.run_on_operator`) copies the splits into its own
outputs with :func:`fetch_result` and removes the location (:func:`remove_location`). Files move through
``pyarrow.fs`` (S3 credentials from the ``AWS_*`` environment, the endpoint from ``AWS_ENDPOINT_URL`` or the
given one).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __name__ == "__main__":  # spark-submit runs this file: its own folder must not shadow modules (profile.py)
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from pillars.components.data.hashsplit import SPLITS
from pillars.components.errors import ConfigError, DataError

if TYPE_CHECKING:
    import pyarrow.fs

    from pillars.components.data.prepare import PrepareParams
    from pillars.components.data.tables import TableResult

logger = logging.getLogger(__name__)

RESULT_FILE = "_result.json"
"""The driver's result under the work location, written after the splits."""


def driver_arguments(params: PrepareParams, work: str) -> list[str]:
    """The driver's command line for ``params`` writing to ``work``."""
    return ["--params", json.dumps(dataclasses.asdict(params), sort_keys=True), "--work", work]


def parse_arguments(argv: Sequence[str]) -> tuple[PrepareParams, str]:
    """``(params, work location)`` from :func:`driver_arguments`' command line (checked as the step checks them).

    Raises:
        ConfigError: a missing argument, parameters that are not a JSON object or not the data step's.
    """
    from pillars.components.data.prepare import PrepareParams

    parser = argparse.ArgumentParser(prog="spark_driver", exit_on_error=False)
    parser.add_argument("--params", required=True)
    parser.add_argument("--work", required=True)
    try:
        args = parser.parse_args(list(argv))
        given = json.loads(args.params)
    except (argparse.ArgumentError, json.JSONDecodeError) as e:
        raise ConfigError(f"spark_driver: {e}") from e
    except SystemExit as e:  # argparse still exits on a missing required argument
        raise ConfigError("spark_driver needs --params JSON --work LOCATION") from e
    if not isinstance(given, dict):
        raise ConfigError(f"spark_driver: --params must be a JSON object, got {args.params!r}")
    known = {f.name for f in dataclasses.fields(PrepareParams)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ConfigError(f"spark_driver: unknown data parameter(s) {', '.join(unknown)}")
    return PrepareParams(**given), args.work


def _spark_uri(location: str) -> str:
    """``location`` as Spark's Hadoop file systems name it (``s3://`` is ``s3a://``)."""
    return "s3a://" + location.split("://", 1)[1] if location.startswith("s3://") else location


def filesystem(location: str, endpoint: str = "") -> tuple[pyarrow.fs.FileSystem, str]:
    """The ``pyarrow`` file system and path of a local folder or an ``s3://``/``s3a://`` location."""
    from pyarrow import fs

    if location.startswith(("s3://", "s3a://")):
        bucket_path = location.split("://", 1)[1]
        return (fs.S3FileSystem(endpoint_override=endpoint) if endpoint else fs.S3FileSystem()), bucket_path
    return fs.LocalFileSystem(), str(Path(location).resolve())


def result_to_json(result: TableResult) -> str:
    """The result as JSON (:func:`result_from_json` reads it back)."""
    return json.dumps(dataclasses.asdict(result), sort_keys=True)


def result_from_json(text: str) -> TableResult:
    """The :class:`TableResult` :func:`result_to_json` wrote."""
    from pillars.components.data.tables import TableResult
    from pillars.components.task import TableStatistics

    given: dict[str, Any] = json.loads(text)
    given["statistics"] = TableStatistics(**given["statistics"])
    given["membership_hashes"] = {k: int(v) for k, v in given.get("membership_hashes", {}).items()}
    return TableResult(**given)


def run_driver(params: PrepareParams, work: str, master: str | None = None) -> TableResult:
    """Prepare the table on Spark into ``work`` and write :data:`RESULT_FILE` there.

    Args:
        master: None on the cluster (spark-submit set it); ``local[1]`` in a test.

    Raises:
        ConfigError: the task has no table source; DataError: the table is missing or malformed (the step
            fails with this line: it is the driver's error in the application's status).
    """
    from pillars.components.data.spark import local_session, prepare_table_spark
    from pillars.components.data.tables import check_table_files, table_files

    task = params.load()
    source = task.table_source(params.data_params())
    if source is None:
        raise ConfigError(f"engine=spark needs a task that reads a table; {params.task} has no table source")
    if not source.source.startswith(("s3://", "s3a://")):  # a shared folder: its files checked before Spark starts
        check_table_files(table_files(source.source), source.label_column)
    with local_session(master) as spark:
        result = prepare_table_spark(spark, source, params.data_params(), _spark_uri(work))
    files, root = filesystem(work)
    with files.open_output_stream(f"{root}/{RESULT_FILE}") as f:
        f.write(result_to_json(result).encode())
    return result


def fetch_result(work: str, out: Path, endpoint: str = "") -> TableResult:
    """Copy the splits the driver wrote under ``work`` into ``out/{train,val,test}`` and read its result.

    Raises:
        DataError: the driver left no result (it did not finish).
    """
    from pyarrow import fs

    files, root = filesystem(work, endpoint)
    try:
        with files.open_input_stream(f"{root}/{RESULT_FILE}") as f:
            result = result_from_json(f.read().decode())
    except FileNotFoundError as e:
        raise DataError(f"the Spark driver left no {RESULT_FILE} under {work}: it did not finish") from e
    local = fs.LocalFileSystem()
    for name in SPLITS:
        target = out / name
        target.mkdir(parents=True, exist_ok=True)
        selector = fs.FileSelector(f"{root}/{name}", recursive=False)
        for info in files.get_file_info(selector):
            if info.type == fs.FileType.File and info.base_name.endswith(".parquet"):
                fs.copy_files(info.path, str(target / info.base_name), source_filesystem=files,
                              destination_filesystem=local)
    return result


def remove_location(work: str, endpoint: str = "") -> None:
    """Remove the work location (nothing when it is already gone or was never written). A failure to remove
    it is logged, never raised: it must not hide the outcome of the step."""
    files, root = filesystem(work, endpoint)
    try:
        files.delete_dir(root)
    except FileNotFoundError:
        pass
    except OSError as e:
        logger.warning("could not remove the Spark work location %s: %s", work, e)


def main(argv: Sequence[str] | None = None) -> int:
    """The driver's entry point (spark-submit runs this file)."""
    params, work = parse_arguments(sys.argv[1:] if argv is None else argv)
    run_driver(params, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
