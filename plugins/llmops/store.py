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

__all__ = [
    "CALLS_TABLE",
    "HOUR_NS",
    "MESSAGES_TABLE",
    "PROGRESS_TABLE",
    "ROLLUP_DIMENSIONS",
    "ROLLUP_TABLE",
    "cursor_of",
    "ensure_tables",
    "roll_up",
]

CALLS_TABLE = "llmops_calls"
MESSAGES_TABLE = "llmops_messages"
PROGRESS_TABLE = "llmops_progress"
ROLLUP_TABLE = "llmops_hourly"
ROLLUP_DIMENSIONS = ("ServiceName", "Provider", "Model", "Operation")
"""Columns ``llmops_hourly`` keeps calls by, per hour: usage queries that group and filter only
by these, in whole hours, read it instead of the calls. Few and of low cardinality, so the
table stays small (hours by services by models); prompts, users and sessions go to the calls."""
HOUR_NS = 3_600_000_000_000
_ROLLUP_MEASURES = (
    ("Calls", "count(*)"),
    ("Errors", 'count(*) FILTER (WHERE "IsError")'),
    ("InputTokens", 'coalesce(sum("InputTokens"), 0)'),
    ("OutputTokens", 'coalesce(sum("OutputTokens"), 0)'),
    ("CacheReadTokens", 'coalesce(sum("CacheReadTokens"), 0)'),
    ("CacheWriteTokens", 'coalesce(sum("CacheWriteTokens"), 0)'),
    ("ReasoningTokens", 'coalesce(sum("ReasoningTokens"), 0)'),
    ("TotalTokens", 'coalesce(sum("TotalTokens"), 0)'),
    ("CostPicoUsd", 'coalesce(sum("CostPicoUsd"), 0)'),
    ("UnpricedCalls", 'count(*) FILTER (WHERE "CostPicoUsd" IS NULL)'),
)


def _rollup_ddl() -> str:
    dims = ", ".join(f'"{d}" VARCHAR' for d in ROLLUP_DIMENSIONS)
    measures = ", ".join(f'"{m}" HUGEINT' for m, _ in _ROLLUP_MEASURES)
    key = ", ".join(f'"{d}"' for d in ("Hour", *ROLLUP_DIMENSIONS))
    return (
        f'CREATE TABLE IF NOT EXISTS {ROLLUP_TABLE} ("Hour" BIGINT, {dims}, {measures}, '
        f"PRIMARY KEY ({key}))"
    )


def roll_up(cursor: Any, calls: Any) -> None:
    """Add ``calls`` (an Arrow table of ``llmops_calls`` rows, or the name of a table holding
    them) to ``llmops_hourly``, summing into existing hours: an upsert per key, not a row per
    write."""
    source = calls if isinstance(calls, str) else "llmops_rolling_up"
    if not isinstance(calls, str):
        cursor.register(source, calls)
    dims = ", ".join(f'"{d}"' for d in ROLLUP_DIMENSIONS)
    measures = ", ".join(f'{expr} AS "{name}"' for name, expr in _ROLLUP_MEASURES)
    updates = ", ".join(
        f'"{m}" = {ROLLUP_TABLE}."{m}" + EXCLUDED."{m}"' for m, _ in _ROLLUP_MEASURES
    )
    cursor.execute(
        f'INSERT INTO {ROLLUP_TABLE} SELECT epoch_ns("Timestamp") // {HOUR_NS} * {HOUR_NS} '
        f'AS "Hour", {dims}, {measures} FROM {source} GROUP BY ALL '
        f"ON CONFLICT DO UPDATE SET {updates}"
    )
    if not isinstance(calls, str):
        cursor.unregister(source)


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
            for name in ("System", "Input", "Output"):  # a table from before raw JSON was kept
                cursor.execute(
                    f'ALTER TABLE {MESSAGES_TABLE} ADD COLUMN IF NOT EXISTS "{name}" VARCHAR'
                )
            cursor.execute(
                f'CREATE TABLE IF NOT EXISTS {PROGRESS_TABLE} ("Consumer" VARCHAR PRIMARY KEY, '
                '"Seq" UBIGINT)'
            )
            cursor.execute(_rollup_ddl())
            _ready.add(store)
