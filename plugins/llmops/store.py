"""The plugin's own tables in the store's DuckDB database: ``llmops_calls`` (one row per call),
``llmops_messages`` (the stored messages of calls that captured them) and ``llmops_progress``
(the last batch whose calls are stored), reached through the store's per-thread cursor."""

from __future__ import annotations

import threading
import weakref
from typing import Any

import pyarrow as pa

from opstrata.plugins.llmops.recognise import CALLS
from opstrata.plugins.llmops.span_parts import MESSAGES

__all__ = ["CALLS_TABLE", "MESSAGES_TABLE", "PROGRESS_TABLE", "cursor_of", "ensure_tables"]

CALLS_TABLE = "llmops_calls"
MESSAGES_TABLE = "llmops_messages"
PROGRESS_TABLE = "llmops_progress"

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
            cursor.execute(_ddl(MESSAGES_TABLE, MESSAGES))
            cursor.execute(
                f'CREATE TABLE IF NOT EXISTS {PROGRESS_TABLE} ("Consumer" VARCHAR PRIMARY KEY, '
                '"Seq" UBIGINT)'
            )
            _ready.add(store)
