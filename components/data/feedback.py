"""Ground-truth labels sent to the model server: where they are stored, and read back as extra training rows.

The model server keeps one JSON line per labelled request id (:mod:`pillars.serving.monitoring.feedback`):
the labels (one per row of the request), and the request's inputs when the server still remembered them
(``{"inputs": {name: rows}}``; null for an id it had forgotten, or for inputs too large to keep). A
*feedback store* (``--feedback_dir`` of the server, the ``feedback`` run parameter) is one of two layouts:

- a local folder: ``<folder>/<model>.jsonl``, appended to and fsynced per accepted batch
  (:class:`LocalFeedbackFile`; a path ending in ``.jsonl`` names the file itself);
- object storage, ``s3://bucket/prefix``: one new object per accepted batch,
  ``<prefix>/<model>/<nanoseconds>-<random>.jsonl``, never rewritten (:class:`S3FeedbackObjects`). Objects
  are written whole or not at all, so several servers (replicas, restarts) append without coordination;
  the endpoint is ``AWS_ENDPOINT_URL`` (or ``MLFLOW_S3_ENDPOINT_URL``), credentials boto3's usual ones.

:func:`feedback_store` picks the layout from the location. :func:`feedback_examples` turns the lines that carry
inputs into a split of the task's format (its input columns and its target column), ready to be concatenated
with a train split (:func:`add_feedback` does so for the data step); lines without inputs cannot be trained on
and are counted, not used. An id labelled twice (two replicas) counts once: the first line read wins.

A classifier's labels are class names (the server stores names, whatever the client sent); they become
class indices by ``classes``; a label naming an unknown class is an error naming the line, as is a line
that is not JSON.
"""

from __future__ import annotations

import abc
import hashlib
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from pillars.components.errors import ConfigError, DataError
from pillars.components.task import Examples

logger = logging.getLogger(__name__)

SUFFIX = ".jsonl"
TRAINABLE_KINDS = ("classification", "regression")
"""Kinds whose labels become training rows (one scalar label per row)."""


class FeedbackStoreError(OSError):
    """The feedback store cannot be read or written (a read-only folder, object storage unreachable)."""


class FeedbackStore(abc.ABC):
    """The labels of one model: read back line by line, appended to one batch at a time."""

    where: str
    """The store as people name it (a path or an ``s3://`` URI), for messages."""

    @abc.abstractmethod
    def lines(self) -> Iterator[tuple[str, int, bytes]]:
        """Each stored line ending in a newline, in write order: ``(where, line number, line)``.
        A last line without its newline (a crash mid-write, never acknowledged) is left out."""

    @abc.abstractmethod
    def append(self, data: bytes) -> None:
        """Store ``data`` (whole lines) durably before returning.

        Raises:
            FeedbackStoreError: nothing was stored.
        """


class LocalFeedbackFile(FeedbackStore):
    """One JSON-lines file, appended to and fsynced (its folder too when the file is new)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.where = str(self.path)

    def lines(self) -> Iterator[tuple[str, int, bytes]]:
        if not self.path.is_file():
            return
        with self.path.open("rb") as f:
            for number, line in enumerate(f, 1):
                if not line.endswith(b"\n"):
                    logger.warning("%s: ignoring an unfinished line %d", self.path, number)
                    return
                yield self.where, number, line

    def append(self, data: bytes) -> None:
        try:
            new = not self.path.exists()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            if new:
                folder = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(folder)
                finally:
                    os.close(folder)
        except OSError as e:
            raise FeedbackStoreError(e.errno, e.strerror or str(e)) from e


class S3FeedbackObjects(FeedbackStore):
    """One object per appended batch under ``s3://bucket/prefix/`` (keys sort in write order)."""

    def __init__(self, bucket: str, prefix: str) -> None:
        self.bucket = bucket
        self.prefix = prefix if prefix.endswith("/") else f"{prefix}/"
        self.where = f"s3://{bucket}/{self.prefix}"
        self._client: Any = None
        self._lock = threading.Lock()

    def client(self) -> Any:
        """One boto3 client per store (thread-safe), made on first use."""
        with self._lock:
            if self._client is None:
                import boto3

                endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None
                self._client = boto3.client("s3", endpoint_url=endpoint)
            return self._client

    def keys(self) -> list[str]:
        """The batches' object keys, oldest first."""
        from botocore.exceptions import BotoCoreError, ClientError

        keys: list[str] = []
        try:
            for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                                Prefix=self.prefix):
                keys += [o["Key"] for o in page.get("Contents", []) if o["Key"].endswith(SUFFIX)]
        except (BotoCoreError, ClientError) as e:
            raise FeedbackStoreError(f"cannot list {self.where}: {e}") from e
        return sorted(keys)

    def lines(self) -> Iterator[tuple[str, int, bytes]]:
        from botocore.exceptions import BotoCoreError, ClientError

        for key in self.keys():
            where = f"s3://{self.bucket}/{key}"
            try:
                body = self.client().get_object(Bucket=self.bucket, Key=key)["Body"].read()
            except (BotoCoreError, ClientError) as e:
                raise FeedbackStoreError(f"cannot read {where}: {e}") from e
            for number, line in enumerate(body.splitlines(keepends=True), 1):
                if line.endswith(b"\n"):
                    yield where, number, line

    def append(self, data: bytes) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        key = f"{self.prefix}{time.time_ns():020d}-{secrets.token_hex(6)}{SUFFIX}"
        try:
            self.client().put_object(Bucket=self.bucket, Key=key, Body=data, ContentType="application/jsonl")
        except (BotoCoreError, ClientError) as e:
            raise FeedbackStoreError(f"cannot write s3://{self.bucket}/{key}: {e}") from e


def feedback_store(location: str | Path, model: str) -> FeedbackStore:
    """The store of ``model``'s labels at ``location``: ``s3://bucket/prefix`` (objects under
    ``prefix/<model>/``), a folder (``<folder>/<model>.jsonl``) or a ``.jsonl`` file itself.

    Raises:
        ConfigError: an ``s3://`` URI without a bucket, or another scheme.
    """
    text = str(location)
    parsed = urlparse(text)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ConfigError(f"the feedback store {text} names no bucket: use s3://BUCKET/PREFIX")
        prefix = parsed.path.strip("/")
        return S3FeedbackObjects(parsed.netloc, f"{prefix}/{model}/" if prefix else f"{model}/")
    if "://" in text:
        raise ConfigError(f"the feedback store must be a folder or s3://BUCKET/PREFIX, got {text!r}")
    path = Path(text)
    return LocalFeedbackFile(path if path.suffix == SUFFIX else path / f"{model}{SUFFIX}")


@dataclass(frozen=True)
class FeedbackRows:
    """The trainable rows of a feedback store, and how many labels could not be used."""

    examples: Examples
    rows: int
    without_inputs: int
    """Labelled rows whose inputs the server did not keep (not trainable)."""


def feedback_examples(store: FeedbackStore | str | Path, input_names: Sequence[str], target_column: str,
                      classes: Sequence[str] | None = None) -> FeedbackRows:
    """The labelled rows of a feedback store as named arrays (``input_names`` and ``target_column``).

    Args:
        store: a :class:`FeedbackStore`, or the path of a server's ``<model>.jsonl``.
        input_names: the task's input columns (a line lacking one of them is not used).
        target_column: the task's target column.
        classes: a classifier's class names (labels become indices); None for a regressor (labels are numbers).

    Raises:
        DataError: a line is not JSON, or names a class not in ``classes`` (naming the line).
        FeedbackStoreError: the store cannot be read.
    """
    if not isinstance(store, FeedbackStore):
        store = LocalFeedbackFile(store)
    columns: dict[str, list] = {name: [] for name in input_names}
    targets: list = []
    without = 0
    seen: set[str] = set()
    index = {name: i for i, name in enumerate(classes or [])}
    for where, number, line in store.lines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}:{number}: not a JSON line ({e})") from e
        if record.get("id") in seen:
            continue
        seen.add(record.get("id"))
        labels = record.get("labels") or []
        inputs = record.get("inputs")
        if not inputs or any(name not in inputs or len(inputs[name]) != len(labels) for name in input_names):
            without += len(labels)
            continue
        for label in labels:
            if classes is not None and label not in index:
                raise DataError(f"{where}:{number}: label {label!r} is not one of the classes {list(classes)[:20]}")
            targets.append(index[label] if classes is not None else float(label))
        for name in input_names:
            columns[name].extend(inputs[name])
    examples: Examples = {name: _array(values) for name, values in columns.items()}
    examples[target_column] = np.asarray(targets, dtype=np.int64 if classes is not None else np.float32)
    return FeedbackRows(examples, len(targets), without)


def add_feedback(train: Examples, rows: FeedbackRows, where: str) -> Examples:
    """``train`` with the feedback rows appended (each column in its own dtype).

    Raises:
        DataError: the train split has a column the feedback lacks, or a feedback column's row shape
            differs from the train split's (naming the column and both shapes).
    """
    if rows.rows == 0:
        return train
    missing = sorted(set(train) - set(rows.examples))
    if missing:
        raise DataError(f"feedback from {where} cannot be added: the train split has columns {missing} "
                        "the feedback lines do not carry")
    joined: Examples = {}
    for name, column in train.items():
        base, extra = np.asarray(column), rows.examples[name]
        if extra.shape[1:] != base.shape[1:]:
            raise DataError(f"feedback from {where}: input {name!r} has rows of shape {list(extra.shape[1:])}, "
                            f"the train split's are {list(base.shape[1:])}")
        joined[name] = np.concatenate([base, extra.astype(base.dtype, copy=False)])
    return joined


def feedback_hash(rows: FeedbackRows) -> str:
    """A short hash of the feedback rows (names, dtypes, shapes and bytes): it joins the data hash."""
    digest = hashlib.sha256()
    for name in sorted(rows.examples):
        array = np.ascontiguousarray(rows.examples[name])
        digest.update(f"{name}/{array.dtype.str}/{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def lineage(location: str, rows: FeedbackRows) -> dict[str, Any]:
    """What the data step records of the feedback it used (metadata ``feedback``; version tags)."""
    return {"source": location, "rows": rows.rows, "without_inputs": rows.without_inputs}


def _array(values: list) -> np.ndarray:
    """A column as the server received it: numbers as float32 (the tables' inputs) unless integer, strings as str."""
    array = np.asarray(values)
    return array.astype(np.float32) if array.dtype.kind == "f" else array
