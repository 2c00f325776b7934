"""A bounded memory of what a check of a request's declared header accepted, per signature object.

The contract's name/shape check (:func:`pillars.components.task.contract.check_declared`) and the wire-level
declaration check (:func:`pillars.serving.protocol.tensors.check_declared`) each keep one: their answers
depend only on the header and the signature, and a server sees the same few headers again and again.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

Answer = TypeVar("Answer")


class AcceptedMemo(Generic[Answer]):
    """What a check of a request's declared header accepted, remembered for one signature object: a server
    sees the same few headers again and again, and the answer depends only on them and the signature.

    The key (from the caller, None for a header that must always be checked in full) starts with
    ``id(signature)``; the signature object is kept with the answer and compared, so a reused id never
    returns another signature's answer. Only accepted answers are put (never None); a refused header is
    judged every time. At most ``kept`` answers, then all are forgotten at once: a client sending ever new
    headers costs the full check each time, as without the memory, and no more memory.
    """

    def __init__(self, kept: int) -> None:
        self.kept = kept
        self._answers: dict[tuple[Any, ...], tuple[object, Answer]] = {}

    def get(self, key: tuple[Any, ...] | None, signature: object) -> Answer | None:
        """The answer remembered for ``key`` and this very ``signature``, else None."""
        known = self._answers.get(key) if key is not None else None
        return known[1] if known is not None and known[0] is signature else None

    def put(self, key: tuple[Any, ...] | None, signature: object, answer: Answer) -> Answer:
        """Remember ``answer`` (unless ``key`` is None); returns it."""
        if key is not None:
            if len(self._answers) >= self.kept:
                self._answers.clear()
            self._answers[key] = (signature, answer)
        return answer

    def __len__(self) -> int:
        return len(self._answers)
