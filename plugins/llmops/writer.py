"""Writes calls and messages to the plugin's tables in groups, exactly once per batch.

A DuckDB commit costs milliseconds whatever its size, so calls are buffered and written at most
every ``flush_seconds`` (or when ``flush_rows`` are waiting), by the consumer's thread or, when
no batch comes, by a small flusher thread. The last batch (``seq``) whose calls are stored is
recorded in the same transaction: in the calls' own ``Seq`` column when the write has calls
(an UPDATE of ``llmops_progress`` is one more statement, ~0.7-0.9 ms a write whatever its size),
else in ``llmops_progress``. After a crash the kernel resumes after its own
offset, which may be past batches whose calls were still buffered: the consumer then reads those
batches again from the store (``backfill``), and skips batches it has already stored, so every
call is stored once.

Messages taken from spans are stored as compressed blocks (:mod:`.blocks`), the calls noting
their block; messages from log events as rows. Each write appends its calls' partial sums to
``llmops_rollup`` and ``llmops_sketch``; the writer's thread merges the partial rows of the
hours written lately every ``COMPACT_SECONDS`` (or sooner when many are waiting), and all of
them once at start-up (:func:`.rollup.compact`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from opstrata.plugins.llmops.blocks import BLOCKS_TABLE, pack
from opstrata.plugins.llmops.dims import ROWS_TABLE, Pending, dims_of, insert_calls
from opstrata.plugins.llmops.recognise import CALLS
from opstrata.plugins.llmops.span_parts import MESSAGES
from opstrata.plugins.llmops.store import (
    MESSAGES_TABLE,
    PROGRESS_TABLE,
    compact,
    cursor_of,
    roll_up,
    transaction,
)

__all__ = ["COMPACT_ROWS", "COMPACT_SECONDS", "CallWriter"]

log = logging.getLogger(__name__)
_SPAN = pa.scalar("span", pa.string())

COMPACT_SECONDS = 60.0
"""Partial rollup rows are merged this often (wall clock) ..."""
COMPACT_ROWS = 20_000
"""... or once this many partial rows were appended since the last merge: a merge reads and
rewrites the rows of the hours and days written since, which costs a few ms, so it is not done
per write. Counted in partial rows, not calls: a write appends one row per hour, day and group
(service, provider, model, operation) it touches, however many calls it holds, and the rows are
what a merge and the readers go through. Counted in calls, a merge (15-27 ms of CPU) ran every
10 s at 2,000 calls/s and every second at 20,000: ~3 % of the plugin's CPU at 10 % LLM spans
of 20,000 spans/s; counted in rows, the 60 s timer sets the pace unless writes touch
thousands of groups."""


class CallWriter:
    def __init__(
        self,
        store: Any,
        name: str,
        flush_seconds: float = 0.5,
        flush_rows: int = 50_000,
        before_flush: Callable[[], None] | None = None,
    ) -> None:
        self.before_flush = before_flush
        self.store = store
        self.name = name
        self.flush_seconds = flush_seconds
        self.flush_rows = flush_rows
        self._lock = threading.Lock()
        self._calls: list[pa.Table] = []
        self._messages: list[pa.Table] = []
        self._rows = 0
        self._pending_seq = 0
        self._first_at = 0.0
        self._stop = threading.Event()
        self._wake = threading.Event()  # a group is due: look now, not at the next tick
        self._thread: threading.Thread | None = None
        self._progress_row = False  # whether llmops_progress has this writer's row
        self.stored_seq = self._read_progress()
        self._next_block = self._read_last_block() + 1
        self._dims = dims_of(store, cursor_of(store))
        self._dirty_from: int | None = None  # earliest call time written since the last merge
        self._written = 0  # partial rollup rows appended since the last merge
        self._compacted_at = time.monotonic()
        self.compact(everything=True)  # a previous run may have stopped before merging

    def _read_progress(self) -> int | None:
        """The last batch stored: in ``llmops_progress`` (a write without calls) or in the
        calls' ``Seq`` (a write with calls records it there, one statement fewer), whichever
        is later; batches come in increasing order. One writer of calls per store."""
        # fetchall, not fetchone: the cursor is the thread's, shared with the kernel's reads,
        # and an unfinished result would block them.
        cursor = cursor_of(self.store)
        rows = cursor.execute(
            f'SELECT "Seq" FROM {PROGRESS_TABLE} WHERE "Consumer" = ?', [self.name]
        ).fetchall()
        self._progress_row = bool(rows)
        in_calls = cursor.execute(f'SELECT max("Seq") FROM {ROWS_TABLE}').fetchall()[0][0]
        found = [int(v) for v in (rows[0][0] if rows else None, in_calls) if v is not None]
        return max(found) if found else None

    def _read_last_block(self) -> int:
        rows = (
            cursor_of(self.store)
            .execute(f'SELECT coalesce(max("Block"), 0) FROM {BLOCKS_TABLE}')
            .fetchall()
        )
        return int(rows[0][0])

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="llmops-writer", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Have the thread call ``before_flush`` now (a group of batches is due)."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)
        self.flush()  # partial rollup rows left are merged at the next start

    def compact(self, everything: bool = False) -> int:
        """Merge the partial rollup rows written since the last merge (``everything``: all of
        them); returns how many rows it removed."""
        with self._lock:
            since = self._dirty_from
            self._compacted_at = time.monotonic()
            if since is None and not everything:
                return 0
            cursor = cursor_of(self.store)
            with transaction(cursor):
                removed = compact(cursor, None if everything else since)
            self._dirty_from, self._written = None, 0
            return removed

    def add(self, seq: int, calls: pa.Table | None, messages: pa.Table | None) -> None:
        with self._lock:
            if calls is not None and calls.num_rows:
                self._calls.append(calls)
                self._rows += calls.num_rows
            if messages is not None and messages.num_rows:
                self._messages.append(messages)
            if not self._first_at:
                self._first_at = time.monotonic()
            self._pending_seq = seq
            due = (
                self._rows >= self.flush_rows
                or time.monotonic() - self._first_at >= 4 * self.flush_seconds
            )
        if due:
            self.flush()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_seconds / 4)
            self._wake.clear()
            if self._stop.is_set():
                return
            if self.before_flush is not None:
                try:
                    self.before_flush()
                except Exception:  # the consumer raises it on its next batch: counted there
                    log.exception("llmops: recognising waiting calls failed")
            with self._lock:
                due = self._first_at and time.monotonic() - self._first_at >= self.flush_seconds
            if due:
                try:
                    self.flush()
                except Exception:  # kept for the next try; the thread must not die
                    log.exception("llmops: writing calls failed")
            if self._written >= COMPACT_ROWS or (
                self._dirty_from is not None
                and time.monotonic() - self._compacted_at >= COMPACT_SECONDS
            ):
                try:
                    self.compact()
                except Exception:  # partial rows stay correct; merged on a later try
                    log.exception("llmops: merging rollup rows failed")

    def flush(self) -> None:
        with self._lock:
            if not self._first_at:
                return
            calls = pa.concat_tables(self._calls) if self._calls else CALLS.empty_table()
            messages = (
                pa.concat_tables(self._messages) if self._messages else MESSAGES.empty_table()
            )
            seq = self._pending_seq
            cursor = cursor_of(self.store)
            from_spans = pc.equal(messages.column("Source"), _SPAN)
            if pc.all(from_spans).as_py() is not False:  # the usual case: no filter (~1 ms)
                in_blocks, pending_rows = messages, MESSAGES.empty_table()
            else:
                in_blocks = messages.filter(from_spans)
                pending_rows = messages.filter(pc.invert(from_spans)).combine_chunks()
            pending_blocks, next_block = None, self._next_block
            if in_blocks.num_rows:
                pending_blocks, block_of = pack(in_blocks, calls, next_block)
                next_block += pending_blocks.num_rows
                calls = calls.append_column("MessageBlock", block_of)
            pending_calls = calls.combine_chunks()
            new_ids: Pending = {}
            with transaction(cursor):
                appended = 0
                if calls.num_rows:  # the calls' rows record seq: no progress statement
                    assigned = insert_calls(cursor, self._dims, pending_calls, seq)
                    new_ids = assigned.pending
                    appended = roll_up(cursor, pending_calls, assigned.groups)
                if pending_blocks is not None:
                    cursor.execute(f"INSERT INTO {BLOCKS_TABLE} SELECT * FROM pending_blocks")
                if pending_rows.num_rows:
                    cursor.execute(
                        f"INSERT INTO {MESSAGES_TABLE} BY NAME SELECT * FROM pending_rows"
                    )
                if not calls.num_rows and not self._progress_row:
                    cursor.execute(
                        f"INSERT OR REPLACE INTO {PROGRESS_TABLE} VALUES (?, ?)", [self.name, seq]
                    )
                elif not calls.num_rows:  # the row is there: an update costs less than an upsert
                    cursor.execute(
                        f'UPDATE {PROGRESS_TABLE} SET "Seq" = ? WHERE "Consumer" = ?',
                        [seq, self.name],
                    )
            if not calls.num_rows:
                self._progress_row = True
            self._dims.remember(new_ids)  # only now: a rolled-back id is never kept
            self._calls, self._messages, self._rows, self._first_at = [], [], 0, 0.0
            self.stored_seq, self._next_block = seq, next_block
            if calls.num_rows:
                first = pc.min(pending_calls.column("Timestamp")).value
                self._dirty_from = (
                    first if self._dirty_from is None else min(self._dirty_from, first)
                )
                self._written += appended
