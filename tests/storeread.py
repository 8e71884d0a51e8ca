"""Read what a stopped server stored, straight from its DuckDB file."""

from __future__ import annotations

from pathlib import Path

import duckdb

from opstrata.api.convert import rows_with_int_times
from opstrata.schema import Table
from opstrata.storage.duckdb_ddl import select_list


def read_table(
    data_dir: Path, table: str, where: str = "", params: list | None = None
) -> list[dict]:
    """Rows of ``table`` (timestamps as int nanoseconds, maps as dicts) of a stopped server."""
    con = duckdb.connect(str(Path(data_dir) / "opstrata.duckdb"), read_only=True)
    try:
        query = f"SELECT {select_list(Table(table))} FROM {table} {where}"
        return rows_with_int_times(con.sql(query, params=params or []).to_arrow_table())
    finally:
        con.close()
