"""Training that streams: the epoch loop of :func:`pillars.components.training.fit.fit` over Parquet shards
(:mod:`pillars.components.data.shards`) read through ``pyarrow.dataset``, so memory does not grow with data.

:class:`ShardStream` is a PyTorch ``IterableDataset`` of batches (the task's examples, ``batch_size`` rows):

- each rank reads its own shards (``files[rank::world]`` of the epoch's file order) and stops after the
  same number of batches as the rank with the fewest rows (read from the Parquet footers), so DDP's
  collectives never wait on a rank that has run out;
- rows are shuffled in a bounded buffer of ``shuffle_rows`` rows: the buffer fills, is permuted by a
  generator seeded with ``seed + epoch``, and is emitted in batches; when the buffer is smaller than a
  rank's rows, the shard order is permuted per epoch too (from the same seed);
- memory: the buffer, one Arrow record batch and the model; the validation pass keeps the model's outputs
  (never the inputs) to score the whole split like the in-memory path.

Equivalence with the in-memory path (tested): in one process, with ``shuffle_rows`` at least the train
split's rows, the stream's order is ``torch.randperm(rows, seed + epoch)`` of the rows in shard order,
which is :func:`fit`'s order over the same rows loaded with
:func:`pillars.components.data.shards.load_examples`; the same weights, losses and history follow. Under
DDP the two paths deal rows to ranks differently (shards here, an interleaved permutation in memory).

The epoch loop, and so the checkpoints (same fingerprint, one per epoch), are :func:`fit`'s; since every order derives from
``seed + epoch``, a resumed run continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import IterableDataset

from pillars.components.data.shards import (
    arrays_of,
    check_same_schema,
    columns_of,
    example_batches,
    examples_of,
    record_batches,
    shard_files,
    split_rows,
)
from pillars.components.data.splits import inputs_of, task_of
from pillars.components.task import Examples, Preprocessing, Task
from pillars.components.training.fit import EVAL_BATCH, TrainParams, TrainResult, placement, train_epochs

logger = logging.getLogger(__name__)

SHUFFLE_ROWS = 200_000
"""Default rows of the shuffle buffer (about 26 MB at 32 float32 features)."""
READ_ROWS = 16_384
"""Rows per Arrow record batch read from a shard."""


class ShardStream(IterableDataset):
    """Batches of a split's shards as ``(x [n, F] float32, y [n])`` numpy pairs (see the module docstring).

    Args:
        files: the split's Parquet files (:func:`pillars.components.data.shards.shard_files`).
        table: the metadata's ``table`` entry.
        batch_size: rows per batch.
        seed: the run's seed; each epoch's orders derive from ``seed + epoch``.
        shuffle_rows: the shuffle buffer's rows; 0 reads in shard order without shuffling.
        rank, world: this process's rank and the number of processes.
    """

    def __init__(self, files: Sequence[str | Path], table: Mapping[str, Any], batch_size: int, seed: int = 0,
                 shuffle_rows: int = SHUFFLE_ROWS, rank: int = 0, world: int = 1) -> None:
        super().__init__()
        self.files = [str(f) for f in files]
        check_same_schema(self.files)
        self.rows = split_rows(self.files)
        self.table = dict(table)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle_rows = shuffle_rows
        self.rank, self.world = rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose orders the next iteration uses."""
        self.epoch = epoch

    def _file_order(self) -> list[int]:
        order = list(range(len(self.files)))
        if self.shuffle_rows and self.shuffle_rows < sum(self.rows) // self.world:
            order = np.random.default_rng(self.seed + self.epoch).permutation(len(self.files)).tolist()
        return order

    def rank_files(self, rank: int | None = None) -> list[int]:
        """Indexes of the files ``rank`` (default: this one) reads this epoch."""
        return self._file_order()[self.rank if rank is None else rank::self.world]

    def batches_per_epoch(self) -> int:
        """Batches every rank yields this epoch: those of the rank with the fewest rows."""
        per_rank = [sum(self.rows[i] for i in self.rank_files(r)) for r in range(self.world)]
        return min(math.ceil(rows / self.batch_size) for rows in per_rank)

    def rank_rows(self) -> int:
        """Rows this rank trains on this epoch (its files' rows, capped to the common batch count)."""
        rows = sum(self.rows[i] for i in self.rank_files())
        return min(rows, self.batches_per_epoch() * self.batch_size)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        files = [self.files[i] for i in self.rank_files()]
        limit = self.batches_per_epoch()
        if not files or limit == 0:
            return
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        emitted = 0
        for x, y in self._chunks(files, generator):
            for start in range(0, len(x), self.batch_size):
                if emitted == limit:
                    return
                yield x[start:start + self.batch_size], y[start:start + self.batch_size]
                emitted += 1

    def _chunks(self, files: list[str], generator: torch.Generator) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The rows in buffers of ``shuffle_rows`` (a multiple of the batch size), each permuted; the rest of a
        buffer that does not fill a batch is carried into the next one."""
        rows = sum(self.rows[i] for i in self.rank_files())
        if not self.shuffle_rows:
            capacity = READ_ROWS
        elif self.shuffle_rows >= rows:
            capacity = rows  # one buffer: a permutation of all the rank's rows
        else:
            capacity = max(self.shuffle_rows // self.batch_size, 1) * self.batch_size
        xs: list[np.ndarray] = []
        ys: list[np.ndarray] = []
        held = 0
        read = min(READ_ROWS, capacity)
        for batch in record_batches(files, columns_of(self.table), read):
            x, y = arrays_of(batch, self.table)
            xs.append(x)
            ys.append(y)
            held += len(x)
            if held >= capacity:
                x_all, y_all = np.concatenate(xs), np.concatenate(ys)
                yield self._permuted(x_all[:capacity], y_all[:capacity], generator)
                xs, ys, held = [x_all[capacity:]], [y_all[capacity:]], len(x_all) - capacity
        if held:
            yield self._permuted(np.concatenate(xs), np.concatenate(ys), generator)

    def _permuted(self, x: np.ndarray, y: np.ndarray, generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
        if not self.shuffle_rows:
            return x, y
        order = torch.randperm(len(x), generator=generator).numpy()
        return x[order], y[order]


def _encode(task: Task, prep: Preprocessing, examples: Examples, device: torch.device
            ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    encoded = task.encode(inputs_of(task, prep, examples), prep)
    return {k: v.to(device) for k, v in encoded.items()}, task.targets(examples, prep).to(device)


def fit_stream(
    train_dir: str | Path,
    val_dir: str | Path,
    metadata: dict[str, Any],
    params: TrainParams,
    checkpoint_dir: str | Path | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool | None = None,
    initial_state: dict[str, torch.Tensor] | None = None,
    shuffle_rows: int = SHUFFLE_ROWS,
) -> TrainResult:
    """:func:`pillars.components.training.fit.fit` over the shards of ``train_dir`` and ``val_dir``: the same
    epoch loop (:func:`~pillars.components.training.fit.train_epochs`), fed by a :class:`ShardStream`.

    Args:
        train_dir, val_dir: split folders of Parquet shards; ``metadata["table"]`` says how rows become examples.
        shuffle_rows: rows of the shuffle buffer (see :class:`ShardStream`).
        the rest: as :func:`fit`.
    """
    rank, world, device = placement(params)
    task = task_of(metadata)
    prep = metadata["prep"]
    table = metadata["table"]
    stream = ShardStream(shard_files(train_dir), table, params.batch_size, params.seed, shuffle_rows, rank, world)
    val_files = shard_files(val_dir)

    def batches(epoch: int) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        stream.set_epoch(epoch)
        for x, y in stream:
            yield _encode(task, prep, examples_of(x, y, table), device)

    return train_epochs(task, metadata, params, (rank, world, device), batches,
                        lambda model, amp_dtype: validate_stream(task, model, prep, val_files, table, amp_dtype,
                                                                 device),
                        checkpoint_dir, on_epoch, progress, initial_state)


@torch.no_grad()
def validate_stream(task: Task, model: nn.Module, prep: Preprocessing, files: Sequence[str | Path],
                    table: Mapping[str, Any], amp_dtype: torch.dtype | None, device: torch.device
                    ) -> dict[str, float]:
    """``val_loss`` and the task's ``val_<metric>`` over shards read in order, :data:`EVAL_BATCH` rows at a time
    (the model's outputs and the targets are kept; the inputs are not)."""
    model.eval()
    rows = sum(split_rows(files))
    head = y = torch.empty(0)
    done = 0
    # The outputs go into tensors allocated once for the whole split: appending one small tensor per batch
    # leaves them between the freed batches and the allocator cannot give that memory back (RSS grew with
    # the split's size, measured).
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        for examples in example_batches(files, table, EVAL_BATCH):
            inputs, targets = _encode(task, prep, examples, device)
            out = model(**inputs).float()
            if done == 0:
                head = torch.empty((rows, *out.shape[1:]), dtype=out.dtype, device=device)
                y = torch.empty((rows, *targets.shape[1:]), dtype=targets.dtype, device=device)
            head[done:done + len(out)] = out
            y[done:done + len(out)] = targets
            done += len(out)
    head, y = head[:done], y[:done]
    metrics = {"val_loss": float(task.loss(head, y))}
    metrics.update({f"val_{k}": float(v) for k, v in task.batch_metrics(head, y).items()})
    return metrics
