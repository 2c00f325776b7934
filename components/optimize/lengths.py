"""Inputs of several lengths that a signature allows: how optimisation proves a variant keeps every
``-1`` dimension variable.

A test split is often padded to one length (every row of a token input ``[N, -1]`` is ``max_length``
long), so exporting and judging on it alone proves nothing about other lengths: the exporter bakes the
one length it saw into the graph, and the guard passes a variant that refuses every shorter request.
:func:`length_probes` makes copies of some rows with every ``-1`` axis of the signature's inputs cut
(or cycled) to a few lengths between 1 and ``max_length``; the exporter sees them all and the guard
scores the variant on each, beside the original.
"""

from __future__ import annotations

import numpy as np

from pillars.components.task import Examples, Signature


def variable_inputs(signature: Signature) -> dict[str, tuple[int, ...]]:
    """Per input with ``-1`` dimensions, those axes as axes of a batch (the batch axis is 0)."""
    return {spec.name: tuple(i + 1 for i, d in enumerate(spec.shape) if d == -1)
            for spec in signature.inputs if -1 in spec.shape}


def probe_lengths(signature: Signature) -> tuple[int, ...]:
    """The lengths probed: 1, the middle and ``max_length`` of the longest variable input (empty when no
    input has a ``-1`` dimension)."""
    longest = max((s.max_length for s in signature.inputs if -1 in s.shape), default=0)
    return tuple(sorted({1, max(1, longest // 2), longest})) if longest else ()


def _resized(array: np.ndarray, axes: tuple[int, ...], length: int) -> np.ndarray:
    """``array`` with each of ``axes`` cut to ``length`` values, or cycled up to it (values stay ones the
    data holds: token ids stay known ids)."""
    for axis in axes:
        if axis >= array.ndim or array.shape[axis] == 0:
            continue
        array = np.take(array, np.arange(length) % array.shape[axis], axis=axis)
    return array


def with_length(signature: Signature, examples: Examples, length: int) -> Examples:
    """``examples`` with every ``-1`` axis of the signature's inputs at ``length`` (capped at each
    input's ``max_length``); other columns (labels) unchanged."""
    variable = variable_inputs(signature)
    limits = {s.name: s.max_length for s in signature.inputs}
    return {name: _resized(np.asarray(values), variable[name], min(length, limits[name]))
            if name in variable else values for name, values in examples.items()}


def length_probes(signature: Signature, examples: Examples) -> dict[int, Examples]:
    """``examples`` at each of :func:`probe_lengths` (an empty dict when the signature has no ``-1``)."""
    return {length: with_length(signature, examples, length) for length in probe_lengths(signature)}
