"""Training that streams Parquet shards (:mod:`pillars.components.training.stream`): the same model as the
in-memory path on the same rows, rank sharding with equal batch counts, a bounded shuffle seeded per
epoch, and a resume that continues exactly."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from pillars.components.data.shards import ROW_HASH, load_examples, shard_files
from pillars.components.training.checkpoints import CHECKPOINT
from pillars.components.training.fit import TrainParams, fit
from pillars.components.training.stream import ShardStream, fit_stream
from tests.components.tables import prepared_table


def _state_equal(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("task", ["tabular_classification", "tabular_regression"])
def test_streaming_trains_the_same_model_as_the_in_memory_path_on_the_same_rows(tmp_path, task):
    metadata, out = prepared_table(tmp_path, task=task)
    params = TrainParams(epochs=4, batch_size=64, seed=3, patience=10)
    in_memory = fit(load_examples(out / "train", metadata["table"]), load_examples(out / "val", metadata["table"]),
                    metadata, params)
    streamed = fit_stream(out / "train", out / "val", metadata, params, shuffle_rows=10**6)
    assert [h["epoch"] for h in streamed.history] == [1, 2, 3, 4]
    for a, b in zip(in_memory.history, streamed.history):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-7)
    _state_equal(in_memory.model, streamed.model)
    assert streamed.history[-1]["train_loss"] < streamed.history[0]["train_loss"]


def _shards(folder: Path, sizes: list[int]) -> list[Path]:
    folder.mkdir()
    start = 0
    for i, n in enumerate(sizes):
        ids = np.arange(start, start + n)
        pq.write_table(pd.DataFrame({"f0": ids.astype(np.float32), "label": ids, ROW_HASH: ids}).pipe(
            lambda f: __import__("pyarrow").Table.from_pandas(f, preserve_index=False)), folder / f"part-{i}.parquet")
        start += n
    return shard_files(folder)


TABLE = {"input": "input-0", "target": "label", "input_shape": [1], "feature_names": ["a"]}


def test_each_rank_reads_its_own_shards_and_all_stop_after_the_same_number_of_batches(tmp_path):
    files = _shards(tmp_path / "split", [100, 250, 70, 180, 90])
    ranks = [ShardStream(files, TABLE, batch_size=32, seed=0, shuffle_rows=64, rank=r, world=2) for r in range(2)]
    for epoch in (1, 2):
        seen = []
        for stream in ranks:
            stream.set_epoch(epoch)
            batches = list(stream)
            assert len(batches) == stream.batches_per_epoch()
            rows = np.concatenate([y for _, y in batches])
            assert len(rows) == stream.rank_rows() and len(set(rows.tolist())) == len(rows)
            own = set().union(*(set(range(sum([100, 250, 70, 180, 90][:i]), sum([100, 250, 70, 180, 90][:i + 1])))
                                for i in stream.rank_files()))
            assert set(rows.tolist()) <= own  # only rows of its own shards
            seen.append(set(rows.tolist()))
        assert not seen[0] & seen[1]
        assert len({ranks[0].batches_per_epoch(), ranks[1].batches_per_epoch()}) == 1


def test_the_bounded_shuffle_is_seeded_by_epoch_and_never_holds_more_than_its_buffer(tmp_path):
    files = _shards(tmp_path / "split", [300, 300, 300])
    stream = ShardStream(files, TABLE, batch_size=20, seed=5, shuffle_rows=100)
    stream.set_epoch(1)
    first = np.concatenate([y for _, y in stream])
    again = np.concatenate([y for _, y in stream])
    stream.set_epoch(2)
    second = np.concatenate([y for _, y in stream])
    np.testing.assert_array_equal(first, again)
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(900))
    assert (first != second).any()
    # a buffer of 100 rows: every 100 consecutive rows emitted come from within one 100-row window of the read
    # order, so the shuffle is local (bounded), not global
    windows = [set(first[i:i + 100].tolist()) for i in range(0, 900, 100)]
    assert all(max(w) - min(w) < 300 for w in windows)


def test_a_stopped_streaming_run_resumes_to_the_same_model(tmp_path):
    metadata, out = prepared_table(tmp_path, rows=1500)
    params = TrainParams(epochs=4, batch_size=64, seed=2, patience=10)
    whole = fit_stream(out / "train", out / "val", metadata, params, shuffle_rows=256)

    class Stop(Exception):
        pass

    def stop_after_two(epoch: int, metrics: dict) -> None:
        if epoch == 2:
            raise Stop

    ckpt = tmp_path / "ckpt"
    with pytest.raises(Stop):
        fit_stream(out / "train", out / "val", metadata, params, ckpt, on_epoch=stop_after_two, shuffle_rows=256)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the checkpoint of epoch 2 is written on a background thread
        path = ckpt / CHECKPOINT
        if path.is_file() and torch.load(path, weights_only=True)["epoch"] == 2:
            break
        time.sleep(0.05)
    resumed = fit_stream(out / "train", out / "val", metadata, params, ckpt, shuffle_rows=256)
    assert resumed.start_epoch == 3
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    _state_equal(whole.model, resumed.model)
