"""DuckDB table definitions derived from the Arrow schemas of :mod:`opstrata.schema`."""

from __future__ import annotations

import pyarrow as pa

from opstrata.schema import TABLES

__all__ = [
    "ALERTS_TABLE",
    "BATCH_LOG_TABLE",
    "INCIDENTS_TABLE",
    "SEQ_COLUMN",
    "create_statements",
    "duckdb_type",
]

SEQ_COLUMN = "_Seq"
"""Added to every telemetry table: the sequence number of the write that committed the row."""
BATCH_LOG_TABLE = "opstrata_batches"
ALERTS_TABLE = "opstrata_alerts"
INCIDENTS_TABLE = "opstrata_incidents"

_SCALARS = {
    pa.string(): "VARCHAR",
    pa.int64(): "BIGINT",
    pa.int32(): "INTEGER",
    pa.uint64(): "UBIGINT",
    pa.uint32(): "UINTEGER",
    pa.uint8(): "UTINYINT",
    pa.float64(): "DOUBLE",
    pa.bool_(): "BOOLEAN",
    pa.timestamp("ns"): "TIMESTAMP_NS",
}


def duckdb_type(arrow_type: pa.DataType) -> str:
    """The DuckDB column type that reads the Arrow type without loss."""
    if arrow_type in _SCALARS:
        return _SCALARS[arrow_type]
    if pa.types.is_map(arrow_type):
        return f"MAP({duckdb_type(arrow_type.key_type)}, {duckdb_type(arrow_type.item_type)})"
    if pa.types.is_list(arrow_type):
        return f"{duckdb_type(arrow_type.value_type)}[]"
    if pa.types.is_struct(arrow_type):
        fields = ", ".join(f'"{f.name}" {duckdb_type(f.type)}' for f in arrow_type)
        return f"STRUCT({fields})"
    raise TypeError(f"no DuckDB type for {arrow_type}")


def create_statements() -> list[str]:
    """``CREATE TABLE IF NOT EXISTS`` for every telemetry table and the batch log."""
    statements = []
    for table, schema in TABLES.items():
        columns = [f'"{f.name}" {duckdb_type(f.type)}' for f in schema]
        columns.append(f'"{SEQ_COLUMN}" UBIGINT NOT NULL')
        statements.append(f"CREATE TABLE IF NOT EXISTS {table} ({', '.join(columns)})")
    statements.append(
        f"CREATE TABLE IF NOT EXISTS {BATCH_LOG_TABLE} ("
        '"Seq" UBIGINT NOT NULL, "Signal" VARCHAR NOT NULL, "Tables" VARCHAR[] NOT NULL, '
        '"Rows" UBIGINT NOT NULL, "CommittedAt" TIMESTAMP_NS NOT NULL)'
    )
    statements.append(
        f"CREATE TABLE IF NOT EXISTS {ALERTS_TABLE} ("
        '"Id" VARCHAR PRIMARY KEY, "Key" VARCHAR NOT NULL, "Plugin" VARCHAR NOT NULL, '
        '"Layer" VARCHAR NOT NULL, "Kind" VARCHAR NOT NULL, "Status" VARCHAR NOT NULL, '
        '"IncidentId" VARCHAR, "FirstSeen" BIGINT NOT NULL, "LastSeen" BIGINT NOT NULL, '
        '"Body" VARCHAR NOT NULL)'
    )
    statements.append(
        f"CREATE TABLE IF NOT EXISTS {INCIDENTS_TABLE} ("
        '"Id" VARCHAR PRIMARY KEY, "Status" VARCHAR NOT NULL, "Severity" VARCHAR NOT NULL, '
        '"Opened" BIGINT NOT NULL, "Updated" BIGINT NOT NULL, "Body" VARCHAR NOT NULL)'
    )
    return statements
