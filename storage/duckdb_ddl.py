"""DuckDB table definitions derived from the Arrow schemas of :mod:`opstrata.schema`."""

from __future__ import annotations

import pyarrow as pa

from opstrata.schema import TABLES, Table

__all__ = [
    "ALERTS_TABLE",
    "BATCH_LOG_TABLE",
    "INCIDENTS_TABLE",
    "PHYSICAL_SCHEMAS",
    "RESOURCES_TABLE",
    "RESOURCE_COLUMN",
    "SEQ_COLUMN",
    "STORAGE_SCHEMAS",
    "create_statements",
    "duckdb_type",
    "physical",
    "select_list",
    "storage_type",
    "view_statement",
    "with_resources",
]

SEQ_COLUMN = "_Seq"
"""Added to every telemetry table: the sequence number of the write that committed the row."""
BATCH_LOG_TABLE = "opstrata_batches"
ALERTS_TABLE = "opstrata_alerts"
RESOURCES_TABLE = "otel_resources"
"""Each resource once: ``ResourceId`` (a hash of the attribute list) and ``ResourceAttributes``."""
RESOURCE_COLUMN = "ResourceAttributes"
ROWS_SUFFIX = "_rows"
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
"""The Arrow schema of each table as the views show it: storage types, plus the sequence column."""

PHYSICAL_SCHEMAS: dict[Table, pa.Schema] = {
    table: pa.schema(
        [pa.field("ResourceId", pa.uint64()) if f.name == RESOURCE_COLUMN else f for f in schema]
    )
    for table, schema in STORAGE_SCHEMAS.items()
}
"""The Arrow schema of each physical table as inserted: ``ResourceId`` in place of the
resource's attributes (duckdb_resources)."""


def physical(table: Table) -> str:
    """The physical table behind the view ``table``: ``otel_traces`` -> ``otel_traces_rows``.
    Its ``rowid`` is the row id (a view has none)."""
    return f"{Table(table)}{ROWS_SUFFIX}"


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


def _joined(table: Table) -> str:
    columns = ", ".join(
        f'r."{f.name}"' if f.name == RESOURCE_COLUMN else f't."{f.name}"'
        for f in STORAGE_SCHEMAS[table]
    )
    return (
        f"SELECT {columns} FROM {physical(table)} t "
        f'JOIN {RESOURCES_TABLE} r ON r."ResourceId" = t."ResourceId"'
    )


def view_statement(table: Table) -> str:
    """The view with the table's columns as before resources were stored once (the Collector's
    ClickHouse exporter columns, then ``_Seq``): the physical rows joined to their resource.
    Each ``ResourceId`` is in ``otel_resources`` once (its primary key; inserted in the
    transaction of its first row), so the join neither drops nor repeats a row."""
    return f"CREATE VIEW IF NOT EXISTS {table} AS {_joined(table)}"


def with_resources(table: Table, inner: str, extra: tuple[str, ...] = ()) -> str:
    """A subquery with the view's columns (and ``extra`` ones of ``inner``) over ``inner``, a
    query of the physical table's columns: the resources joined to the rows it selected, not to
    the whole table (a top-N or a row-id range on the physical table runs first; a view has no
    ``rowid``)."""
    columns = ", ".join(
        [
            f'r."{f.name}"' if f.name == RESOURCE_COLUMN else f't."{f.name}"'
            for f in STORAGE_SCHEMAS[table]
        ]
        + [f't."{name}"' for name in extra]
    )
    return (
        f"(SELECT {columns} FROM ({inner}) t "
        f'JOIN {RESOURCES_TABLE} r ON r."ResourceId" = t."ResourceId")'
    )


def create_statements() -> list[str]:
    """``CREATE TABLE IF NOT EXISTS`` for every telemetry table and the batch log."""
    statements = [
        f'CREATE TABLE IF NOT EXISTS {RESOURCES_TABLE} ("ResourceId" UBIGINT PRIMARY KEY, '
        f'"{RESOURCE_COLUMN}" {duckdb_type(storage_type(pa.map_(pa.string(), pa.string())))})'
    ]
    for table, schema in PHYSICAL_SCHEMAS.items():
        columns = [
            f'"{f.name}" {duckdb_type(f.type)} NOT NULL'
            if f.name in (SEQ_COLUMN, "ResourceId")
            else f'"{f.name}" {duckdb_type(f.type)}'
            for f in schema
        ]
        statements.append(f"CREATE TABLE IF NOT EXISTS {physical(table)} ({', '.join(columns)})")
        statements.append(view_statement(table))
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
