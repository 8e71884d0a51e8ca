"""The plugin's own tables in the store's DuckDB database: ``llmops_calls`` (one row per call)
and ``llmops_messages`` (the stored messages of calls that captured them), written as Arrow
tables from the consumer's thread through the store's per-thread cursor."""

from __future__ import annotations

import threading
from typing import Any

import pyarrow as pa

from opstrata.plugins.llmops.recognise import CALLS
from opstrata.plugins.llmops.span_parts import MESSAGES

__all__ = ["CALLS_TABLE", "MESSAGES_TABLE", "cursor_of", "ensure_tables", "insert"]

CALLS_TABLE = "llmops_calls"
MESSAGES_TABLE = "llmops_messages"

_DUCK = {
    pa.timestamp("ns"): "TIMESTAMP_NS",
    pa.string(): "VARCHAR",
    pa.int64(): "BIGINT",
    pa.bool_(): "BOOLEAN",
}
_created = threading.Lock()
_ready: set[int] = set()


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
    if id(store) in _ready:
        return
    with _created:
        if id(store) not in _ready:
            cursor.execute(_ddl(CALLS_TABLE, CALLS))
            cursor.execute(_ddl(MESSAGES_TABLE, MESSAGES))
            _ready.add(id(store))


def insert(cursor: Any, calls: pa.Table, messages: pa.Table) -> None:
    """Both tables in one transaction, so a call never shows without its messages."""
    pending_calls = calls.combine_chunks()  # noqa: F841 - DuckDB reads it by name
    pending_messages = messages.combine_chunks()  # noqa: F841
    cursor.execute("BEGIN TRANSACTION")
    try:
        if calls.num_rows:
            cursor.execute(f"INSERT INTO {CALLS_TABLE} SELECT * FROM pending_calls")
        if messages.num_rows:
            cursor.execute(f"INSERT INTO {MESSAGES_TABLE} SELECT * FROM pending_messages")
        cursor.execute("COMMIT")
    except Exception:
        cursor.execute("ROLLBACK")
        raise
