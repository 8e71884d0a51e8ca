"""Built-in plugin: the embedded DuckDB store, registered like any other store."""

from __future__ import annotations

from collections.abc import Callable

from opstrata.hookspecs import hookimpl
from opstrata.settings import Settings
from opstrata.storage.duckdb_store import DuckDBStore


def _open(settings: Settings) -> DuckDBStore:
    return DuckDBStore(
        settings.data_path,
        commit_max_rows=settings.storage.commit_max_rows,
        threads=settings.storage.duckdb_threads,
        memory_limit=settings.storage.duckdb_memory_limit,
        checkpoint_threshold=settings.storage.duckdb_checkpoint_threshold,
        row_group_size=settings.storage.duckdb_row_group_size,
        fill_wait=settings.storage.duckdb_fill_wait_seconds,
    )


@hookimpl
def opstrata_register_stores(
    register: Callable[[str, Callable[[Settings], DuckDBStore]], None],
) -> None:
    register("duckdb", _open)
