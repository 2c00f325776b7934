"""Reading raw data: built-in data sets shipped with scikit-learn, and the user's CSV/Parquet files.

Sources are a local file, a local folder, an ``s3://bucket/key`` object, or an ``s3://bucket/prefix/``
(the newest CSV/Parquet object under it is taken, so retraining can point at a growing prefix).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from pillars.components.errors import DataError

SUFFIXES = (".csv", ".parquet", ".pq")
BUILTIN_PREFIX = "sklearn:"
"""How a built-in data set is named as a source: ``sklearn:digits`` is the origin a run records, and loads it."""
LABEL = "label"


@dataclasses.dataclass
class RawData:
    """A table of features plus its label column, with what the model needs to know about it."""

    frame: pd.DataFrame
    label_column: str
    input_shape: list[int] | None = None
    class_names: dict[int, str] | None = None
    origin: str = ""


def load_builtin(name: str) -> RawData:
    """One of ``breast_cancer``, ``digits`` (1x8x8 images, flattened), ``diabetes``."""
    from sklearn import datasets

    if name == "breast_cancer":
        bunch = datasets.load_breast_cancer(as_frame=True)
        names = {i: str(n) for i, n in enumerate(bunch.target_names)}
        frame = bunch.frame.rename(columns={"target": LABEL})
        return RawData(frame, LABEL, None, names, BUILTIN_PREFIX + "breast_cancer")
    if name == "digits":
        bunch = datasets.load_digits()
        frame = pd.DataFrame(bunch.data, columns=[f"pixel_{i}" for i in range(bunch.data.shape[1])])
        frame[LABEL] = bunch.target
        return RawData(frame, LABEL, [1, 8, 8], {i: str(i) for i in range(10)}, BUILTIN_PREFIX + "digits")
    if name == "diabetes":
        bunch = datasets.load_diabetes(as_frame=True)
        return RawData(bunch.frame.rename(columns={"target": LABEL}), LABEL, None, None, BUILTIN_PREFIX + "diabetes")
    raise DataError(f"unknown built-in data set {name!r}; choose breast_cancer, digits or diabetes")


def load_table(source: str, label_column: str) -> RawData:
    """Read the user's CSV or Parquet table from a local path or S3.

    Raises:
        DataError: the source is missing, of an unknown type, unreadable or empty, or lacks the label column.
    """
    if not label_column:
        raise DataError("a label column is needed for your own data: pass --param label_column=NAME")
    path = _fetch(source)
    try:
        frame = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    except pd.errors.EmptyDataError as e:
        raise DataError(f"{source} is empty") from e
    except (pd.errors.ParserError, OSError, ValueError) as e:
        raise DataError(f"cannot read {source}: {e}") from e
    finally:
        if source.startswith("s3://"):
            shutil.rmtree(path.parent, ignore_errors=True)  # the download's own temporary folder
    if frame.empty:
        raise DataError(f"{source} has no rows")
    if label_column not in frame.columns:
        raise DataError(
            f"label column {label_column!r} not in {source}; columns are: {', '.join(map(str, frame.columns))}"
        )
    return RawData(frame, label_column, None, None, source)


def _fetch(source: str) -> Path:
    if source.startswith("s3://"):
        return _fetch_s3(source)
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if p.suffix in SUFFIXES), key=lambda p: p.stat().st_mtime)
        if not files:
            raise DataError(f"no CSV or Parquet file in folder {source}")
        path = files[-1]
    if not path.is_file():
        raise DataError(f"data file {source} does not exist")
    if path.suffix not in SUFFIXES:
        raise DataError(f"{source}: unsupported file type {path.suffix!r}; use .csv or .parquet")
    return path


def _fetch_s3(uri: str) -> Path:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, key = uri[len("s3://"):].partition("/")
    endpoint = os.environ.get("MLFLOW_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL") or None
    s3 = boto3.client("s3", endpoint_url=endpoint)
    target: Path | None = None
    try:
        if not key.endswith(SUFFIXES):  # a folder, with or without its trailing slash: its newest table
            prefix = f"{key.rstrip('/')}/" if key.strip("/") else ""
            pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            objects = [o for page in pages for o in page.get("Contents", []) if o["Key"].endswith(SUFFIXES)]
            if not objects:
                if Path(key).suffix:
                    raise DataError(f"{uri}: unsupported file type {Path(key).suffix!r}; use .csv or .parquet")
                raise DataError(f"no CSV or Parquet object under {uri}")
            key = max(objects, key=lambda o: o["LastModified"])["Key"]
        target = Path(tempfile.mkdtemp(prefix="pillars-s3-")) / Path(key).name
        s3.download_file(bucket, key, str(target))
    except (BotoCoreError, ClientError) as e:
        if target is not None:
            shutil.rmtree(target.parent, ignore_errors=True)
        raise DataError(f"cannot read s3://{bucket}/{key}: {e}") from e
    return target


def as_float_matrix(frame: pd.DataFrame, source: str) -> np.ndarray:
    """Feature columns as float32, or a DataError naming the non-numeric columns."""
    bad = []
    converted = {}
    for column in frame.columns:
        values = pd.to_numeric(frame[column], errors="coerce")
        if (values.isna() & frame[column].notna()).any():
            bad.append(str(column))
        converted[column] = values
    if bad:
        raise DataError(
            f"non-numeric values in feature column(s) {', '.join(bad)} of {source}; "
            "encode them as numbers or drop them"
        )
    return pd.DataFrame(converted).to_numpy(dtype=np.float32)
