"""The read side of whichever store is running.

A store can serve queries itself (``store.queries()`` returning a ``TelemetryQueries``); the
embedded DuckDB store gets its read side from ``storage/duckdb_queries.py`` (``DuckDBQueries``),
kept in modules of its own beside the writer.
"""

from __future__ import annotations

from typing import Any

from opstrata.storage.base import TelemetryQueries

__all__ = ["queries_for"]


def queries_for(store: Any) -> TelemetryQueries:
    """The ``TelemetryQueries`` of ``store``."""
    own = getattr(store, "queries", None)
    if callable(own):
        return own()
    from opstrata.storage.duckdb_store import DuckDBStore

    if isinstance(store, DuckDBStore):
        from opstrata.storage.duckdb_queries import DuckDBQueries

        return DuckDBQueries(store)
    raise TypeError(f"{type(store).__name__} serves no queries")
