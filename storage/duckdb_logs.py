"""Log search on ``otel_logs``: newest first, keyset-paged by (time, row id)."""

from __future__ import annotations

import duckdb
import pyarrow as pa

from opstrata.schema import Table
from opstrata.storage.duckdb_ddl import SEQ_COLUMN, physical, select_list, with_resources
from opstrata.storage.duckdb_sql import Where, decode_cursor, encode_cursor, ts_param
from opstrata.storage.query_types import LogFilter, LogPage

__all__ = ["search_logs"]


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def search_logs(
    con: duckdb.DuckDBPyConnection,
    f: LogFilter,
    limit: int,
    cursor: str | None,
    seq_ranges: list[tuple[int, int]] | None,
) -> LogPage:
    """Log records matching ``f``; ``seq_ranges`` (from the trace index) narrows a trace-id
    search to the row groups that can hold it."""
    where = Where().window("Timestamp", f.start, f.end)
    if f.service is not None:
        where.add('"ServiceName" = ?', f.service)
    if f.min_severity is not None:
        where.add('"SeverityNumber" >= ?', f.min_severity)
    if f.contains:
        where.add("\"Body\" ILIKE ? ESCAPE '\\'", _like_pattern(f.contains))
    if f.trace_id is not None:
        where.add('"TraceId" = ?', f.trace_id.lower())
    where.attributes("LogAttributes", f.attributes)
    where.resources(f.resource)
    if cursor is not None:
        ts, row_hex = decode_cursor(cursor)
        row_id = int(row_hex, 16)
        where.add(f'"Timestamp" <= {ts_param()}', ts)
        where.add(f'("Timestamp" < {ts_param()} OR rowid < ?)', ts, row_id)
    # The page is chosen on the physical table (its rowid breaks ties), then joined to the
    # resources of its rows only.
    rows = physical(Table.LOGS)
    if seq_ranges:
        parts = []
        params: list[object] = []
        for lo, hi in seq_ranges:
            parts.append(
                f"SELECT *, rowid AS _row FROM {rows} WHERE {where.sql()} "
                f'AND "{SEQ_COLUMN}" BETWEEN ? AND ?'
            )
            params += [*where.params, lo, hi]
        source = " UNION ALL ".join(parts)
    else:
        source = f"SELECT *, rowid AS _row FROM {rows} WHERE {where.sql()}"
        params = list(where.params)
    order = 'ORDER BY "Timestamp" DESC, _row DESC'
    page = with_resources(Table.LOGS, f"SELECT * FROM ({source}) {order} LIMIT ?", ("_row",))
    table = con.sql(
        f"SELECT {select_list(Table.LOGS)}, _row FROM {page} {order}",
        params=[*params, limit],
    ).to_arrow_table()
    next_cursor = None
    if table.num_rows == limit and limit > 0:
        last = table.slice(limit - 1, 1)
        ts = last.column("Timestamp").cast(pa.int64())[0].as_py()
        next_cursor = encode_cursor(ts, format(last.column("_row")[0].as_py(), "x"))
    return LogPage(table.drop_columns(["_row"]), next_cursor)
