"""The sharded split format: what the table data step writes (pandas or Spark engine) and training,
evaluation and the gate read, one record batch at a time, without importing the step itself.

Row groups are small (:data:`ROW_GROUP_ROWS` rows; Spark's ``parquet.block.size`` 8 MiB), since a reader
holds a whole row group at a time. A split is a folder of Parquet files (any names ending ``.parquet``; Spark's ``_SUCCESS`` and ``.crc``
files are ignored). Every file has the same columns: ``f0 .. f{F-1}`` float32 (the features, in the order
of the metadata's ``table.feature_names``, after the missing-value policy), ``label`` (int64 class index
or float32 value) and ``_row_hash`` int64 (the row's seeded hash, :mod:`pillars.components.data.hashsplit`).

The metadata's ``table`` entry says how a batch becomes a task's examples: the input's name and instance
shape and the target's name (:func:`examples_of`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pillars.components.errors import DataError

LABEL = "label"
ROW_GROUP_ROWS = 65_536
"""Rows per Parquet row group the pandas engine writes."""
PARQUET_BLOCK_BYTES = 8 * 2**20
"""Spark's ``parquet.block.size`` (the row group's bytes) for shards."""
ROW_HASH = "_row_hash"


def feature_column(i: int) -> str:
    """The shard column of the ``i``-th feature (names are kept in the metadata, not in Parquet)."""
    return f"f{i}"


def shard_files(folder: str | Path) -> list[Path]:
    """The Parquet files of one split, sorted by name.

    Raises:
        DataError: the folder does not exist or holds no Parquet file.
    """
    path = Path(folder)
    if not path.is_dir():
        raise DataError(f"split folder {folder} does not exist")
    files = sorted(p for p in path.iterdir() if p.suffix == ".parquet" and not p.name.startswith(("_", ".")))
    if not files:
        raise DataError(f"no Parquet shard in {folder}")
    return files


def check_same_schema(files: Sequence[str | Path]) -> pa.Schema:
    """The schema every file shares (read from the footers only).

    Raises:
        DataError: a file's columns or types differ from the first file's, naming the column and both files.
    """
    first = pq.read_schema(files[0])
    for path in files[1:]:
        schema = pq.read_schema(path)
        if schema.equals(first, check_metadata=False):
            continue
        for field in first:
            if field.name not in schema.names:
                raise DataError(f"Parquet schema changes between shards: column {field.name!r} is in {files[0]} "
                                f"but not in {path}")
            other = schema.field(field.name).type
            if other != field.type:
                raise DataError(f"Parquet schema changes between shards: column {field.name!r} is {field.type} "
                                f"in {files[0]} but {other} in {path}")
        extra = [n for n in schema.names if n not in first.names]
        raise DataError(f"Parquet schema changes between shards: column {extra[0]!r} is in {path} but not in "
                        f"{files[0]}")
    return first


def split_rows(files: Sequence[str | Path]) -> list[int]:
    """Rows of each file, from its footer."""
    return [pq.ParquetFile(p).metadata.num_rows for p in files]


def record_batches(files: Sequence[str | Path], columns: Sequence[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
    """The rows of ``files`` in file order, ``batch_rows`` at most at a time (only ``columns`` are read)."""
    # One file at a time (a scan over several files reads the next file ahead), no pre-buffering of a file's
    # column chunks, one batch ahead: memory stays about a row group and a batch, whatever the split's size.
    parquet = ds.ParquetFileFormat(default_fragment_scan_options=ds.ParquetFragmentScanOptions(pre_buffer=False))
    for path in files:
        dataset = ds.dataset(str(path), format=parquet)
        yield from dataset.to_batches(columns=list(columns), batch_size=batch_rows, batch_readahead=1,
                                      fragment_readahead=1)


def example_batches(files: Sequence[str | Path], table: Mapping[str, Any],
                    batch_rows: int) -> Iterator[dict[str, np.ndarray]]:
    """The rows of ``files`` in file order as the task's examples (:func:`examples_of`), ``batch_rows`` at most at
    a time."""
    for batch in record_batches(files, columns_of(table), batch_rows):
        yield examples_of(*arrays_of(batch, table), table)


def columns_of(table: Mapping[str, Any]) -> list[str]:
    """The shard columns a reader needs: the features and the label."""
    return [feature_column(i) for i in range(len(table["feature_names"]))] + [LABEL]


def arrays_of(batch: pa.RecordBatch | pa.Table, table: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """``(x [N, F] float32, y [N])`` of a batch of shard rows."""
    n = len(table["feature_names"])
    x = np.empty((batch.num_rows, n), dtype=np.float32)
    for i in range(n):
        x[:, i] = batch.column(feature_column(i)).to_numpy(zero_copy_only=False)
    return x, np.array(batch.column(LABEL).to_numpy(zero_copy_only=False))  # writable: torch takes it as is


def examples_of(x: np.ndarray, y: np.ndarray, table: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A task's examples from feature rows and labels: ``{input: x as [N, *input_shape], target: y}``."""
    return {table["input"]: x.reshape(len(x), *table["input_shape"]), table["target"]: y}


LAYOUT = "_table.json"
"""The file in each split folder that repeats the metadata's ``table`` entry, so a split reads on its own."""


def write_layout(folder: str | Path, table: Mapping[str, Any]) -> None:
    """Write the ``table`` entry into a split folder (:data:`LAYOUT`)."""
    Path(folder, LAYOUT).write_text(json.dumps(dict(table)))


def read_layout(folder: str | Path) -> dict[str, Any]:
    """The ``table`` entry of a split folder written by :func:`write_layout`."""
    path = Path(folder, LAYOUT)
    if not path.is_file():
        raise DataError(f"{folder} is not a split of Parquet shards (no {LAYOUT})")
    return json.loads(path.read_text())


def load_examples(folder: str | Path, table: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A whole split in memory as the task's examples (the in-memory path, for small data)."""
    files = shard_files(folder)
    check_same_schema(files)
    data = ds.dataset([str(p) for p in files], format="parquet").to_table(columns=columns_of(table))
    return examples_of(*arrays_of(data, table), table)
