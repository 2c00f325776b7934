"""Feedback labels as training rows: the data step appends the rows a model server kept inputs for to the train
split only, records the counts, and reads the labels from a local folder or from object storage (a real S3
API: moto's standalone server on loopback)."""

from __future__ import annotations

import json

import boto3
import numpy as np
import pytest

from pillars.components.data.feedback import S3FeedbackObjects, feedback_examples, feedback_store
from pillars.components.data.prepare import PrepareParams, prepare
from pillars.components.data.splits import lineage_tags
from pillars.components.errors import ConfigError, DataError
from pillars.serving.monitoring.feedback import FeedbackLog, PredictionMemory

MODEL = "bc-feedback"


@pytest.fixture(scope="module")
def base():
    """breast_cancer prepared without feedback: the splits feedback is added to."""
    return prepare(PrepareParams(task="breast_cancer"))


def _label(log: FeedbackLog, memory: PredictionMemory, x: np.ndarray, labels: list[str], start: int = 0) -> None:
    """Serve ``x`` one row per request id (remembered with its inputs) and label each; one unknown id too."""
    for i, row in enumerate(x):
        memory.remember(f"r{start + i}", "1", np.array([0]), {"input-0": row[None, :]})
    body = {"labels": [{"id": f"r{start + i}", "label": label} for i, label in enumerate(labels)]
            + [{"id": f"forgotten-{start}", "label": labels[0]}]}
    log.record(body, memory)


def test_feedback_rows_join_the_train_split_only_and_are_counted(base, tmp_path):
    classes = base.metadata["prep"]["classes"]
    x = base.splits["test"]["input-0"][:12]  # rows the server saw; their labels flipped, to be told apart
    labels = [classes[1 - int(y)] for y in base.splits["test"]["label"][:12]]
    log = FeedbackLog(MODEL, tmp_path / "labels", "classification", classes, max_labels=100, max_batch=50)
    _label(log, PredictionMemory(100), x, labels)

    data = prepare(PrepareParams(task="breast_cancer", model_name=MODEL, feedback=str(tmp_path / "labels")))
    train, before = data.splits["train"], base.splits["train"]
    assert len(train["label"]) == len(before["label"]) + 12
    np.testing.assert_array_equal(train["input-0"][-12:], x)
    np.testing.assert_array_equal(train["label"][-12:], [classes.index(c) for c in labels])
    for split in ("val", "test"):  # the gate judges on the task's own rows
        np.testing.assert_array_equal(data.splits[split]["input-0"], base.splits[split]["input-0"])
    meta = data.metadata
    assert meta["feedback"] == {"source": str(tmp_path / "labels"), "rows": 12, "without_inputs": 1}
    assert meta["split_rows"]["train"] == base.metadata["split_rows"]["train"] + 12
    assert meta["data_hash"] != base.metadata["data_hash"]
    tags = lineage_tags(meta)
    assert (tags["pillars.feedback_rows"], tags["pillars.feedback_without_inputs"]) == ("12", "1")


def test_no_labels_yet_adds_nothing_and_says_so_in_the_counts(base, tmp_path):
    data = prepare(PrepareParams(task="breast_cancer", model_name=MODEL, feedback=str(tmp_path / "empty")))
    assert data.metadata["feedback"]["rows"] == 0
    assert data.metadata["split_rows"] == base.metadata["split_rows"]
    assert data.metadata["data_hash"] == base.metadata["data_hash"]


def test_bad_feedback_is_refused_naming_the_line_or_the_setting(tmp_path):
    store = tmp_path / f"{MODEL}.jsonl"
    store.write_text(json.dumps({"id": "a", "labels": ["neither"], "inputs": {"input-0": [[0.0] * 30]}}) + "\n")
    with pytest.raises(DataError, match=rf"{MODEL}.jsonl:1: label 'neither' is not one of the classes"):
        prepare(PrepareParams(task="breast_cancer", model_name=MODEL, feedback=str(tmp_path)))
    store.write_text(json.dumps({"id": "a", "labels": [1.0], "inputs": {"input-0": [[0.0] * 7]}}) + "\n")
    with pytest.raises(DataError, match=r"input 'input-0' has rows of shape \[7\], the train split's are \[10\]"):
        prepare(PrepareParams(task="diabetes", model_name=MODEL, feedback=str(tmp_path)))
    with pytest.raises(ConfigError, match="names no bucket"):
        PrepareParams(task="breast_cancer", feedback="s3:///labels")
    with pytest.raises(ConfigError, match="need engine=pandas"):
        PrepareParams(task="breast_cancer", feedback=str(tmp_path), engine="spark")


def test_labels_in_object_storage_are_one_object_per_batch_read_back_after_a_restart(base, s3_env, tmp_path):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="labels")
    classes = base.metadata["prep"]["classes"]
    x, y = base.splits["test"]["input-0"][:10], base.splits["test"]["label"][:10]
    location = "s3://labels/prod"
    log = FeedbackLog(MODEL, location, "classification", classes, max_labels=100, max_batch=50)
    assert isinstance(log.store, S3FeedbackObjects)
    memory = PredictionMemory(100)
    _label(log, memory, x[:6], [classes[int(v)] for v in y[:6]])
    _label(log, memory, x[6:], [classes[int(v)] for v in y[6:]], start=6)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="labels", Prefix=f"prod/{MODEL}/")["Contents"]]
    assert len(keys) == 2 and all(k.endswith(".jsonl") for k in keys)

    restarted = FeedbackLog(MODEL, location, "classification", classes, max_labels=100, max_batch=50)
    assert restarted.labels == log.labels == 12  # 10 rows and 2 unknown ids: nothing lost
    assert restarted.record({"labels": [{"id": "r0", "label": 0}]}, memory).duplicates == 1

    rows = feedback_examples(feedback_store(location, MODEL), ["input-0"], "label", classes)
    assert (rows.rows, rows.without_inputs) == (10, 2)
    np.testing.assert_array_equal(rows.examples["input-0"], x)
    np.testing.assert_array_equal(rows.examples["label"], y)
    data = prepare(PrepareParams(task="breast_cancer", model_name=MODEL, feedback=location))
    assert data.metadata["feedback"] == {"source": location, "rows": 10, "without_inputs": 2}
