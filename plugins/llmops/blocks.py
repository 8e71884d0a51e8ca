"""The messages of span calls, stored as compressed blocks of rows (``llmops_message_blocks``).

A write's messages taken from spans (``Source`` "span": the GenAI JSON attributes, masked, and
the normalised forms) are stored as Arrow IPC streams compressed with zstd, up to
``BLOCK_ROWS`` rows and about ``BLOCK_BYTES`` of text a block, one BLOB per block, and each
call row notes its block (``llmops_calls.MessageBlock``). DuckDB's insert and commit of the
same rows cost ~5 µs a call (eight columns appended, then written again to the WAL); a block
costs ~0.6 µs a call to compress and ~1/5 of the bytes to insert. Messages are only read one
call at a time (the ``calls/{trace}/{span}`` detail), which then reads and unpacks one block:
~1 ms for 4,096 short rows; the byte bound keeps long messages from making it slow (4,096 calls
of ~8 KB messages made one 109 MB block, 280-500 ms to open one call). Messages from log events
(``Source`` "event") stay rows of ``llmops_messages``: they may belong to a call written
earlier, whose block is already stored.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from opstrata.plugins.llmops.dims import group_rows

__all__ = ["BLOCKS_TABLE", "BLOCK_BYTES", "BLOCK_ROWS", "blocks_ddl", "pack", "read_rows"]

BLOCKS_TABLE = "llmops_message_blocks"
BLOCK_ROWS = 4096
"""Rows per block at most: reading one call's messages unpacks its whole block."""
BLOCK_BYTES = 2 * 1024 * 1024
"""Text per block at most (a row longer than this is a block of its own)."""
_TEXT_COLUMNS = ("Messages", "System", "Input", "Output")
_OPTIONS = ipc.IpcWriteOptions(compression="zstd")
_BLOCKS = pa.schema([("Block", pa.int64()), ("Rows", pa.int64()), ("Data", pa.binary())])
_NO_BLOCK = pa.scalar(None, pa.int64())


def blocks_ddl() -> str:
    return f'CREATE TABLE IF NOT EXISTS {BLOCKS_TABLE} ("Block" BIGINT, "Rows" BIGINT, "Data" BLOB)'


def _key(table: pa.Table) -> pa.ChunkedArray:
    # Trace and span ids are fixed-size hex, so their concatenation is unambiguous.
    return pc.binary_join_element_wise(table.column("TraceId"), table.column("SpanId"), "")


def pack(messages: pa.Table, calls: pa.Table, first: int) -> tuple[pa.Table, pa.Array]:
    """The blocks of ``messages`` (span messages of ``calls``), numbered from ``first``, and
    each call's block (null: no stored messages)."""
    # Every block is written into one buffer, one IPC stream after another: the BLOB column is
    # that buffer and the streams' ends as offsets (no bytes object per block).
    sink = pa.BufferOutputStream()
    ends = [0]
    starts = _block_starts(messages)
    for start, stop in itertools.pairwise(starts):
        part = messages.slice(start, stop - start)
        with ipc.new_stream(sink, part.schema, options=_OPTIONS) as writer:
            writer.write_table(part)
        ends.append(sink.tell())
    count = len(ends) - 1
    data = pa.Array.from_buffers(
        pa.binary(), count, [None, pa.py_buffer(np.array(ends, np.int32)), sink.getvalue()]
    )
    rows = np.diff(starts)
    table = pa.table(
        {
            "Block": pa.array(np.arange(first, first + count, dtype=np.int64)),
            "Rows": pa.array(rows.astype(np.int64)),
            "Data": data,
        },
        schema=_BLOCKS,
    )
    if _same_calls(messages, calls):  # the usual case: a message row per call, in order
        index, found = np.arange(calls.num_rows), np.ones(calls.num_rows, dtype=bool)
    else:
        at = pc.index_in(_key(calls), value_set=_key(messages).combine_chunks())
        found = at.is_valid().to_numpy(zero_copy_only=False)
        index = at.fill_null(0).to_numpy(zero_copy_only=False)
    block = first + np.searchsorted(starts, index, side="right") - 1
    return table, pa.array(block.astype(np.int64), mask=~found)


def _same_calls(messages: pa.Table, calls: pa.Table) -> bool:
    """Whether row i of ``messages`` is call i's (then no key lookup: ~0.5 ms a write). A span
    sent twice in one write is two calls with one key; its rows are then matched by key, as
    before, so that both name the first one's block."""
    if messages.num_rows != calls.num_rows:
        return False
    span_ids = calls.column("SpanId")
    if not (
        span_ids.equals(messages.column("SpanId"))
        and calls.column("TraceId").equals(messages.column("TraceId"))
    ):
        return False
    # Distinct keys, found in C (``pc.count_distinct`` of the span ids took ~0.4 ms here).
    return len(group_rows(calls, ("TraceId", "SpanId"), values=False).first) == calls.num_rows


def _block_starts(messages: pa.Table) -> np.ndarray:
    """Where each block starts, and the end: at most ``BLOCK_ROWS`` rows and, unless one row is
    longer, ``BLOCK_BYTES`` of text a block."""
    rows = messages.num_rows
    if rows <= BLOCK_ROWS and _text_bytes(messages) <= BLOCK_BYTES:  # the usual case: one block
        return np.array([0, rows], np.int64)
    size = np.zeros(rows, np.int64)
    for name in _TEXT_COLUMNS:
        if name in messages.column_names:
            lengths = pc.binary_length(messages.column(name)).fill_null(0)
            size += lengths.to_numpy(zero_copy_only=False).astype(np.int64)
    before = np.concatenate(([0], np.cumsum(size)))  # text before each row, and in all
    starts = [0]
    while starts[-1] < rows:
        start = starts[-1]
        by_bytes = int(np.searchsorted(before, before[start] + BLOCK_BYTES, side="right")) - 1
        starts.append(min(start + BLOCK_ROWS, rows, max(by_bytes, start + 1)))
    return np.array(starts, np.int64)


def _text_bytes(messages: pa.Table) -> int:
    """The text of ``messages`` (at least), from each column's first and last offset: no pass
    over the rows (``_block_starts``' lengths cost ~0.2 ms a write whatever its size)."""
    total = 0
    for name in _TEXT_COLUMNS:
        if name not in messages.column_names:
            continue
        for chunk in messages.column(name).chunks:
            offsets = chunk.buffers()[1]
            if not len(chunk) or offsets is None:
                continue
            kind = np.dtype(np.int64 if pa.types.is_large_string(chunk.type) else np.int32)
            at = np.frombuffer(offsets, kind, len(chunk) + 1, chunk.offset * kind.itemsize)
            total += int(at[-1]) - int(at[0])
    return total


def read_rows(cursor: Any, block: int, trace_id: str, span_id: str) -> list[tuple]:
    """The stored message rows of one call in ``block``, as ``llmops_messages`` would give
    ``"Source", "Messages", "System", "Input", "Output"``."""
    found = cursor.execute(
        f'SELECT "Data" FROM {BLOCKS_TABLE} WHERE "Block" = ?', [block]
    ).fetchall()
    out: list[tuple] = []
    for (data,) in found:
        rows = ipc.open_stream(pa.py_buffer(data)).read_all()
        mine = pc.and_(
            pc.equal(rows.column("TraceId"), pa.scalar(trace_id, pa.string())),
            pc.equal(rows.column("SpanId"), pa.scalar(span_id, pa.string())),
        )
        picked = rows.filter(mine).sort_by("Timestamp")
        columns = [picked.column(c).to_pylist() for c in ("Source", "Messages", "System",
                                                           "Input", "Output")]  # fmt: skip
        out += list(zip(*columns, strict=True))
    return out
