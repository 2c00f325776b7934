"""Row helpers for :data:`~pillars.components.task.Examples` (named arrays, one row per example)."""

from __future__ import annotations

import numpy as np

from pillars.components.task import Examples, Signature


def input_columns(signature: Signature, examples: Examples) -> Examples:
    """The columns of ``examples`` that are the model's inputs (a split also holds its targets)."""
    return {s.name: examples[s.name] for s in signature.inputs if s.name in examples}


def row_count(examples: Examples) -> int:
    """Rows of ``examples`` (0 when it has no column)."""
    return len(next(iter(examples.values()))) if examples else 0


def take(examples: Examples, index: np.ndarray | slice) -> Examples:
    """The rows ``index`` of every column."""
    return {k: v[index] for k, v in examples.items()}
