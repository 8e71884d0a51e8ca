"""Which spans of a group of committed batches can be LLM calls, and those rows as one chunk.

The span decoders mark them already: every batch they make carries the rows of spans with a key
of an LLM convention (schema metadata ``opstrata.llm_rows``, see ``otlp/decode_traces.py``), so
a batch without any is dropped as it arrives and the others need no key lookup at all. Batches
without the mark (read back from the store after a restart, or made by other code) are scanned
as before: one Arrow lookup of every attribute key of the group (:func:`.recognise.candidate_rows`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from opstrata.otlp.decode_traces import LLM_ROWS
from opstrata.plugins.llmops.recognise import SPAN_COLUMNS, candidate_rows

__all__ = ["Kept", "Picked", "hinted_rows", "pick_spans"]

_NONE = np.zeros(0, dtype=np.int64)


def hinted_rows(batch: pa.RecordBatch) -> np.ndarray | None:
    """The rows the decoder marked as carrying an LLM key (maybe none), or ``None`` when the
    batch has no mark and must be scanned."""
    metadata = batch.schema.metadata
    if not metadata:
        return None
    rows = metadata.get(LLM_ROWS)
    if rows is None:
        return None
    return np.frombuffer(rows, dtype=np.int32) if rows else _NONE


Kept = tuple[pa.RecordBatch, "np.ndarray | None"]
"""A committed span batch and its marked rows (``None``: not marked, to be scanned)."""


@dataclass(frozen=True, slots=True)
class Picked:
    """The candidate rows of a group: their :data:`.recognise.SPAN_COLUMNS` as one chunk, and
    for each row the batch (index into the group) and row within it that it came from."""

    columns: pa.Table
    batch: np.ndarray
    row: np.ndarray
    batches: list[pa.RecordBatch]


def _join(batches: list[pa.RecordBatch]) -> pa.Table:
    """The batches as one table, a chunk each (no copy)."""
    try:
        return pa.Table.from_batches(batches)
    except pa.ArrowInvalid:  # batches read back from the store may differ in field metadata
        return pa.concat_tables(
            [pa.Table.from_batches([b]) for b in batches], promote_options="permissive"
        )


def _scan(kept: list[Kept]) -> list[Kept]:
    """The unmarked batches' candidate rows, found with one lookup over all of them."""
    unmarked = [i for i, (_, rows) in enumerate(kept) if rows is None]
    if not unmarked:
        return kept
    out = list(kept)
    for i in unmarked:
        out[i] = (kept[i][0], _NONE)
    batches = [kept[i][0] for i in unmarked]
    rows = candidate_rows(_join(batches), "SpanAttributes")
    if rows is None:
        return out
    ends = np.cumsum([b.num_rows for b in batches])
    owner = np.searchsorted(ends, rows, side="right")
    for j in np.unique(owner):
        start = int(ends[j]) - batches[j].num_rows
        out[unmarked[int(j)]] = (batches[j], rows[owner == j] - start)
    return out


def pick_spans(kept: list[Kept]) -> Picked | None:
    """The candidate rows of the kept span batches (``None``: there are none). Taken column by
    column from the batches that have any (a take over a table costs about twice the sum of its
    columns' takes, and a take per batch far more); all of every batch (the LLM-only service)
    is not taken at all, only joined."""
    kept = [(b, r) for b, r in _scan(kept) if len(r)]
    if not kept:
        return None
    sizes = np.array([len(r) for _, r in kept])
    batch = np.repeat(np.arange(len(kept)), sizes)
    row = np.concatenate([r for _, r in kept]).astype(np.int64)
    # Selected after joining: a select per batch costs more than the join.
    table = _join([b for b, _ in kept]).select(SPAN_COLUMNS)
    whole = all(len(r) == b.num_rows for b, r in kept)  # then rows are 0..n-1 in each
    if whole:
        columns = [table.column(c).combine_chunks() for c in SPAN_COLUMNS]
    else:
        starts = np.cumsum([0] + [b.num_rows for b, _ in kept[:-1]])
        at = pa.array(row + starts[batch])
        columns = [_take(table.column(c), at) for c in SPAN_COLUMNS]
    picked = pa.table(columns, names=SPAN_COLUMNS)
    return Picked(picked, batch, row, [b for b, _ in kept])


def _take(values: pa.ChunkedArray, at: pa.Array) -> pa.Array:
    """``values`` at ``at`` as one chunk. A list column (the span events) whose chunks hold no
    item at all, as most spans' events, is made empty instead: a take of a nested column first
    joins its chunks, ~1.3 ms for 290 batches, and counting their items costs ~0.1 ms."""
    if pa.types.is_list(values.type) and not any(len(c.values) for c in values.chunks):
        offsets = pa.array(np.zeros(len(at) + 1, dtype=np.int32))
        return pa.ListArray.from_arrays(
            offsets, pa.array([], values.type.value_type), type=values.type
        )
    return _one(values.take(at))


def _one(values: pa.ChunkedArray) -> pa.Array:
    return values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
