"""The plugin's own tables in the store's DuckDB database: ``llmops_calls`` (one row per call: a
view of ``llmops_call_rows`` joined with ``llmops_dims``, :mod:`.dims`),
``llmops_message_blocks`` (the messages spans carried, compressed blocks: :mod:`.blocks`),
``llmops_messages`` (messages from log events, and all of them before blocks), ``llmops_rollup`` and
``llmops_sketch`` (sums and sketches per hour and day, :mod:`.rollup`) and ``llmops_progress``
(the last batch whose calls are stored), reached through the store's per-thread cursor."""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from opstrata.plugins.llmops.blocks import blocks_ddl
from opstrata.plugins.llmops.dims import (
    CALL_ROWS,
    DIM_COLUMNS,
    DIMS_TABLE,
    ROWS_TABLE,
    view_ddl,
)
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
    "transaction",
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


@contextlib.contextmanager
def transaction(cursor: Any) -> Iterator[None]:
    """The statements of the ``with`` block in one transaction: committed at its end, rolled
    back if it (or the commit) raises."""
    cursor.execute("BEGIN TRANSACTION")
    try:
        yield
        cursor.execute("COMMIT")
    except Exception:
        cursor.execute("ROLLBACK")
        raise


def _ddl(table: str, schema: pa.Schema) -> str:
    columns = ", ".join(f'"{f.name}" {_DUCK[f.type]}' for f in schema)
    return f"CREATE TABLE IF NOT EXISTS {table} ({columns})"


def _dims_ddl() -> str:
    columns = ", ".join(f'"{c}" VARCHAR' for c in DIM_COLUMNS)
    return f'CREATE TABLE IF NOT EXISTS {DIMS_TABLE} ("DimId" BIGINT PRIMARY KEY, {columns})'


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
            _calls_tables(cursor)
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


def _calls_tables(cursor: Any) -> None:
    """``llmops_dims``, ``llmops_call_rows`` and the ``llmops_calls`` view over them; a
    ``llmops_calls`` table of an earlier release is moved into them first."""
    kind = cursor.execute(
        "SELECT table_type FROM information_schema.tables WHERE table_name = ? "
        "AND table_schema = current_schema()",
        [CALLS_TABLE],
    ).fetchall()
    if kind and kind[0][0] == "BASE TABLE":
        _move_calls(cursor)
        return
    _ensure_new_tables(cursor)
    cursor.execute(view_ddl(CALLS_TABLE))


def _ensure_new_tables(cursor: Any) -> None:
    """``llmops_dims`` and ``llmops_call_rows``, with every column of this release."""
    cursor.execute(_dims_ddl())
    cursor.execute(_ddl(ROWS_TABLE, CALL_ROWS))
    # Columns added to CALLS since the tables were made (a new one stays NULL in old rows).
    have = set(
        cursor.execute(
            "SELECT table_name, column_name FROM duckdb_columns() WHERE table_name IN (?, ?)",
            [ROWS_TABLE, DIMS_TABLE],
        ).fetchall()
    )
    wanted = [(ROWS_TABLE, f.name, _DUCK[f.type]) for f in CALL_ROWS]
    wanted += [(DIMS_TABLE, name, "VARCHAR") for name in DIM_COLUMNS]
    for table, name, kind in wanted:
        if (table, name) not in have:
            cursor.execute(f'ALTER TABLE {table} ADD COLUMN "{name}" {kind}')


_MOVE_ROWS = 1 << 20
"""Calls moved per statement: each part is sorted by rowid (kept in the order written)."""


def _move_calls(cursor: Any) -> None:
    """An earlier release's ``llmops_calls`` table becomes ``llmops_dims`` (its distinct
    combinations, numbered) and ``llmops_call_rows`` (its calls, in the order they were
    written), and the view takes its name: one transaction, so a crash leaves the table."""
    log.info("llmops: moving %s into %s and %s", CALLS_TABLE, ROWS_TABLE, DIMS_TABLE)
    with transaction(cursor):
        for f in [*CALLS, pa.field("MessageBlock", pa.int64())]:  # an older table may lack one
            cursor.execute(
                f'ALTER TABLE {CALLS_TABLE} ADD COLUMN IF NOT EXISTS "{f.name}" {_DUCK[f.type]}'
            )
        names = ", ".join(f'"{c}"' for c in DIM_COLUMNS)
        # The new tables may be there already (made by hand, or a later release's start that
        # found the table back): combinations already numbered keep their ids, new ones are
        # numbered after the last, and rows go in by column name.
        _ensure_new_tables(cursor)
        cursor.execute(
            f'INSERT INTO {DIMS_TABLE} ("DimId", {names}) '
            f'SELECT (SELECT coalesce(max("DimId"), 0) FROM {DIMS_TABLE}) '
            f"+ row_number() OVER (ORDER BY {names}), * FROM ("
            f"SELECT DISTINCT {names} FROM {CALLS_TABLE} EXCEPT SELECT {names} FROM {DIMS_TABLE})"
        )
        # Each combination's lowest id, should the table hold one twice.
        ids = f'(SELECT min("DimId") AS "DimId", {names} FROM {DIMS_TABLE} GROUP BY ALL)'
        same = " AND ".join(f'c."{n}" IS NOT DISTINCT FROM d."{n}"' for n in DIM_COLUMNS)
        moved = {"DimId": 'd."DimId"', "Seq": "NULL"}  # Seq: stored by no write of theirs
        columns = ", ".join(moved.get(f.name, f'c."{f.name}"') for f in CALL_ROWS)
        targets = ", ".join(f'"{f.name}"' for f in CALL_ROWS)
        last = cursor.execute(f"SELECT coalesce(max(rowid), -1) FROM {CALLS_TABLE}").fetchall()
        for first in range(0, last[0][0] + 1, _MOVE_ROWS):
            cursor.execute(
                f"INSERT INTO {ROWS_TABLE} ({targets}) SELECT {columns} FROM {CALLS_TABLE} c "
                f"JOIN {ids} d ON {same} WHERE c.rowid >= ? AND c.rowid < ? "
                "ORDER BY c.rowid",
                [first, first + _MOVE_ROWS],
            )
        cursor.execute(f"DROP TABLE {CALLS_TABLE}")
        cursor.execute(view_ddl(CALLS_TABLE))


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
        with transaction(cursor):
            cursor.execute(f"ALTER TABLE {table} RENAME TO {table}_keyed")
            cursor.execute(ddl)
            cursor.execute(f"INSERT INTO {table} SELECT * FROM {table}_keyed")
            cursor.execute(f"DROP TABLE {table}_keyed")


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
    with transaction(cursor):
        day = first // DAY_NS * DAY_NS
        while day <= last:
            calls = cursor.sql(
                f'SELECT * FROM {CALLS_TABLE} WHERE "Timestamp" >= make_timestamp_ns(?::BIGINT) '
                'AND "Timestamp" < make_timestamp_ns(?::BIGINT)',
                params=[day, day + DAY_NS],
            ).to_arrow_table()
            roll_up(cursor, calls)
            day += DAY_NS
