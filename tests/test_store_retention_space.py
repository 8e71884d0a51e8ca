"""Retention gives the file's space back although the store runs with DuckDB's vacuum off: a
few far-future rows (a client's broken clock) amid every commit must not pin the row groups
that retention leaves part deleted (review of the tenth round: 95 -> 94 used blocks after
deleting 600,000 of 600,030 spans)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from opstrata.otlp.decoder import Encoding, decode_request
from opstrata.otlp.limits import DecodeLimits
from opstrata.schema import Signal, Table
from opstrata.storage.duckdb_store import DuckDBStore
from tests.test_store_resources import _spans_body

_OLD = 1_700_000_000_000_000_000
_FUTURE = 4_000_000_000_000_000_000  # year 2096
_COMMITS = 30
_SPANS = 5000  # twice per commit, beside one far-future span


def _batches(spans: int, start: int) -> list:
    body = _spans_body([[("service.name", "pin")]], spans, start)
    return decode_request(Signal.SPANS, body, Encoding.PROTOBUF, DecodeLimits()).batches


async def _load(store: DuckDBStore) -> None:
    old, future = _batches(_SPANS, _OLD), _batches(1, _FUTURE)
    position = 0
    for _ in range(_COMMITS):
        futures = []
        for batches in (old, future, old):  # committed together: the new row mid-row-group
            position += 1
            futures.append(store.enqueue(batches, log_position=position))
        await asyncio.wait_for(asyncio.gather(*futures), 30)


def _used_blocks(store: DuckDBStore) -> int:
    row = (
        store.reader()
        .execute("SELECT used_blocks FROM pragma_database_size() WHERE database_name = 'opstrata'")
        .fetchone()
    )
    assert row is not None
    return int(row[0])


def test_retention_reclaims_row_groups_that_a_few_new_rows_would_pin(tmp_path: Path) -> None:
    store = DuckDBStore(tmp_path, row_group_size=2048, load_interval=0.0)
    store.start()
    try:
        asyncio.run(_load(store))
        store.reader().execute("CHECKPOINT")
        before = _used_blocks(store)
        deleted = store.delete_before(_OLD + 10**15)
        assert deleted == _COMMITS * 2 * _SPANS
        assert store.count(Table.TRACES) == _COMMITS
        # No checkpoint of the test's own: retention's space is free for reuse at once.
        after = _used_blocks(store)
        assert before >= 20, f"too little data to tell: {before} blocks"
        assert after <= before // 4, f"used blocks {before} -> {after}"
        # The vacuum is off again for the writer's checkpoints.
        setting = store.reader().execute("SELECT current_setting('max_vacuum_tasks')").fetchone()
        assert setting == (0,)
    finally:
        store.shutdown()


async def _retention_beside_loads(store: DuckDBStore) -> int:
    """Retention in a thread while the event loop keeps loading (new rows, kept)."""
    new = _batches(500, _FUTURE)
    retention = asyncio.create_task(asyncio.to_thread(store.delete_before, _OLD + 10**15))
    position = 1000
    while not retention.done():
        position += 1
        await asyncio.wait_for(store.enqueue(new, log_position=position), 30)
    deleted = await asyncio.wait_for(retention, 60)
    for _ in range(3):  # and after it
        position += 1
        await asyncio.wait_for(store.enqueue(new, log_position=position), 30)
    return deleted


def test_retention_beside_a_loading_writer_neither_fails_nor_blocks_it(tmp_path: Path) -> None:
    store = DuckDBStore(tmp_path, row_group_size=2048, load_interval=0.0)
    store.start()
    try:
        asyncio.run(_load(store))
        before = store.count(Table.TRACES)
        deleted = asyncio.run(_retention_beside_loads(store))
        assert deleted == _COMMITS * 2 * _SPANS
        loads = store.log_position() - 1000
        assert loads >= 3
        assert store.count(Table.TRACES) == before - deleted + loads * 500
        setting = store.reader().execute("SELECT current_setting('max_vacuum_tasks')").fetchone()
        assert setting == (0,)
    finally:
        store.shutdown()


async def _load_new(store: DuckDBStore) -> None:
    await asyncio.wait_for(store.enqueue(_batches(10, _FUTURE), log_position=10_000), 30)


def test_space_held_by_another_open_transaction_is_reclaimed_at_a_later_run(
    tmp_path: Path,
) -> None:
    """Another cursor's open transaction (a query, a plugin's catch-up) makes DuckDB's
    CHECKPOINT return without reclaiming anything: the next retention run checkpoints again,
    though it deletes nothing itself."""
    store = DuckDBStore(tmp_path, row_group_size=2048, load_interval=0.0)
    store.start()
    try:
        asyncio.run(_load(store))
        store.reader().execute("CHECKPOINT")
        before = _used_blocks(store)
        began, release = threading.Event(), threading.Event()

        def hold_a_transaction() -> None:
            cursor = store.reader()
            cursor.execute("BEGIN")
            cursor.execute("SELECT count(*) FROM otel_logs").fetchall()
            began.set()
            release.wait(30)
            cursor.execute("COMMIT")

        holder = threading.Thread(target=hold_a_transaction)
        holder.start()
        assert began.wait(30)
        assert store.delete_before(_OLD + 10**15) == _COMMITS * 2 * _SPANS
        held = _used_blocks(store)
        release.set()
        holder.join(30)
        assert held > before // 4, f"nothing held the space back: {before} -> {held}"
        asyncio.run(_load_new(store))  # the writer goes on meanwhile
        assert store.delete_before(_OLD + 10**15) == 0  # nothing left to delete ...
        after = _used_blocks(store)
        assert after <= before // 4, f"used blocks {before} -> {held} -> {after}"  # ... reclaimed
    finally:
        store.shutdown()


def test_shutdown_waits_for_a_retention_run_before_closing(tmp_path: Path) -> None:
    """The server cancels its retention task at shutdown, not the thread running it: the store
    must not close the connection under a run's DELETEs and checkpoint."""
    store = DuckDBStore(tmp_path, row_group_size=2048, load_interval=0.0)
    store.start()
    asyncio.run(_load(store))
    stopped = threading.Event()
    shutdown = threading.Thread(target=lambda: (store.shutdown(), stopped.set()))
    with store._retention_lock:  # a retention run in progress, as its thread holds it
        shutdown.start()
        assert not stopped.wait(0.5), "closed under a running retention"
        # The run can still use the store (the writer has stopped, the connection is open).
        assert store.count(Table.TRACES) == _COMMITS * (2 * _SPANS + 1)
    shutdown.join(30)
    assert stopped.is_set()
    assert store.delete_before(_OLD + 10**15) == 0  # a run after shutdown does nothing
