"""Where each trace's rows are: a small side table that makes "one trace" a point lookup.

Without it, a trace by id scans every ``TraceId`` in ``otel_traces`` (~200 ms on 10 M spans here).
The index keeps, per trace id and signal, the range of row ids that hold its rows (with their
count) and the range of commit sequence numbers (``_Seq``). A ``rowid BETWEEN`` read fetches
just those rows. Row ids of appended rows do not change, but a checkpoint that compacts deleted
rows (retention) may move them: when the rows found fall short of the count, the read falls
back to ``_Seq`` — which grows in append order, so DuckDB's per-row-group min/max of ``_Seq``
still skips every row group but one or two.

It is built *beside* ingest, not on it: a thread runs :meth:`TraceIndex.catch_up` every second
and indexes what was committed since its last run with one ``INSERT … SELECT … GROUP BY`` per
signal, both in one transaction (none when there is nothing to index). Rows
committed after the last run are found by also scanning the unindexed tail (``_Seq >``
high-water mark), so answers never wait for the index. Nothing on the write path changes.

The key is the last 16 hex digits of the trace id as an integer (W3C puts the random part on
the right); collisions only cost a wider read, since queries still compare the full id.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import NamedTuple, Protocol

import duckdb

from opstrata.schema import Table
from opstrata.storage.duckdb_ddl import SEQ_COLUMN, physical

__all__ = ["INDEX_TABLE", "TraceIndex", "TraceLocation", "trace_key", "trace_key_sql"]

log = logging.getLogger(__name__)

INDEX_TABLE = "opstrata_trace_rows"
STATE_TABLE = "opstrata_trace_rows_state"
_SIGNALS = {Table.TRACES: 0, Table.LOGS: 1}


def trace_key(trace_id: str) -> int | None:
    """The index key of a hex trace id (what :func:`trace_key_sql` computes in SQL)."""
    try:
        return int(trace_id[-16:], 16) if len(trace_id) >= 16 else None
    except ValueError:
        return None


def trace_key_sql(ref: str) -> str:
    """SQL of the index key of a trace-id expression (a column name or ``?``)."""
    # The stored ids are 32 hex characters (the decoder writes them): their last 16 start at
    # the 17th byte. ``substr`` from there costs a third of ``right(…, 16)``, which walks the
    # string's UTF-8 from its end (0.16-0.28 against 0.04-0.07 µs a row, most of what the
    # catch-up's scan cost beside its grouping); ids of another length still take ``right``.
    last16 = f"CASE WHEN strlen({ref}) = 32 THEN substr({ref}, 17) ELSE right({ref}, 16) END"
    return f"TRY_CAST('0x' || {last16} AS UBIGINT)"


_ROW_KEY = trace_key_sql('"TraceId"')


class TraceLocation(NamedTuple):
    row_ranges: list[tuple[int, int]]
    expected_rows: int
    seq_ranges: list[tuple[int, int]]
    tail: int
    tail_empty: bool = False
    """Nothing was committed after the index (the store's last sequence is what it indexed):
    the tail need not be read. A write counts once the store says it is committed, which is
    before it is acknowledged, so every acknowledged span is still found."""


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


class _SeqSource(Protocol):
    def reader(self) -> duckdb.DuckDBPyConnection: ...

    def last_sequence(self) -> int: ...


class TraceIndex:
    """The trace-id → ``_Seq`` range index of one DuckDB store."""

    def __init__(self, store: _SeqSource, interval: float = 1.0) -> None:
        self.store = store
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ready = False
        self._lock = threading.Lock()
        # How far each signal is indexed, kept in memory once read: a lookup then costs one
        # query, not two. Only this object's catch_up moves it (one process owns the file), and
        # only after its transaction committed, so it is never ahead of the table.
        self._upto: dict[Table, int] = {}

    def ensure_tables(self) -> None:
        with self._lock:
            if self._ready:
                return
            cursor = self.store.reader()
            cursor.execute(
                f"CREATE TABLE IF NOT EXISTS {INDEX_TABLE} ("
                '"Key" UBIGINT, "Signal" UTINYINT, "MinSeq" UBIGINT, "MaxSeq" UBIGINT, '
                '"MinRow" BIGINT, "MaxRow" BIGINT, "Rows" UBIGINT)'
            )
            # An ART index on the key: a lookup is ~3 ms instead of a scan of every key (~30-80
            # ms at 6 M keys). It costs only this background thread, never the write path.
            cursor.execute(f'CREATE INDEX IF NOT EXISTS {INDEX_TABLE}_key ON {INDEX_TABLE} ("Key")')
            cursor.execute(
                f"CREATE TABLE IF NOT EXISTS {STATE_TABLE} "
                '("Signal" UTINYINT PRIMARY KEY, "UpTo" UBIGINT NOT NULL)'
            )
            self._ready = True

    def indexed_upto(self, table: Table) -> int:
        """The sequence number ``table`` is indexed up to, as this object last saw it."""
        known = self._upto.get(table)
        return known if known is not None else self._stored_uptos()[table]

    def _stored_uptos(self) -> dict[Table, int]:
        """How far each signal is indexed, from the table (one query for both)."""
        self.ensure_tables()
        stored = dict(
            self.store.reader().execute(f'SELECT "Signal", "UpTo" FROM {STATE_TABLE}').fetchall()
        )
        found = {table: int(stored.get(signal, 0)) for table, signal in _SIGNALS.items()}
        with self._lock:
            for table, upto in found.items():
                self._upto[table] = max(upto, self._upto.get(table, 0))
        return found

    def catch_up(self) -> int:
        """Index rows committed since the last run; return the sequence indexed up to."""
        self.ensure_tables()
        upto = self.store.last_sequence()
        done = self._stored_uptos()  # from the table: never index a sequence twice
        due = [(table, signal) for table, signal in _SIGNALS.items() if upto > done[table]]
        if not due:
            return upto
        # Both signals in one transaction: a DuckDB commit has a fixed cost (its WAL write and
        # fsync, and the commit lock the store's writer takes too), paid once per run, not once
        # per signal.
        cursor = self.store.reader()
        cursor.execute("BEGIN TRANSACTION")
        try:
            indexed = 0
            for table, signal in due:
                cursor.execute(
                    f"INSERT INTO {INDEX_TABLE} "
                    f"SELECT {_ROW_KEY} AS k, ?, "
                    f'min("{SEQ_COLUMN}"), max("{SEQ_COLUMN}"), min(rowid), max(rowid), count(*) '
                    f"FROM {physical(table)} "  # its rowid; the view has none
                    f'WHERE "{SEQ_COLUMN}" > ? AND "{SEQ_COLUMN}" <= ? AND "TraceId" <> \'\' '
                    # Not ``HAVING k IS NOT NULL``: DuckDB pushes that down to the scan as a
                    # filter and then works the key out again for the grouping — the key (a
                    # string concatenation and a hex cast) twice per row. The group's minimum key
                    # is its key, and a condition on an aggregate stays after the grouping.
                    f"GROUP BY k HAVING min({_ROW_KEY}) IS NOT NULL",
                    [signal, done[table], upto],
                )
                row = cursor.fetchone()
                indexed += int(row[0]) if row else 0
            if indexed:
                for _, signal in due:
                    cursor.execute(
                        f"INSERT OR REPLACE INTO {STATE_TABLE} VALUES (?, ?)", [signal, upto]
                    )
                cursor.execute("COMMIT")
            else:
                # Nothing to index (a phase of metrics only: the sequence moves, no span or log
                # row with a trace id comes): no commit, which would cost a WAL write and fsync
                # every second for nothing. Only this object's view moves on, so lookups skip
                # the empty tail; the table's lags, and after a restart that range is scanned
                # again and found empty again.
                cursor.execute("ROLLBACK")
        except Exception:
            with contextlib.suppress(duckdb.Error):
                cursor.execute("ROLLBACK")
            raise
        with self._lock:
            for table, _ in due:
                self._upto[table] = max(upto, self._upto.get(table, 0))
        return upto

    def locate(self, table: Table, trace_ids: list[str]) -> TraceLocation:
        """Where the rows of the traces are: row-id ranges with the number of rows they should
        yield, ``_Seq`` ranges holding the same rows (the fallback when row ids moved), and
        ``tail``: rows committed after the index (``_Seq >= tail``) must be read as well."""
        self.ensure_tables()
        upto = self.indexed_upto(table)
        tail_empty = self.store.last_sequence() <= upto
        keys = sorted({k for k in map(trace_key, trace_ids) if k is not None})
        rows: list[tuple[int, int, int, int, int]] = []
        if keys:
            # DuckDB answers this from the ART index only when the key is the sole filter and the
            # parameter has the key's type: with ``AND "Signal" = ?`` beside it, or a key above
            # 2**63 bound as HUGEINT, it scans millions of keys instead (~3-25 ms against ~0.5).
            # So the signal is filtered here, and the number of placeholders (never their
            # values) shapes the SQL. Entries above ``upto`` (a catch-up that committed after
            # ``upto`` was read) are left out: the tail read covers their rows, once.
            marks = ", ".join(["CAST(? AS UBIGINT)"] * len(keys))
            signal = _SIGNALS[table]
            rows = [
                row[1:]
                for row in self.store.reader()
                .execute(
                    f'SELECT "Signal", "MinSeq", "MaxSeq", "MinRow", "MaxRow", "Rows" '
                    f'FROM {INDEX_TABLE} WHERE "Key" IN ({marks})',
                    keys,
                )
                .fetchall()
                if row[0] == signal and row[1] <= upto
            ]
        return TraceLocation(
            row_ranges=_merge([(int(r[2]), int(r[3])) for r in rows]),
            expected_rows=sum(int(r[4]) for r in rows),
            seq_ranges=_merge([(int(r[0]), int(r[1])) for r in rows]),
            tail=upto + 1,
            tail_empty=tail_empty,
        )

    def seq_ranges(self, table: Table, trace_ids: list[str]) -> list[tuple[int, int]]:
        """``_Seq`` ranges (inclusive) that hold every row of the traces, the unindexed tail
        included unless it is empty (never an empty list: that would mean "read everything")."""
        where = self.locate(table, trace_ids)
        if where.tail_empty and where.seq_ranges:
            return where.seq_ranges
        return [*where.seq_ranges, (where.tail, 2**63 - 1)]

    # -- the background thread -----------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="trace-index", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        failures = 0
        while not self._stop.wait(self.interval):
            try:
                self.catch_up()
                failures = 0
            except Exception as exc:  # the store may be closing; never take the server down
                failures += 1
                if failures in (1, 10, 100):
                    log.warning("trace index catch-up failed (%d times): %s", failures, exc)
