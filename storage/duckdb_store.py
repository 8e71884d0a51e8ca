"""The embedded default store: one DuckDB database file, written by group commit.

One writer thread owns the write connection. ``write`` hands it the batches of a request and
waits; the thread takes everything that queued while the previous commit ran (up to
``commit_max_rows``), inserts it in one transaction and wakes every waiter. Durability thus costs
one commit per burst, not one per request. DuckDB writes its WAL on commit, so a committed batch
survives ``kill -9``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from opstrata.alerts import Alert, Incident
from opstrata.consumers import CommittedBatch
from opstrata.otlp.exported_tables import ExportedTable, concat_exported, release_exported
from opstrata.schema import TABLES, Signal, Table, signal_of
from opstrata.storage.base import CommitStats, StoreClosed, StoreError
from opstrata.storage.duckdb_ddl import (
    BATCH_LOG_TABLE,
    PHYSICAL_SCHEMAS,
    RESOURCE_COLUMN,
    RESOURCES_TABLE,
    SEQ_COLUMN,
    STORAGE_SCHEMAS,
    create_statements,
    physical,
    select_list,
    with_resources,
)
from opstrata.storage.duckdb_events import AlertIncidentTables
from opstrata.storage.duckdb_migrate import migrate
from opstrata.storage.duckdb_resources import ResourceIds, decoded_runs, request_resource_ids

__all__ = ["DuckDBStore"]

log = logging.getLogger(__name__)

_STOP = object()
_NOW = object()  # commit_soon(): a reader waits for the loads queued so far
_END_FILL = object()  # end_fill(): admission is short of room, stop waiting for a row group
# The ingest log position the store has loaded up to (core/ingestlog.py): one row, updated in
# the transaction that inserts the rows, so that a replay after a crash neither loses nor
# repeats a request.
LOG_POSITION_TABLE = "opstrata_ingest_log"
DATABASE = "opstrata"
"""The store's database as attached to its connection (the file's name, as before)."""
ROW_GROUP_SIZE = 16_384
"""Rows of a DuckDB row group in this store (DuckDB's default is 122,880). A transaction that
appends at least a row group to a table has DuckDB write that table's rows compressed straight
to the file ("optimistic writes"): they skip DuckDB's WAL, which commit serialises row by row,
and the checkpoint's re-compression. Our ingest log already makes acknowledged loads durable,
so the WAL is a second copy. Under load a commit holds tens of thousands of rows: with
122,880-row groups most of them went through the WAL (docs/performance.md, "Ingest, tenth
round")."""
_RESOURCE_DELETE_SLICE = 10_000
_RETENTION_VACUUM_TASKS = 10
"""``max_vacuum_tasks`` while retention checkpoints. DuckDB's default (100) merges up to 100
tasks' worth of the part-full row groups every commit leaves, per table with deletes, under the
writer's lock: 1.5 s a table on the real store (review of the tenth round); 10 took 0.3 s for
two tables and reclaims pinned row groups over a few runs."""
_RECLAIM_RETRIES = 3
"""Retention runs that checkpoint again, deletes or not, after a checkpoint freed no block
(another cursor's open transaction makes DuckDB's CHECKPOINT return without reclaiming)."""
_TIME_COLUMN = {
    table: ("TimeUnix" if table.value.startswith("otel_metrics") else "Timestamp")
    for table in TABLES
}


def _combined(batches: list[pa.RecordBatch | ExportedTable]) -> tuple[pa.Table, bool]:
    """The batches of one table as one chunk, and whether it was concatenated from exported
    tables (then each request's slice of it is what consumers get: :meth:`DuckDBStore.
    _hand_over`). Exported tables are concatenated in C without the GIL and imported once;
    with any other batch among them, every one is imported and pyarrow concatenates."""
    if all(isinstance(b, ExportedTable) and not b.imported for b in batches):
        return pa.Table.from_batches([concat_exported(batches)]), True  # type: ignore[arg-type]
    plain = [b.to_batch() if isinstance(b, ExportedTable) else b for b in batches]
    return pa.Table.from_batches(plain).combine_chunks(), False


def _stored_table(
    table: Table,
    data: pa.Table,
    lengths: list[int],
    seqs: list[int],
    resources: ResourceIds,
    pending: set[int],
    new_resources: list[pa.Array],
    adopt_stored: Callable[[np.ndarray, pa.Array], None],
    resource_starts: list[np.ndarray | None] | None = None,
) -> pa.Table:
    """The rows of one table (``data``, one chunk: the requests' batches of ``lengths`` rows
    concatenated, see :func:`_combined`) with their ``_Seq`` column (``seqs``, one per batch),
    in storage types (a zero-copy view: a map and a list of key/value structs share one memory
    layout), the resource's attributes replaced by its ``ResourceId``. The first row of each
    resource not yet stored goes to ``new_resources``; resources the writer does not know are
    first looked up by ``adopt_stored(computed_ids, attributes)`` (an upgraded data dir's). One
    chunk, because DuckDB scans a table of many small chunks several times slower; the resource
    ids of all requests found in one pass over the concatenated column."""
    rows = data.num_rows
    columns = []
    for column, field in zip(data.columns, STORAGE_SCHEMAS[table], strict=False):  # adds _Seq
        array = _one_chunk(column).view(field.type)
        if field.name == RESOURCE_COLUMN:
            # The decoder's runs of one resource (``resource_starts``, one per batch) spare
            # comparing the rows: ~0.05 µs a span or log record, ~0.09 a metric point.
            runs = decoded_runs(resource_starts, lengths) if resource_starts else None
            if runs is None:
                starts, computed = request_resource_ids(array, lengths)
            else:
                starts, computed = request_resource_ids(array, runs, runs_known=True)
            unknown = resources.unknown(computed)
            if len(unknown):
                adopt_stored(computed[unknown], array.take(starts[unknown]))
            run_ids, firsts = resources.assign(starts, computed, pending)
            if firsts:
                new_resources.append(
                    pa.StructArray.from_arrays(
                        [pa.array(run_ids[np.searchsorted(starts, firsts)]), array.take(firsts)],
                        ["ResourceId", RESOURCE_COLUMN],
                    )
                )
            array = pa.array(np.repeat(run_ids, np.diff(np.append(starts, rows))))
        columns.append(array)
    columns.append(pa.array(np.repeat(np.asarray(seqs, np.uint64), lengths)))
    return pa.Table.from_arrays(columns, schema=PHYSICAL_SCHEMAS[table])


def _sql_string(text: str) -> str:
    """A SQL string literal (ATTACH takes no parameters; the path is ours, not a request's)."""
    return "'" + text.replace("'", "''") + "'"


def _one_chunk(column: pa.ChunkedArray) -> pa.Array:
    if column.num_chunks == 1:
        return column.chunk(0)
    return pa.concat_arrays(column.chunks) if column.num_chunks else pa.nulls(0, column.type)


class _ArrowStream:
    """An Arrow table that DuckDB sees only as an Arrow C stream (the PyCapsule protocol).

    Handed a ``pyarrow.Table``, DuckDB sets up a pyarrow dataset scanner through Python for
    every scan, taking the GIL back each time; beside a busy event loop each of those waits
    costs a switch interval. A C stream is read without calling back into Python.
    """

    __slots__ = ("table",)

    def __init__(self, table: pa.Table) -> None:
        self.table = table

    def __arrow_c_stream__(self, requested_schema: object = None) -> object:
        return self.table.__arrow_c_stream__(requested_schema)


class _PendingWrite:
    __slots__ = ("batches", "future", "log_position", "loop", "rows")

    def __init__(
        self,
        batches: Sequence[tuple[Table, pa.RecordBatch]],
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[int],
        log_position: int | None = None,
    ) -> None:
        self.batches = batches
        self.loop = loop
        self.future = future
        self.log_position = log_position
        self.rows = sum(batch.num_rows for _, batch in batches)

    def settle(self, seq: int | None, error: BaseException | None = None) -> None:
        def _set() -> None:
            if self.future.done():
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(seq)

        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            self.loop.call_soon_threadsafe(_set)


def _add_rows(counts: dict[Table, int], pending: _PendingWrite) -> None:
    for table, batch in pending.batches:
        counts[table] = counts.get(table, 0) + batch.num_rows


def _table_rows(group: list[_PendingWrite]) -> dict[Table, int]:
    counts: dict[Table, int] = {}
    for pending in group:
        _add_rows(counts, pending)
    return counts


def _settle_all(group: list[_PendingWrite], first_seq: int) -> None:
    """Settle a committed group with one wake-up of each event loop, not one per request (a
    commit of the ingest log's backlog holds thousands)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[int], int]]] = {}
    for offset, item in enumerate(group):
        by_loop.setdefault(item.loop, []).append((item.future, first_seq + offset))

    def _set(done: list[tuple[asyncio.Future[int], int]]) -> None:
        for future, seq in done:
            if not future.done():
                future.set_result(seq)

    for loop, done in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(_set, done)


class DuckDBStore:
    """``Store`` on a DuckDB file in ``data_dir``."""

    takes_exported_tables = True
    """Writes may hold ``ExportedTable`` objects (metric tables not yet imported into pyarrow):
    the writer concatenates them in C and hands consumers record batches (:meth:`_hand_over`)."""

    def __init__(
        self,
        data_dir: Path,
        *,
        commit_max_rows: int = 200_000,
        threads: int = 1,
        memory_limit: str = "256MB",
        checkpoint_threshold: str = "256MB",
        load_interval: float = 0.2,
        row_group_size: int = ROW_GROUP_SIZE,
        fill_wait: float = 1.0,
    ) -> None:
        self.path = Path(data_dir) / "opstrata.duckdb"
        self.commit_max_rows = commit_max_rows
        self.load_interval = load_interval
        """Least time between the starts of two commits of writes that nobody waits for (those
        of the ingest log, already acknowledged): a DuckDB commit has a fixed cost of ~15 ms of
        CPU, so this gathers more rows per commit, under load and at a steady trickle alike
        (at 5,000 spans/s, committing every request or two cost ~75 µs of writer CPU a span).
        An idle store commits at once; a write that is awaited (``log_position`` None) and
        :meth:`commit_soon` (a reader waiting for what was acknowledged) cut the wait short."""
        self.row_group_size = row_group_size
        self.fill_wait = fill_wait
        """Longest a commit of already-acknowledged loads waits (since the previous commit
        started) for one of its tables to fill a row group, when the rate says it will: a
        commit of at least ``row_group_size`` rows of a table skips the WAL for them. Below
        that rate loads commit every ``load_interval`` as before; 0 never waits. Cut short by
        :meth:`end_fill` (ingest admission short of room)."""
        self._fill_ended = False  # end_fill() since the last commit (set by the event loop)
        self._last_commit = 0.0
        self._now_queued = False  # a commit_soon marker is in the queue, not yet taken
        self._config = {
            "threads": threads,
            "memory_limit": memory_limit,
            "checkpoint_threshold": checkpoint_threshold,
            # A commit of a few row groups leaves its last one part full. A checkpoint's vacuum
            # would merge such row groups with their neighbours, re-compressing them all (as
            # much CPU as the WAL it saved); row groups emptied by retention are still dropped.
            "max_vacuum_tasks": 0,
            # Where joins and sorts spill: beside the file, as for a database opened directly
            # (the connection's own database is in memory; the file is attached to it).
            "temp_directory": f"{self.path}.tmp",
        }
        self.stats = CommitStats()
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._con: duckdb.DuckDBPyConnection | None = None
        self._readers = threading.local()
        self._resources = ResourceIds()
        # Held by the writer through each commit (its known resources, then the commit) and by
        # retention while it deletes unreferenced resources: a commit never refers to a resource
        # that retention deletes under it.
        self._resources_lock = threading.Lock()
        self._retention_lock = threading.Lock()
        self._reclaim_retries = 0  # retention runs left that checkpoint again (see delete_before)
        self.resources_deleted = 0
        """Resources deleted by retention since start (no row referred to them any more)."""
        self._seq = 0
        self._log_position = 0
        self._refused_hook: Callable[[int], bool] | None = None
        # Refused log positions whose record is not yet held elsewhere -> the position the
        # store had recorded before it: what every commit records meanwhile (writer thread
        # writes, the event loop releases; dict operations are atomic under the GIL).
        self._position_caps: dict[int, int] = {}
        self._closed = False
        self._lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        if self.row_group_size < 2048 or self.row_group_size % 2048:
            raise StoreError(  # DuckDB's own message would not name the setting
                "storage.duckdb_row_group_size must be a positive multiple of 2048 (DuckDB's "
                f"vector size), not {self.row_group_size}"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # Attached rather than opened: the row group size is an option of ATTACH only (and
            # not kept in the file: every start states it).
            self._con = duckdb.connect(":memory:", config=self._config)
            self._con.execute(
                f"ATTACH {_sql_string(str(self.path))} AS {DATABASE} "
                f"(ROW_GROUP_SIZE {int(self.row_group_size)})"
            )
            self._con.execute(f"USE {DATABASE}")
        except duckdb.Error as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        migrate(self._con)  # a data dir from before resources were stored once
        for statement in create_statements():
            self._con.execute(statement)
        # The ids only, as one numpy array: no Python object (nor hash) per resource.
        self._resources = ResourceIds(
            self._con.sql(f'SELECT "ResourceId" FROM {RESOURCES_TABLE}')
            .to_arrow_table()
            .column(0)
            .to_numpy()
        )
        row = self._con.execute(f'SELECT coalesce(max("Seq"), 0) FROM {BATCH_LOG_TABLE}').fetchone()
        self._seq = int(row[0]) if row else 0
        self._con.execute(
            f'CREATE TABLE IF NOT EXISTS {LOG_POSITION_TABLE} ("Position" UBIGINT NOT NULL)'
        )
        row = self._con.execute(f'SELECT max("Position") FROM {LOG_POSITION_TABLE}').fetchone()
        if row is None or row[0] is None:
            self._con.execute(f"INSERT INTO {LOG_POSITION_TABLE} VALUES (0)")
        self._log_position = int(row[0]) if row and row[0] is not None else 0
        self._thread = threading.Thread(target=self._run, name="duckdb-writer", daemon=True)
        self._thread.start()

    def shutdown(self, timeout: float = 30.0) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout)
            if self._thread.is_alive():
                # Still inside a commit: closing under it would be worse than not closing.
                log.error("store writer did not finish within %.0f s; not closing", timeout)
                return
        # A retention run in its thread (the server cancels the task, not the thread) must not
        # have the connection closed under its DELETEs and checkpoint.
        if not self._retention_lock.acquire(timeout=timeout):
            log.error("retention did not finish within %.0f s; not closing", timeout)
            return
        try:
            if self._con is not None:
                with contextlib.suppress(duckdb.Error):
                    self._con.execute("CHECKPOINT")
                self._con.close()
        finally:
            self._retention_lock.release()

    # -- writing -------------------------------------------------------------------------------

    async def write(
        self, batches: Sequence[tuple[Table, pa.RecordBatch]], log_position: int | None = None
    ) -> int:
        """Commit the batches of one request; with ``log_position``, also record (in the same
        transaction) that the ingest log is loaded up to that position."""
        return await self.enqueue(batches, log_position)

    def enqueue(
        self, batches: Sequence[tuple[Table, pa.RecordBatch]], log_position: int | None = None
    ) -> asyncio.Future[int]:
        """Queue a write now (writes commit in the order they are queued); the future gives its
        sequence number once committed."""
        if self._closed:
            raise StoreClosed("store is shut down")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        self._queue.put(_PendingWrite(batches, loop, future, log_position))
        return future

    def commit_soon(self) -> None:
        """Commit the loads queued so far without waiting out ``load_interval``: a reader waits
        for them (read-after-ack). Only loads queued before the call are hurried (the ingest
        path queues a request's load in the same event-loop step that acknowledges it, so
        everything acknowledged before a reader asks is). Readers asking while a marker is
        still queued share it: a burst of API requests costs one commit, not one each."""
        if not self._closed and not self._now_queued:
            self._now_queued = True
            self._queue.put(_NOW)

    def end_fill(self) -> None:
        """Commit the loads queued so far without waiting to fill a row group (``fill_wait``),
        but still no sooner than ``load_interval`` after the previous commit: ingest admission
        is short of room (it counts the held loads as in flight), and holding them would
        refuse clients while the writer sleeps. Cheap to call often: a marker at most per
        commit, or two when one lands between the fill's end and the commit (that stale one
        may then cut the next group's fill short once: one commit through the WAL)."""
        if not self._closed and not self._fill_ended:
            self._fill_ended = True
            self._queue.put(_END_FILL)

    def on_refused(self, hook: Callable[[int], bool]) -> None:
        """Have ``hook(log_position)`` called in the writer thread when a write with that log
        position is refused, before any later commit: it makes the refused record durable
        elsewhere (the ingest log's ``held/``) and returns whether it did. Until it has, commits
        record no log position past the refused record (see :meth:`release_refused`)."""
        self._refused_hook = hook

    def release_refused(self, log_position: int) -> None:
        """The refused record at ``log_position`` is now held: later commits may record log
        positions past it again."""
        self._position_caps.pop(log_position, None)

    def _refused(self, log_position: int) -> bool:
        """A write with a log position was refused: hold its record (the hook) before the next
        commit records a position past it; when that fails, cap the recorded position below
        it. Without this a crash right after the next commit would leave an acknowledged record
        behind the replay position, never loaded."""
        held = False
        if self._refused_hook is not None:
            try:
                held = bool(self._refused_hook(log_position))
            except Exception:
                log.exception("holding the refused log position %d failed", log_position)
        if not held:
            self._position_caps[log_position] = self._log_position
        return held

    def _recordable(self, positions: list[int]) -> int | None:
        """The log position a commit of ``positions`` records: their highest, but never past a
        refused record not yet held (a replay after a crash then loads it, and also loads
        again what was committed after it: a duplicate, never a loss)."""
        if not positions:
            return None
        caps = list(self._position_caps.values())
        return min(max(positions), *caps) if caps else max(positions)

    def last_sequence(self) -> int:
        return self._seq

    def log_position(self) -> int:
        """The ingest log position loaded and committed so far (0 for a new store)."""
        return self._log_position

    def _run(self) -> None:
        stopping = False
        hurry = False
        while not stopping:
            item = self._queue.get()
            if item is _STOP:
                break
            if item is _NOW:
                # Nothing queued before it; but a reader that found this marker still queued
                # relied on it for loads queued since: the next group commits at once.
                self._now_queued = False
                hurry = True
                continue
            if item is _END_FILL:
                continue  # _fill_ended stays set: the next group does not wait to fill
            group = [item]
            stopping, now = self._gather(group, 0.0)
            now, hurry = now or hurry, False
            # Already-acknowledged loads: one commit per load_interval at most, unless someone
            # waits (an awaited write, commit_soon). The first write after a quiet spell
            # commits at once (its deadline has passed).
            if (
                not stopping
                and not now
                and all(pending.log_position is not None for pending in group)
            ):
                stopping, now = self._gather(group, self._last_commit + self.load_interval)
                if not stopping and not now:
                    stopping = self._fill(group)
            self._last_commit = time.monotonic()
            # An end_fill() from here on is about the loads queued after this group.
            self._fill_ended = False
            self._commit_group(group)  # type: ignore[arg-type]
        # Whatever queued behind the stop marker is refused, not silently dropped.
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _PendingWrite):
                item.settle(None, StoreClosed("store is shut down"))

    def _fill(self, group: list[_PendingWrite]) -> bool:
        """Under load, let ``group`` grow until each of its tables that, at the rate the group
        has gathered it since the previous commit started, fills a row group within
        ``fill_wait`` of that start has filled one (a transaction's row groups then skip
        DuckDB's WAL: see ``ROW_GROUP_SIZE``). Below that rate, or once a reader or an
        awaited write asks, the group commits as it is. Returns whether the stop marker was
        met."""
        if self.fill_wait <= 0 or self._fill_ended:
            return False
        counts = _table_rows(group)
        elapsed = time.monotonic() - self._last_commit
        # Every table that fills a row group in time, not only the first: a metrics request
        # fills three tables at different rates (the bench's gauge table gets a fifth of the
        # points), and a table committed short of a row group goes through the WAL.
        filling = {
            table
            for table, rows in counts.items()
            if rows * self.fill_wait >= self.row_group_size * elapsed
        }
        if all(counts[table] >= self.row_group_size for table in filling):
            return False
        stopping, _ = self._gather(group, self._last_commit + self.fill_wait, counts, filling)
        return stopping

    def _gather(
        self,
        group: list,
        deadline: float,
        fill: dict[Table, int] | None = None,
        filling: set[Table] | frozenset[Table] = frozenset(),
    ) -> tuple[bool, bool]:
        """Add queued writes to ``group`` until ``commit_max_rows``, waiting for more until
        ``deadline`` (monotonic; none when past) unless one is awaited; with ``fill`` (the
        group's rows per table), also until every table of ``filling`` holds
        ``row_group_size`` rows. Returns (the stop marker was met, someone waits: commit
        now)."""
        rows = sum(pending.rows for pending in group)
        now = False
        while rows < self.commit_max_rows:
            wait = deadline - time.monotonic()
            try:
                more = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                return False, now
            if more is _STOP:
                return True, now
            if more is _NOW:
                self._now_queued = False
                deadline, now = 0.0, True  # a reader waits for what is queued: commit now
                continue
            if more is _END_FILL:
                if fill is not None:
                    deadline = 0.0  # admission is short of room: take what is queued, commit
                continue  # while gathering for load_interval: _fill will not start
            group.append(more)
            rows += more.rows  # type: ignore[attr-defined]
            if more.log_position is None:  # type: ignore[attr-defined]
                deadline, now = 0.0, True  # someone waits for this one: commit now
            elif fill is not None:
                _add_rows(fill, more)  # type: ignore[arg-type]
                if all(fill.get(table, 0) >= self.row_group_size for table in filling):
                    deadline = 0.0  # a row group's worth each: take what is queued, commit
        return False, now

    def _commit_group(self, group: list[_PendingWrite]) -> None:
        started = time.perf_counter()
        first_seq = self._seq + 1
        try:
            concatenated = self._insert(group, first_seq)
        except Exception as exc:
            if len(group) == 1:
                log.warning("commit failed: %s", exc)
                error = StoreError(f"commit failed: {exc}")
                if group[0].log_position is not None:
                    error.held = self._refused(group[0].log_position)  # type: ignore[attr-defined]
                group[0].settle(None, error)
                return
            for item in group:
                self._commit_group([item])
            return
        self._seq = first_seq + len(group) - 1
        try:
            self._hand_over(group, concatenated)
        except Exception:  # committed: it must not be retried (that would store it twice)
            log.exception("handing over the batches of commit %d failed", first_seq)
            for item in group:  # consumers take record batches: import what is left
                for i, (table, batch) in enumerate(item.batches):
                    if isinstance(batch, ExportedTable):
                        with contextlib.suppress(Exception):
                            item.batches[i] = (table, batch.to_batch())  # type: ignore[index]
        position = self._recordable(
            [item.log_position for item in group if item.log_position is not None]
        )
        if position is not None:
            self._log_position = position
        elapsed = time.perf_counter() - started
        stats = self.stats
        stats.commits += 1
        stats.rows_committed += sum(item.rows for item in group)
        stats.commit_seconds_total += elapsed
        stats.last_commit_seconds = elapsed
        _settle_all(group, first_seq)

    def _insert(self, group: list[_PendingWrite], first_seq: int) -> dict[Table, pa.RecordBatch]:
        """Commit the group; returns the tables concatenated from exported tables (for
        :meth:`_hand_over`)."""
        with self._resources_lock:
            return self._insert_locked(group, first_seq)

    @staticmethod
    def _hand_over(group: list[_PendingWrite], concatenated: dict[Table, pa.RecordBatch]) -> None:
        """After the commit, replace each request's exported tables (``ExportedTable``) in its
        batches by record batches, as consumers take them: a zero-copy slice of the table the
        commit concatenated, or the table imported on its own; then free the exported buffers,
        without the GIL. The event loop reads the batches only once the write's future is set,
        after this. Raises nothing that could make a committed group look failed."""
        offsets = dict.fromkeys(concatenated, 0)
        copied: list[ExportedTable] = []
        for item in group:
            batches = item.batches
            for i, (table, batch) in enumerate(batches):
                if not isinstance(batch, ExportedTable):
                    continue
                whole = concatenated.get(table)
                if whole is None:
                    batches[i] = (table, batch.to_batch())  # type: ignore[index]
                    continue
                offset = offsets[table]
                batches[i] = (table, whole.slice(offset, batch.num_rows))  # type: ignore[index]
                offsets[table] = offset + batch.num_rows
                copied.append(batch)
        release_exported(copied)

    def _adopt_stored(self, computed: np.ndarray, attributes: pa.Array) -> None:
        """Resources the writer does not know by its own ids, looked up under the id an upgrade
        gave them (DuckDB's ``hash()`` of the attribute list, duckdb_migrate) and, where stored
        under it with equal attributes, referred to by that id from now on. One small query per
        commit that meets new resources (rare once a deployment is running); a second, over the
        resources table, only when one was stored that way."""
        con = self._con
        assert con is not None
        candidates = pa.table({"Computed": pa.array(computed), "Attrs": attributes})
        # execute(), not sql(): the writer's connection may hold a ROLLBACK's unread result,
        # which sql() refuses to run beside ("Resource In Use") and execute() discards.
        hashed = con.execute('SELECT hash("Attrs") AS h FROM candidates').fetchnumpy()["h"]
        hits = self._resources.known(np.asarray(hashed, np.uint64))
        if not hits.any():
            return
        candidates = candidates.filter(pa.array(hits))
        found = con.execute(
            f'SELECT c."Computed", r."ResourceId" FROM {RESOURCES_TABLE} r JOIN candidates c '
            f'ON r."ResourceId" = hash(c."Attrs") AND r."{RESOURCE_COLUMN}" = c."Attrs"'
        ).fetchnumpy()
        self._resources.adopt(found["Computed"], found["ResourceId"])

    def _insert_locked(
        self, group: list[_PendingWrite], first_seq: int
    ) -> dict[Table, pa.RecordBatch]:
        con = self._con
        assert con is not None
        per_table: dict[Table, list[pa.RecordBatch]] = {}
        seqs: dict[Table, list[int]] = {}
        starts: dict[Table, list[np.ndarray | None]] = {}
        log_signal: list[str] = []
        log_tables: list[list[str]] = []
        log_rows: list[int] = []
        for offset, item in enumerate(group):
            seq = first_seq + offset
            tables = []
            signal = Signal.SPANS
            known = getattr(item.batches, "resource_starts", None)  # the C decoders' runs
            for table, batch in item.batches:
                per_table.setdefault(table, []).append(batch)
                seqs.setdefault(table, []).append(seq)
                starts.setdefault(table, []).append(None if known is None else known.get(table))
                tables.append(table.value)
                signal = signal_of(table)
            log_signal.append(signal.value)
            log_tables.append(tables)
            log_rows.append(item.rows)
        batch_log = _ArrowStream(  # noqa: F841 - DuckDB reads it by name
            pa.table(
                {
                    "Seq": pa.array(np.arange(first_seq, first_seq + len(group), dtype=np.uint64)),
                    "Signal": log_signal,
                    "Tables": pa.array(log_tables, pa.list_(pa.string())),
                    "Rows": pa.array(log_rows, pa.uint64()),
                    "CommittedAt": pa.array([time.time_ns()] * len(group), pa.timestamp("ns")),
                }
            )
        )
        new_ids: set[int] = set()
        new_resources: list[pa.Array] = []
        pending = []
        concatenated: dict[Table, pa.RecordBatch] = {}
        for table, batches in per_table.items():
            data, exported = _combined(batches)
            if exported:
                concatenated[table] = data.to_batches()[0]
            stored = _stored_table(
                table,
                data,
                [batch.num_rows for batch in batches],
                seqs[table],
                self._resources,
                new_ids,
                new_resources,
                self._adopt_stored,
                starts[table],
            )
            pending.append((physical(table), _ArrowStream(stored)))
        resource_rows = (  # noqa: F841 - DuckDB reads it by name
            _ArrowStream(pa.Table.from_struct_array(pa.concat_arrays(new_resources)))
            if new_resources
            else None
        )
        position = self._recordable(
            [item.log_position for item in group if item.log_position is not None]
        )
        con.execute("BEGIN TRANSACTION")
        try:
            if new_resources:
                con.execute(f"INSERT INTO {RESOURCES_TABLE} SELECT * FROM resource_rows")
            for table, stream in pending:  # noqa: B007 - DuckDB reads `stream` by name
                con.execute(f"INSERT INTO {table} SELECT * FROM stream")
            con.execute(f"INSERT INTO {BATCH_LOG_TABLE} SELECT * FROM batch_log")
            if position is not None:
                con.execute(f'UPDATE {LOG_POSITION_TABLE} SET "Position" = ?', [position])
            con.execute("COMMIT")
        except Exception:
            with contextlib.suppress(duckdb.Error):
                con.execute("ROLLBACK")
            raise
        self._resources.committed(new_ids)
        return concatenated

    # -- reading -------------------------------------------------------------------------------

    def reader(self) -> duckdb.DuckDBPyConnection:
        """A connection for the calling thread, for queries that run beside the writer."""
        cursor = getattr(self._readers, "cursor", None)
        if cursor is None:
            if self._con is None:
                raise StoreClosed("store is not started")
            cursor = self._con.cursor()
            cursor.execute(f"USE {DATABASE}")  # a cursor starts in the connection's default
            self._readers.cursor = cursor
        return cursor

    def count(self, table: Table) -> int:
        rows = self.reader().sql(f"SELECT count(*) FROM {physical(Table(table))}").fetchall()
        return int(rows[0][0])

    def trace(self, trace_id: str) -> pa.Table:
        return (
            self.reader()
            .sql(
                f"SELECT {select_list(Table.TRACES)} FROM {Table.TRACES} "
                'WHERE "TraceId" = ? ORDER BY "Timestamp", "SpanId"',
                params=[trace_id.lower()],
            )
            .to_arrow_table()
        )

    def read_batches(
        self, after_seq: int, upto_seq: int, signals: frozenset[Signal], limit: int = 64
    ) -> list[CommittedBatch]:
        """Committed batches with ``after_seq < seq <= upto_seq`` of the given signals, in order,
        at most ``limit`` of them: how a consumer that fell behind catches up."""
        cursor = self.reader()
        log_rows = cursor.sql(
            f'SELECT "Seq", "Tables" FROM {BATCH_LOG_TABLE} '
            'WHERE "Seq" > ? AND "Seq" <= ? AND list_contains(?, "Signal") '
            'ORDER BY "Seq" LIMIT ?',
            params=[after_seq, upto_seq, sorted(s.value for s in signals), limit],
        ).fetchall()
        if not log_rows:
            return []
        first, last = log_rows[0][0], log_rows[-1][0]
        tables = sorted({t for _, names in log_rows for t in names})
        per_seq: dict[int, list[tuple[Table, pa.RecordBatch]]] = {seq: [] for seq, _ in log_rows}
        for name in tables:
            rows = with_resources(
                Table(name),
                f"SELECT *, rowid AS _row FROM {physical(Table(name))} "
                f'WHERE "{SEQ_COLUMN}" BETWEEN ? AND ?',
                ("_row",),
            )
            data = cursor.sql(
                f'SELECT {select_list(Table(name))}, "{SEQ_COLUMN}" FROM {rows} '
                f'ORDER BY "{SEQ_COLUMN}", _row',
                params=[first, last],
            ).to_arrow_table()
            if data.num_rows == 0:
                continue  # deleted by retention since it was committed
            seqs = data.column(SEQ_COLUMN).to_numpy()
            data = data.drop_columns([SEQ_COLUMN]).cast(TABLES[Table(name)])
            bounds = np.flatnonzero(np.diff(seqs)) + 1
            starts = np.concatenate(([0], bounds))
            ends = np.concatenate((bounds, [len(seqs)]))
            for start, end in zip(starts, ends, strict=True):
                seq = int(seqs[start])
                if seq in per_seq:
                    chunk = data.slice(start, end - start).combine_chunks()
                    per_seq[seq].append((Table(name), chunk.to_batches()[0]))
        return [CommittedBatch.of(seq, per_seq[seq]) for seq, _ in log_rows]

    # -- alerts and incidents ------------------------------------------------------------------

    def save_alerts(self, alerts: Sequence[Alert]) -> None:
        AlertIncidentTables.save_alerts(self.reader(), alerts)

    def save_incidents(self, incidents: Sequence[Incident]) -> None:
        AlertIncidentTables.save_incidents(self.reader(), incidents)

    def load_alerts(self, firing_only: bool = False) -> list[Alert]:
        status = "firing" if firing_only else None
        return AlertIncidentTables.alerts(self.reader(), status=status, limit=1_000_000)

    def load_incidents(self, open_only: bool = False) -> list[Incident]:
        statuses = ["open", "acknowledged"] if open_only else None
        return AlertIncidentTables.incidents(self.reader(), statuses=statuses, limit=1_000_000)

    def alerts(self, **filters: Any) -> list[Alert]:
        return AlertIncidentTables.alerts(self.reader(), **filters)

    def incidents(self, **filters: Any) -> list[Incident]:
        return AlertIncidentTables.incidents(self.reader(), **filters)

    def incident_logs(self, **query: Any) -> list[dict]:
        return AlertIncidentTables.incident_logs(self.reader(), **query)

    def delete_before(self, cutoff_unix_nano: int) -> int:
        """Delete rows older than the cutoff from every telemetry table, then the resources no
        row refers to any more (pods and processes come and go: without this
        ``otel_resources`` and the writer's known ids would grow for ever)."""
        deleted = 0
        with self._retention_lock:  # one run at a time: each sets the vacuum back at its end
            if self._closed:  # shut down while this run waited for the lock
                return 0
            cursor = self.reader()
            # The store runs with DuckDB's vacuum off (``_config``), which also keeps row groups
            # that retention leaves part deleted: a few far-future rows (a client's broken
            # clock) would pin every row group for good. So the vacuum is on from before the
            # DELETEs until the CHECKPOINT that follows them (on only afterwards, it reclaimed
            # nothing: review of the tenth round). A global setting: a checkpoint of the
            # writer's in this window vacuums too, once, which is fine.
            cursor.execute(f"SET GLOBAL max_vacuum_tasks = {_RETENTION_VACUUM_TASKS}")
            try:
                for table in TABLES:
                    # The cutoff in nanoseconds as DuckDB's own TIMESTAMP_NS (a constant the
                    # scan's zone maps use): as a Python datetime, a cutoff off a microsecond
                    # raised without pandas.
                    rows = cursor.execute(
                        f'DELETE FROM {physical(table)} WHERE "{_TIME_COLUMN[table]}" '
                        "< make_timestamp_ns(?::BIGINT)",
                        [int(cutoff_unix_nano)],
                    ).fetchall()
                    deleted += int(rows[0][0]) if rows else 0
                if deleted:
                    self.delete_unreferenced_resources()
                    self._reclaim_retries = _RECLAIM_RETRIES
                if self._reclaim_retries:
                    self._reclaim(cursor)
            finally:
                cursor.execute("SET GLOBAL max_vacuum_tasks = 0")
        return deleted

    def _reclaim(self, cursor: duckdb.DuckDBPyConnection) -> None:
        """Checkpoint now, not at the next automatic checkpoint: with whole row groups written
        straight to the file the WAL rarely reaches the threshold, and deleted rows' blocks are
        reused only once a checkpoint has written the deletes. Under the writer's lock: beside
        an open write transaction DuckDB's CHECKPOINT returns without checkpointing. Another
        cursor's open transaction (a plugin's write, a query) does the same, silently, so a
        checkpoint that freed no block is tried again at the next few runs."""
        used = self._used_blocks(cursor)
        with self._resources_lock:
            try:
                cursor.execute("CHECKPOINT")
            except duckdb.Error as exc:  # the deletes stand; a later run reclaims
                log.warning("checkpoint after retention failed: %s", exc)
        freed = used is not None and (self._used_blocks(cursor) or 0) < used
        self._reclaim_retries = 0 if freed else self._reclaim_retries - 1

    @staticmethod
    def _used_blocks(cursor: duckdb.DuckDBPyConnection) -> int | None:
        row = cursor.execute(
            "SELECT used_blocks FROM pragma_database_size() WHERE database_name = ?", [DATABASE]
        ).fetchall()
        return int(row[0][0]) if row else None

    def delete_unreferenced_resources(self) -> int:
        """Delete the resources that no row of any table refers to; returns how many.

        Two steps, so that the writer waits only for the second: the unreferenced ids are found
        beside the writer (a scan of every table's ``ResourceId``), then, under the writer's
        lock, those still unreferenced by the rows committed since (``_Seq`` past the last
        sequence number committed before the scan: zone maps skip the rest) are deleted and
        dropped from the writer's known ids, so a resource seen again is inserted again."""
        cursor = self.reader()
        committed = self._seq  # every commit up to here is visible to the scan below
        referenced = " UNION ALL ".join(f'SELECT "ResourceId" FROM {physical(t)}' for t in TABLES)
        unreferenced = cursor.sql(
            f'SELECT "ResourceId" FROM {RESOURCES_TABLE} WHERE "ResourceId" NOT IN ({referenced})'
        ).to_arrow_table()
        if unreferenced.num_rows == 0:
            return 0
        since = " UNION ALL ".join(
            f'SELECT "ResourceId" FROM {physical(t)} WHERE "{SEQ_COLUMN}" > $seq' for t in TABLES
        )
        deleted = 0
        # In slices: the writer waits for one slice at a time (~0.1-0.2 s for 10,000 on a busy
        # machine), not for a first pass over a large backlog.
        for start in range(0, unreferenced.num_rows, _RESOURCE_DELETE_SLICE):
            orphans = unreferenced.slice(start, _RESOURCE_DELETE_SLICE)  # noqa: F841 - by name
            with self._resources_lock:
                gone = cursor.execute(
                    f'DELETE FROM {RESOURCES_TABLE} WHERE "ResourceId" IN '
                    f'(SELECT "ResourceId" FROM orphans) AND "ResourceId" NOT IN ({since}) '
                    'RETURNING "ResourceId"',
                    {"seq": committed},
                ).fetchnumpy()["ResourceId"]
                self._resources.forget(gone)
                self.resources_deleted += len(gone)
            deleted += len(gone)
        return deleted
