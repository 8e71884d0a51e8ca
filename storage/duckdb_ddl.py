"""DuckDB table definitions derived from the Arrow schemas of :mod:`opstrata.schema`."""

from __future__ import annotations

import pyarrow as pa

from opstrata.schema import TABLES, Table

__all__ = [
    "ALERTS_TABLE",
    "BATCH_LOG_TABLE",
    "INCIDENTS_TABLE",
    "SEQ_COLUMN",
    "STORAGE_SCHEMAS",
    "create_statements",
    "duckdb_type",
    "select_list",
    "storage_type",
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


_ENTRY = pa.struct([("key", pa.string()), ("value", pa.string())])


def _has_map(arrow_type: pa.DataType) -> bool:
    if pa.types.is_map(arrow_type):
        return True
    if pa.types.is_list(arrow_type):
        return _has_map(arrow_type.value_type)
    if pa.types.is_struct(arrow_type):
        return any(_has_map(f.type) for f in arrow_type)
    return False


def storage_type(arrow_type: pa.DataType) -> pa.DataType:
    """How a column is stored: attribute maps as lists of ``{key, value}`` structs.

    That is DuckDB's own MAP layout without the per-row key-uniqueness check, which made
    inserts about three times slower; keys are already unique (deduplicated when decoded).
    """
    if pa.types.is_map(arrow_type):
        return pa.list_(_ENTRY)
    if pa.types.is_list(arrow_type):
        return pa.list_(storage_type(arrow_type.value_type))
    if pa.types.is_struct(arrow_type):
        return pa.struct([f.with_type(storage_type(f.type)) for f in arrow_type])
    return arrow_type


STORAGE_SCHEMAS: dict[Table, pa.Schema] = {
    table: pa.schema(
        [f.with_type(storage_type(f.type)) for f in schema] + [(SEQ_COLUMN, pa.uint64())]
    )
    for table, schema in TABLES.items()
}
"""The Arrow schema of each table as inserted: storage types, plus the sequence column."""


def _read_expression(ref: str, arrow_type: pa.DataType, depth: int = 0) -> str:
    if not _has_map(arrow_type):
        return ref
    if pa.types.is_map(arrow_type):
        return f"map_from_entries({ref})"
    if pa.types.is_list(arrow_type):
        var = f"x{depth}"
        inner = _read_expression(var, arrow_type.value_type, depth + 1)
        return f"list_transform({ref}, lambda {var}: {inner})"
    fields = ", ".join(
        f'"{f.name}" := {_read_expression(_quoted(f.name, ref), f.type, depth)}' for f in arrow_type
    )
    return f"struct_pack({fields})"


def _quoted(name: str, parent: str = "") -> str:
    return f'{parent}."{name}"' if parent else f'"{name}"'


def select_list(table: Table) -> str:
    """The SELECT list that reads ``table`` back in its canonical types (maps as MAPs)."""
    return ", ".join(
        f'{_read_expression(_quoted(f.name), f.type)} AS "{f.name}"' for f in TABLES[table]
    )


def create_statements() -> list[str]:
    """``CREATE TABLE IF NOT EXISTS`` for every telemetry table and the batch log."""
    statements = []
    for table, schema in STORAGE_SCHEMAS.items():
        columns = [
            f'"{f.name}" {duckdb_type(f.type)} NOT NULL'
            if f.name == SEQ_COLUMN
            else f'"{f.name}" {duckdb_type(f.type)}'
            for f in schema
        ]
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
