"""The seeded hash split: which split a table's row belongs to, decided by a hash of the row alone.

A row's split depends on its content (or its key column) and the seed, never on the row's position,
the file it came from, the number of partitions or the engine: the pandas and the Spark data steps
call the same two functions (Spark through a vectorised UDF over Arrow batches), so the same table
gives the same membership on both, and a rerun on a grown table keeps every old row where it was.

Contract:

- Numbers are parsed exactly (the nearest double: pandas with ``float_precision="round_trip"``, as Spark).
- :func:`normalised` turns a table into the columns that are hashed: every feature column as float64
  (missing values NaN), the label as float64 when numeric, else as strings. Both engines hand the
  hash function the same dtypes, so the bytes hashed are the same.
- :func:`row_hashes` is ``pandas.util.hash_pandas_object`` of those columns (a fixed SipHash key, stable
  across runs and machines) mixed with the seed through SplitMix64: one uint64 per row.
- :func:`split_codes` maps a hash to ``u = (h >> 11) / 2**53`` in [0, 1): ``test`` when
  ``u < test_fraction``, ``val`` when ``u < test_fraction + val_fraction``, else ``train``
  (codes 0 train, 1 val, 2 test). The split is not stratified: the class shares of each split are
  those of the table up to sampling noise.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")
"""Split names by code (0, 1, 2)."""
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
UNIT = 2.0 ** -53
"""``(h >> 11) * UNIT`` is a hash's position in [0, 1)."""


def normalised(frame: pd.DataFrame, label_column: str) -> pd.DataFrame:
    """The hashed form of a table: features as float64, the label as float64 when numeric, else strings.

    Column order is kept (it is part of what is hashed); names are not hashed.
    """
    columns: dict[str, pd.Series] = {}
    for name in frame.columns:
        values = frame[name]
        if name == label_column and not pd.api.types.is_numeric_dtype(values):
            columns[name] = values.astype(str)
        else:
            columns[name] = pd.to_numeric(values, errors="coerce").astype(np.float64)
    return pd.DataFrame(columns, index=frame.index)


def row_hashes(frame: pd.DataFrame, seed: int) -> np.ndarray:
    """One uint64 per row of an already :func:`normalised` table, seeded (SplitMix64 of the row hash)."""
    base = pd.util.hash_pandas_object(frame, index=False).to_numpy(dtype=np.uint64)
    return _splitmix(base ^ np.uint64((seed * int(_GOLDEN)) & 0xFFFFFFFFFFFFFFFF))


def _splitmix(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = z + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        return z ^ (z >> np.uint64(31))


def unit_positions(hashes: np.ndarray) -> np.ndarray:
    """Each hash's position in [0, 1): ``(h >> 11) * 2**-53`` (exact in float64)."""
    return (np.asarray(hashes, dtype=np.uint64) >> np.uint64(11)).astype(np.float64) * UNIT


def split_codes(hashes: np.ndarray, val_fraction: float, test_fraction: float) -> np.ndarray:
    """The split code of each row (0 train, 1 val, 2 test) from its hash."""
    u = unit_positions(hashes)
    return np.where(u < test_fraction, 2, np.where(u < test_fraction + val_fraction, 1, 0)).astype(np.int8)


def as_signed(hashes: np.ndarray) -> np.ndarray:
    """uint64 hashes as the int64 with the same bits (what Parquet and Spark store as ``long``)."""
    return np.asarray(hashes, dtype=np.uint64).view(np.int64)


def membership(codes: np.ndarray, hashes: np.ndarray) -> Mapping[str, set[int]]:
    """``{split: set of signed row hashes}``: what two preparations of one table are compared by."""
    signed = as_signed(hashes)
    return {name: set(signed[codes == i].tolist()) for i, name in enumerate(SPLITS)}
