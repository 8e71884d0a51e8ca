"""Rows in the views' layout inserted by SQL, and the upgrade of a data dir from before
resources were stored once.

The writer finds each row's ``ResourceId`` from the Arrow buffers (duckdb_resources). Rows that
are already in DuckDB — an old data dir's tables, or a benchmark's generated tables — get theirs
from DuckDB's own ``hash()`` of the attribute list instead: the id only has to name one resource
in ``otel_resources``. The writer finds such a resource by that id when it meets it again (the
store's ``_adopt_stored``), so it keeps one id; only a resource first met under a different
DuckDB ``hash()`` (another DuckDB version) would be stored under two ids, which costs one row of
``otel_resources`` and changes no query.
"""

from __future__ import annotations

import logging

import duckdb
import pyarrow as pa

from opstrata.schema import TABLES, Table
from opstrata.storage.duckdb_ddl import (
    PHYSICAL_SCHEMAS,
    RESOURCE_COLUMN,
    RESOURCES_TABLE,
    create_statements,
    physical,
    view_statement,
)

__all__ = ["insert_view_rows", "migrate"]

log = logging.getLogger(__name__)


def insert_view_rows(con: duckdb.DuckDBPyConnection, table: Table, source: str | pa.Table) -> None:
    """Insert the rows of ``source`` (a table or view name, or an Arrow table, in the view's
    columns and storage types) into ``table``'s physical table, and their resources not yet
    stored into ``otel_resources``. Run it inside a transaction when the two inserts must land
    together."""
    if not isinstance(source, str):
        # Registered by name: DuckDB 2.0's replacement scan looks for Python variables in the
        # calling frame only, not in this function's caller.
        con.register("_opstrata_view_rows", source)
        try:
            insert_view_rows(con, table, "_opstrata_view_rows")
        finally:
            con.unregister("_opstrata_view_rows")
        return
    con.execute(
        f'INSERT INTO {RESOURCES_TABLE} SELECT "ResourceId", any_value(a) FROM '
        f'(SELECT hash("{RESOURCE_COLUMN}") AS "ResourceId", "{RESOURCE_COLUMN}" AS a '
        f"FROM {source}) "
        f'WHERE "ResourceId" NOT IN (SELECT "ResourceId" FROM {RESOURCES_TABLE}) '
        'GROUP BY "ResourceId"'
    )
    columns = ", ".join(
        f'hash("{RESOURCE_COLUMN}")' if f.name == "ResourceId" else f'"{f.name}"'
        for f in PHYSICAL_SCHEMAS[table]
    )
    # Insertion order is preserved (DuckDB's default), so row ids keep the old order.
    con.execute(f"INSERT INTO {physical(table)} SELECT {columns} FROM {source}")


def _base_tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    rows = con.execute(
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_type = 'BASE TABLE' AND table_schema = 'main'"
    ).fetchall()
    return {name for (name,) in rows}


def migrate(con: duckdb.DuckDBPyConnection) -> list[Table]:
    """Upgrade the telemetry tables of a data dir written before resources were stored once
    (``otel_traces`` etc. were tables; now they are views): each table's rows move to its
    physical table in one transaction, then the old table is dropped. Returns the tables
    migrated (none for a new or current data dir). A crash part way leaves every table either
    old or new, and the next start finishes the rest."""
    old = [table for table in TABLES if table.value in _base_tables(con)]
    if not old:
        return []
    statements = create_statements()
    for table in old:
        rows = con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]
        log.warning("upgrading %s (%d rows): resources stored once", table, rows)
        con.execute("BEGIN TRANSACTION")
        try:
            # The resources table and this table's physical table (not its view, whose name
            # the old table still holds).
            for statement in statements:
                if statement.startswith(
                    (
                        f"CREATE TABLE IF NOT EXISTS {RESOURCES_TABLE} ",
                        f"CREATE TABLE IF NOT EXISTS {physical(table)} ",
                    )
                ):
                    con.execute(statement)
            insert_view_rows(con, table, table.value)
            con.execute(f"DROP TABLE {table}")
            con.execute(view_statement(table))
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
    con.execute("CHECKPOINT")
    return old
