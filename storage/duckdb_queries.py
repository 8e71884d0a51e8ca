"""The read side of the DuckDB store: traces, span search, services (RED) and operations.

Logs, the service map and metrics live in their own modules; :class:`DuckDBQueries` puts them
behind one object that implements ``TelemetryQueries`` (``storage/base.py``).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from opstrata.schema import Table
from opstrata.storage import duckdb_logs, duckdb_metrics_queries, duckdb_servicemap
from opstrata.storage.duckdb_ddl import (
    SEQ_COLUMN,
    STORAGE_SCHEMAS,
    physical,
    select_list,
    with_resources,
)
from opstrata.storage.duckdb_sql import Where, decode_cursor, encode_cursor, ts_param
from opstrata.storage.duckdb_trace_index import TraceIndex
from opstrata.storage.query_types import (
    Exemplar,
    LogFilter,
    LogPage,
    MetricInfo,
    MetricRange,
    MetricSeries,
    Operation,
    REDPoint,
    ServiceMap,
    ServiceRED,
    SpanFilter,
    SpanPage,
    TimeWindow,
)

__all__ = ["ENTRY_SPAN_SQL", "DuckDBQueries"]

ENTRY_SPAN_SQL = "(\"SpanKind\" IN ('Server', 'Consumer') OR \"ParentSpanId\" = '')"
"""A request of a service: a server or consumer span, or the root span of a trace."""
_QUANTILES = 'approx_quantile("Duration"::DOUBLE, [0.5, 0.95, 0.99])'
"""Approximate (t-digest): its state has a fixed size per group, where ``quantile_cont`` keeps
every value and cannot spill, so at the 256MB ``duckdb_memory_limit`` it ran out of memory on
the design's 10M spans (docs/api.md gives the error). DOUBLE: on integers it would truncate."""
_HOUR = 3600 * 10**9
_SPANS = physical(Table.TRACES)
"""What queries that need no resource attributes read: the physical table, without the view's
join (resources stored once; a filter on them is a semi-join, ``Where.resources``)."""
_PART = "_Part"
"""Which part of a trace read a row came from: 0 the indexed ranges, 1 the unindexed tail."""
_STORED_COLUMNS = ", ".join(
    f'"{f.name}"' for f in STORAGE_SCHEMAS[Table.TRACES] if f.name != SEQ_COLUMN
)


def _q(values: list[float] | None) -> tuple[float | None, float | None, float | None]:
    if not values:
        return None, None, None
    return values[0], values[1], values[2]


class DuckDBQueries:
    """``TelemetryQueries`` over a running ``DuckDBStore`` (through its per-thread readers)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.index = TraceIndex(store)

    def start(self) -> None:
        self.index.ensure_tables()
        self.index.start()

    def stop(self) -> None:
        self.index.stop()

    @property
    def _con(self):
        return self.store.reader()

    # -- time ----------------------------------------------------------------------------------

    def latest(self, table: Table) -> int | None:
        """The newest event time stored in ``table`` (Unix ns), ``None`` when it is empty."""
        column = "TimeUnix" if table.value.startswith("otel_metrics") else "Timestamp"
        # fetchall, never fetchone: an unfinished result blocks the next query on this cursor.
        rows = self._con.execute(
            f'SELECT epoch_ns(max("{column}")) FROM {physical(table)}'
        ).fetchall()
        return None if not rows or rows[0][0] is None else int(rows[0][0])

    def window(self, start: int | None, end: int | None, table: Table = Table.TRACES) -> TimeWindow:
        """The asked-for window; a missing end is the newest event time stored (event time, not
        the wall clock), a missing start one hour before the end."""
        if end is None:
            latest = self.latest(table) if start is None else None
            end = (latest + 1) if latest is not None else (start or 0) + _HOUR
            if start is not None and end <= start:
                end = start + _HOUR
        if start is None:
            start = end - _HOUR
        return TimeWindow(start, end)

    # -- traces --------------------------------------------------------------------------------

    def trace(self, trace_id: str) -> pa.Table:
        return self.traces([trace_id])

    def traces(self, trace_ids: list[str]) -> pa.Table:
        """Every span of the traces, in start-time order, found through the trace index."""
        return self._traces(trace_ids, select_list(Table.TRACES))

    def trace_rows(self, trace_ids: list[str]) -> pa.Table:
        """:meth:`traces` as stored: attribute maps as lists of ``{key, value}`` structs and no
        ``_Seq``. Turning them into MAPs costs DuckDB more than the read of a small trace
        (~2 ms); ``opstrata.api.trace_render`` takes either layout."""
        return self._traces(trace_ids, _STORED_COLUMNS)

    def _traces(self, trace_ids: list[str], columns: str) -> pa.Table:
        if not trace_ids:
            return self._no_spans(columns)
        ids = sorted({t.lower() for t in trace_ids})
        where = self.index.locate(Table.TRACES, ids)
        tail = None if where.tail_empty else where.tail
        if not where.row_ranges and tail is None:  # not in the index, nothing committed since
            return self._no_spans(columns)
        table = self._read_ranges("rowid", where.row_ranges, tail, ids, columns)
        found = pc.sum(pc.equal(table.column(_PART), 0)).as_py() or 0
        if found < where.expected_rows:  # row ids moved (or a key collision): read by _Seq
            seq = f'"{SEQ_COLUMN}"'
            table = self._read_ranges(seq, where.seq_ranges, tail, ids, columns)
        table = table.drop_columns([_PART])
        return table.sort_by([("Timestamp", "ascending"), ("SpanId", "ascending")])

    def _no_spans(self, columns: str) -> pa.Table:
        return self._con.sql(f"SELECT {columns} FROM {Table.TRACES} LIMIT 0").to_arrow_table()

    def _read_ranges(
        self,
        column: str,
        ranges: list[tuple[int, int]],
        tail: int | None,
        ids: list[str],
        columns: str,
    ) -> pa.Table:
        """Spans of the traces ``ids`` within inclusive ranges of ``column`` (a constant name),
        tagged ``_Part`` 0, and unless ``tail`` is None those committed since the index
        (``_Seq >= tail``), tagged 1.

        One statement: each query costs DuckDB ~0.5-1 ms of planning before it reads a row. One
        ``UNION ALL`` branch per range, since a disjunction of ranges would defeat row-group
        skipping. Ids are compared with ``=`` / ``IN (?, ?)``: a semi-join on an unnested list
        costs a hash join per branch.
        """
        match = '"TraceId" = ?' if len(ids) == 1 else f'"TraceId" IN ({", ".join("?" * len(ids))})'
        parts = []
        params: list[object] = []
        # Over the physical table (its rowid; filters reach the scan), resources joined after.
        for lo, hi in ranges:
            parts.append(
                f'SELECT 0 AS "{_PART}", * FROM {_SPANS} WHERE {column} BETWEEN ? AND ? AND {match}'
            )
            params += [lo, hi, *ids]
        if tail is not None:
            parts.append(
                f'SELECT 1 AS "{_PART}", * FROM {_SPANS} WHERE "{SEQ_COLUMN}" >= ? AND {match}'
            )
            params += [tail, *ids]
        if not parts:
            return self._con.sql(
                f'SELECT 0 AS "{_PART}", {columns} FROM {Table.TRACES} LIMIT 0'
            ).to_arrow_table()
        rows = with_resources(Table.TRACES, " UNION ALL ".join(parts), (_PART,))
        return self._con.sql(
            f'SELECT "{_PART}", {columns} FROM {rows}', params=params
        ).to_arrow_table()

    def search_spans(self, f: SpanFilter, limit: int, cursor: str | None = None) -> SpanPage:
        where = _span_where(f)
        if cursor is not None:
            ts, span_id = decode_cursor(cursor)
            # The first condition alone lets DuckDB skip row groups; the second breaks ties.
            where.add(f'"Timestamp" <= {ts_param()}', ts)
            where.add(f'("Timestamp" < {ts_param()} OR "SpanId" < ?)', ts, span_id)
        order = 'ORDER BY "Timestamp" DESC, "SpanId" DESC'
        page = with_resources(
            Table.TRACES,
            f"SELECT * FROM {_SPANS} WHERE {where.sql()} {order} LIMIT ?",
        )
        table = self._con.sql(
            f"SELECT {select_list(Table.TRACES)} FROM {page} {order}",
            params=[*where.params, limit],
        ).to_arrow_table()
        next_cursor = None
        if table.num_rows == limit and limit > 0:
            last = table.slice(limit - 1, 1)
            ts = last.column("Timestamp").cast(pa.int64())[0].as_py()
            next_cursor = encode_cursor(ts, last.column("SpanId")[0].as_py())
        return SpanPage(table, next_cursor)

    def search_trace_ids(self, f: SpanFilter, limit: int) -> list[str]:
        """Ids of the traces with a span matching ``f``, the most recent first."""
        where = _span_where(f)
        rows = self._con.execute(
            f'SELECT "TraceId", max("Timestamp") AS t FROM {_SPANS} WHERE {where.sql()} '
            'GROUP BY "TraceId" ORDER BY t DESC, "TraceId" LIMIT ?',
            [*where.params, limit],
        ).fetchall()
        return [row[0] for row in rows]

    # -- services ------------------------------------------------------------------------------

    def service_names(self, start: int | None = None, end: int | None = None) -> list[str]:
        where = Where().window("Timestamp", start, end)
        rows = self._con.execute(
            f'SELECT DISTINCT "ServiceName" FROM {_SPANS} WHERE {where.sql()} ORDER BY 1',
            where.params,
        ).fetchall()
        return [row[0] for row in rows]

    def services(
        self, window: TimeWindow, step_ns: int, service: str | None = None
    ) -> list[ServiceRED]:
        where = Where().window("Timestamp", window.start, window.end)
        if service is not None:
            where.add('"ServiceName" = ?', service)
        rows = self._con.execute(
            f'SELECT "ServiceName", (epoch_ns("Timestamp") - ?) // ? AS b, count(*), '
            f"count(*) FILTER (WHERE \"StatusCode\" = 'Error'), {_QUANTILES} "
            f"FROM {_SPANS} WHERE {where.sql()} AND {ENTRY_SPAN_SQL} "
            'GROUP BY GROUPING SETS (("ServiceName"), ("ServiceName", b))',
            [window.start, step_ns, *where.params],
        ).fetchall()
        totals: dict[str, tuple] = {}
        series: dict[str, list[REDPoint]] = {}
        for name, bucket, count, errors, quantiles in rows:
            if bucket is None:
                totals[name] = (count, errors, quantiles)
            else:
                p50, p95, p99 = _q(quantiles)
                point = REDPoint(window.start + bucket * step_ns, count, errors, p50, p95, p99)
                series.setdefault(name, []).append(point)
        names = [service] if service is not None else self.service_names(window.start, window.end)
        out = []
        for name in names:
            count, errors, quantiles = totals.get(name, (0, 0, None))
            if service is not None and name not in totals and not self._has_spans(name, window):
                continue
            p50, p95, p99 = _q(quantiles)
            out.append(
                ServiceRED(
                    name=name,
                    requests=count,
                    errors=errors,
                    request_rate=count / window.seconds,
                    error_rate=errors / count if count else 0.0,
                    p50_nano=p50,
                    p95_nano=p95,
                    p99_nano=p99,
                    series=sorted(series.get(name, []), key=lambda p: p.time_unix_nano),
                )
            )
        return out

    def _has_spans(self, service: str, window: TimeWindow) -> bool:
        where = Where().window("Timestamp", window.start, window.end)
        where.add('"ServiceName" = ?', service)
        rows = self._con.execute(
            f"SELECT 1 FROM {_SPANS} WHERE {where.sql()} LIMIT 1", where.params
        ).fetchall()
        return bool(rows)

    def operations(
        self, service: str, window: TimeWindow | None, kind: str | None = None
    ) -> list[Operation]:
        where = Where().add('"ServiceName" = ?', service)
        if window is not None:
            where.window("Timestamp", window.start, window.end)
        if kind is not None:
            where.add('"SpanKind" = ?', kind)
        rows = self._con.execute(
            f'SELECT "SpanName", "SpanKind", count(*), '
            f"count(*) FILTER (WHERE \"StatusCode\" = 'Error'), {_QUANTILES} "
            f"FROM {_SPANS} WHERE {where.sql()} GROUP BY 1, 2 ORDER BY 1, 2",
            where.params,
        ).fetchall()
        return [
            Operation(name, op_kind, count, errors, errors / count if count else 0.0, *_q(q))
            for name, op_kind, count, errors, q in rows
        ]

    # -- the other signals ---------------------------------------------------------------------

    def service_map(self, window: TimeWindow) -> ServiceMap:
        return duckdb_servicemap.service_map(self._con, window)

    def search_logs(self, f: LogFilter, limit: int, cursor: str | None = None) -> LogPage:
        ranges = None
        if f.trace_id is not None:
            ranges = self.index.seq_ranges(Table.LOGS, [f.trace_id])
        return duckdb_logs.search_logs(self._con, f, limit, cursor, ranges)

    def metric_names(self, start: int | None, end: int | None) -> list[MetricInfo]:
        return duckdb_metrics_queries.metric_names(self._con, start, end)

    def metric_series(
        self, name: str, start: int | None, end: int | None, limit: int, offset: int
    ) -> list[MetricSeries]:
        return duckdb_metrics_queries.metric_series(self._con, name, start, end, limit, offset)

    def metric_range(self, **query: Any) -> MetricRange:
        return duckdb_metrics_queries.metric_range(self._con, **query)

    def exemplars(
        self, name: str, window: TimeWindow, attributes: dict[str, str], limit: int
    ) -> list[Exemplar]:
        return duckdb_metrics_queries.exemplars(self._con, name, window, attributes, limit)


def _span_where(f: SpanFilter) -> Where:
    where = Where().window("Timestamp", f.start, f.end)
    if f.service is not None:
        where.add('"ServiceName" = ?', f.service)
    if f.span_name is not None:
        where.add('"SpanName" = ?', f.span_name)
    if f.status is not None:
        where.add('"StatusCode" = ?', f.status)
    if f.kind is not None:
        where.add('"SpanKind" = ?', f.kind)
    if f.min_duration is not None:
        where.add('"Duration" >= ?', f.min_duration)
    if f.max_duration is not None:
        where.add('"Duration" <= ?', f.max_duration)
    where.attributes("SpanAttributes", f.attributes)
    where.resources(f.resource)
    return where
