"""The plugin's own tables in the store's DuckDB database: ``llmops_calls`` (one row per call),
``llmops_message_blocks`` (the messages spans carried, compressed blocks: :mod:`.blocks`),
``llmops_messages`` (messages from log events, and all of them before blocks), ``llmops_rollup`` and
``llmops_sketch`` (sums and sketches per hour and day, :mod:`.rollup`) and ``llmops_progress``
(the last batch whose calls are stored), reached through the store's per-thread cursor."""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any

import pyarrow as pa

from opstrata.plugins.llmops.blocks import blocks_ddl
from opstrata.plugins.llmops.recognise import CALLS
from opstrata.plugins.llmops.rollup import (
    DAY_NS,
    HOUR_NS,
    ROLLUP_TABLE,
    SKETCH_TABLE,
    compact,
    roll_up,
    rollup_ddl,
    sketch_ddl,
)
from opstrata.plugins.llmops.rollup import (
    DIMENSIONS as ROLLUP_DIMENSIONS,
)
from opstrata.plugins.llmops.span_parts import MESSAGES

log = logging.getLogger(__name__)

__all__ = [
    "CALLS_TABLE",
    "HOUR_NS",
    "MESSAGES_TABLE",
    "PROGRESS_TABLE",
    "ROLLUP_DIMENSIONS",
    "ROLLUP_TABLE",
    "compact",
    "cursor_of",
    "ensure_tables",
    "roll_up",
]

CALLS_TABLE = "llmops_calls"
MESSAGES_TABLE = "llmops_messages"
PROGRESS_TABLE = "llmops_progress"
_OLD_ROLLUP = "llmops_hourly"  # the first release's hourly-only rollup, replaced


_DUCK = {
    pa.timestamp("ns"): "TIMESTAMP_NS",
    pa.string(): "VARCHAR",
    pa.int64(): "BIGINT",
    pa.bool_(): "BOOLEAN",
}
_created = threading.Lock()
_ready: weakref.WeakSet[Any] = weakref.WeakSet()


def _ddl(table: str, schema: pa.Schema) -> str:
    columns = ", ".join(f'"{f.name}" {_DUCK[f.type]}' for f in schema)
    return f"CREATE TABLE IF NOT EXISTS {table} ({columns})"


def cursor_of(store: Any) -> Any:
    """A DuckDB cursor for the calling thread, with the plugin's tables in place."""
    reader = getattr(store, "reader", None)
    if reader is None:
        raise RuntimeError("the llmops plugin needs the DuckDB store (storage.backend = duckdb)")
    cursor = reader()
    ensure_tables(store, cursor)
    return cursor


def ensure_tables(store: Any, cursor: Any) -> None:
    if store in _ready:
        return
    with _created:
        if store not in _ready:
            cursor.execute(_ddl(CALLS_TABLE, CALLS))
            # The block holding the call's messages (set by the writer, not in CALLS).
            cursor.execute(
                f'ALTER TABLE {CALLS_TABLE} ADD COLUMN IF NOT EXISTS "MessageBlock" BIGINT'
            )
            cursor.execute(blocks_ddl())
            cursor.execute(_ddl(MESSAGES_TABLE, MESSAGES))
            for name in ("System", "Input", "Output"):  # a table from before raw JSON was kept
                cursor.execute(
                    f'ALTER TABLE {MESSAGES_TABLE} ADD COLUMN IF NOT EXISTS "{name}" VARCHAR'
                )
            cursor.execute(
                f'CREATE TABLE IF NOT EXISTS {PROGRESS_TABLE} ("Consumer" VARCHAR PRIMARY KEY, '
                '"Seq" UBIGINT)'
            )
            cursor.execute(rollup_ddl())
            cursor.execute(sketch_ddl())
            _drop_keys(cursor)
            _rebuild_rollup(cursor)
            _ready.add(store)


def _drop_keys(cursor: Any) -> None:
    """Tables from before the rollup was appended to had a primary key (rows were upserted):
    copied once into keyless ones, which accept partial rows."""
    for table, ddl in ((ROLLUP_TABLE, rollup_ddl()), (SKETCH_TABLE, sketch_ddl())):
        keyed = cursor.execute(
            "SELECT count(*) FROM duckdb_constraints() WHERE table_name = ? "
            "AND constraint_type = 'PRIMARY KEY'",
            [table],
        ).fetchall()[0][0]
        if not keyed:
            continue
        log.info("llmops: %s without its primary key (appended to from now on)", table)
        cursor.execute("BEGIN TRANSACTION")
        try:
            cursor.execute(f"ALTER TABLE {table} RENAME TO {table}_keyed")
            cursor.execute(ddl)
            cursor.execute(f"INSERT INTO {table} SELECT * FROM {table}_keyed")
            cursor.execute(f"DROP TABLE {table}_keyed")
            cursor.execute("COMMIT")
        except Exception:
            cursor.execute("ROLLBACK")
            raise


def _rebuild_rollup(cursor: Any) -> None:
    """A database from before ``llmops_rollup`` (or with it emptied): build it once from the
    calls, a day at a time, in one transaction, and drop the old hourly table."""
    old = cursor.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [_OLD_ROLLUP]
    ).fetchall()[0][0]
    if old:
        cursor.execute(f"DROP TABLE {_OLD_ROLLUP}")
    if cursor.execute(f"SELECT count(*) FROM {ROLLUP_TABLE}").fetchall()[0][0]:
        return
    first, last = cursor.execute(
        f'SELECT epoch_ns(min("Timestamp")), epoch_ns(max("Timestamp")) FROM {CALLS_TABLE}'
    ).fetchall()[0]
    if first is None:
        return
    log.info("llmops: building %s and %s from the stored calls", ROLLUP_TABLE, SKETCH_TABLE)
    cursor.execute("BEGIN TRANSACTION")
    try:
        day = first // DAY_NS * DAY_NS
        while day <= last:
            calls = cursor.sql(
                f'SELECT * FROM {CALLS_TABLE} WHERE "Timestamp" >= make_timestamp_ns(?::BIGINT) '
                'AND "Timestamp" < make_timestamp_ns(?::BIGINT)',
                params=[day, day + DAY_NS],
            ).to_arrow_table()
            roll_up(cursor, calls)
            day += DAY_NS
        cursor.execute("COMMIT")
    except Exception:
        cursor.execute("ROLLBACK")
        raise
