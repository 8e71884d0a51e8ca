"""A batch's rows waiting for their transaction: learnt first, written after (outside the
learning), kept when the write fails so that a later transaction writes them too."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import pyarrow as pa

from opstrata.plugins.mlops.results import WindowDrift

__all__ = ["PendingRows"]

MAX_ROWS = 1_000_000
MAX_BYTES = 64 << 20
"""Predictions and labels kept while writes fail: past either cap the oldest batches' rows go,
whole (counted in ``dropped``); the newest batch's are always kept. Closed drift windows are few
(one per model version and window) and are always kept."""


@dataclass
class _Rows:
    seq: int
    predictions: list[pa.Table]
    labels: list[pa.Table]
    rows: int
    nbytes: int


@dataclass
class PendingRows:
    max_rows: int = MAX_ROWS
    max_bytes: int = MAX_BYTES
    history: list[WindowDrift] = field(default_factory=list)
    seq: int = -1
    """The last batch whose rows are here (the progress mark moves to it when written)."""
    batches: int = 0
    """Batches learnt since the last write (those whose rows were dropped too)."""
    rows: int = 0
    nbytes: int = 0
    dropped: int = 0
    """Predictions and labels let go past the caps (since the consumer started)."""
    _kept: deque[_Rows] = field(default_factory=deque)
    """Per batch, oldest first: a cap drops whole batches, predictions and labels together."""

    def add(
        self,
        seq: int,
        predictions: list[pa.Table],
        labels: list[pa.Table],
        history: list[WindowDrift],
    ) -> None:
        self.seq = seq
        self.batches += 1
        self.history += history
        if predictions or labels:
            tables = predictions + labels
            kept = _Rows(
                seq,
                predictions,
                labels,
                sum(t.num_rows for t in tables),
                sum(t.nbytes for t in tables),
            )
            self._kept.append(kept)
            self.rows += kept.rows
            self.nbytes += kept.nbytes
        while (self.rows > self.max_rows or self.nbytes > self.max_bytes) and len(self._kept) > 1:
            oldest = self._kept.popleft()
            self.rows -= oldest.rows
            self.nbytes -= oldest.nbytes
            self.dropped += oldest.rows

    @property
    def predictions(self) -> list[pa.Table]:
        return [t for kept in self._kept for t in kept.predictions]

    @property
    def labels(self) -> list[pa.Table]:
        return [t for kept in self._kept for t in kept.labels]

    def __bool__(self) -> bool:
        return self.batches > 0

    def clear(self) -> None:
        self._kept.clear()
        self.history = []
        self.batches = self.rows = self.nbytes = 0
