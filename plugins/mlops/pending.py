"""A batch's rows waiting for their transaction: learnt first, written after (outside the
learning), kept when the write fails so that the next batch's transaction writes them too."""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from opstrata.plugins.mlops.results import WindowDrift

__all__ = ["PendingRows"]

MAX_ROWS = 1_000_000
"""Predictions and labels kept while writes fail; past it the oldest go (counted). Closed drift
windows are few (one per model version and window) and are always kept."""


@dataclass
class PendingRows:
    predictions: list[pa.Table] = field(default_factory=list)
    labels: list[pa.Table] = field(default_factory=list)
    history: list[WindowDrift] = field(default_factory=list)
    seq: int = -1
    """The last batch whose rows are here (the progress mark moves to it when written)."""
    batches: int = 0
    rows: int = 0
    dropped: int = 0
    """Predictions and labels let go past :data:`MAX_ROWS` (since the consumer started)."""

    def add(
        self,
        seq: int,
        predictions: list[pa.Table],
        labels: list[pa.Table],
        history: list[WindowDrift],
    ) -> None:
        self.seq = seq
        self.batches += 1
        self.predictions += predictions
        self.labels += labels
        self.history += history
        self.rows += sum(t.num_rows for t in predictions) + sum(t.num_rows for t in labels)
        while self.rows > MAX_ROWS and (self.predictions or self.labels):
            older = self.predictions if self.predictions else self.labels
            self.rows -= older[0].num_rows
            self.dropped += older.pop(0).num_rows

    def __bool__(self) -> bool:
        return self.batches > 0

    def clear(self) -> None:
        self.predictions, self.labels, self.history = [], [], []
        self.batches = self.rows = 0
