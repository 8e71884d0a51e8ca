"""Metric names, series, range queries and exemplars over the ``otel_metrics_*`` tables.

A series is one (service, resource attributes, point attributes) combination. Range queries
fetch the points of one metric as Arrow columns and do the arithmetic in numpy
(:mod:`opstrata.storage.metric_math`).
"""

from __future__ import annotations

import re

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from opstrata.schema import Table
from opstrata.storage import metric_math as mm
from opstrata.storage.duckdb_ddl import RESOURCES_TABLE, physical
from opstrata.storage.duckdb_sql import Where, attr_value_sql
from opstrata.storage.query_types import (
    Exemplar,
    MetricInfo,
    MetricRange,
    MetricSeries,
    RangeSeries,
    TimeWindow,
)

__all__ = ["MetricQueryError", "exemplars", "metric_names", "metric_range", "metric_series"]

TYPES = {
    Table.METRICS_SUM: "sum",
    Table.METRICS_GAUGE: "gauge",
    Table.METRICS_HISTOGRAM: "histogram",
    Table.METRICS_EXPONENTIAL_HISTOGRAM: "exponential_histogram",
    Table.METRICS_SUMMARY: "summary",
}
_TEMPORALITY = {1: "delta", 2: "cumulative"}
_SERIES_KEY = 'hash("ServiceName", "ResourceId", "Attributes")'
"""A series: service, resource and point attributes. Queries read the physical tables (no join
with ``otel_resources``), where one ``ResourceId`` is one resource (duckdb_resources)."""
_PERCENTILE = re.compile(r"^p(\d{1,2}(?:\.\d{1,3})?)$")
AGGREGATIONS = {
    "gauge": ("sum", "avg", "min", "max"),
    "sum": ("sum", "avg", "min", "max", "rate"),
    "histogram": ("rate", "avg", "pNN"),
    "exponential_histogram": ("rate", "avg", "pNN"),
    "summary": ("rate", "avg"),
}


class MetricQueryError(ValueError):
    """A range query that cannot be answered as asked (unknown metric, wrong aggregation)."""


def _pairs(entries: list[dict] | None) -> dict[str, str]:
    return {e["key"]: e["value"] for e in entries or ()}


def metric_names(
    con: duckdb.DuckDBPyConnection, start: int | None, end: int | None
) -> list[MetricInfo]:
    where = Where().window("TimeUnix", start, end)
    out = []
    for table, kind in TYPES.items():
        has_temporality = table not in (Table.METRICS_GAUGE, Table.METRICS_SUMMARY)
        temporality = 'any_value("AggregationTemporality")' if has_temporality else "NULL"
        monotonic = 'bool_and("IsMonotonic")' if table is Table.METRICS_SUM else "NULL"
        rows = con.execute(
            f'SELECT "MetricName", any_value("MetricUnit"), any_value("MetricDescription"), '
            f"count(DISTINCT {_SERIES_KEY}), count(*), {temporality}, {monotonic} "
            f"FROM {physical(table)} WHERE {where.sql()} GROUP BY 1",
            where.params,
        ).fetchall()
        for name, unit, description, series, points, temp, mono in rows:
            out.append(
                MetricInfo(
                    name,
                    kind,
                    unit or "",
                    description or "",
                    series,
                    points,
                    _TEMPORALITY.get(temp) if temp is not None else None,
                    mono,
                )
            )
    return sorted(out, key=lambda m: (m.name, m.type))


def _table_of(con: duckdb.DuckDBPyConnection, name: str) -> Table:
    for table in TYPES:
        # fetchall, never fetchone: an unfinished result blocks the next query on this cursor.
        found = con.execute(
            f'SELECT 1 FROM {physical(table)} WHERE "MetricName" = ? LIMIT 1', [name]
        ).fetchall()
        if found:
            return table
    raise MetricQueryError(f"no metric named {name!r}")


def metric_series(
    con: duckdb.DuckDBPyConnection,
    name: str,
    start: int | None,
    end: int | None,
    limit: int,
    offset: int,
) -> list[MetricSeries]:
    table = _table_of(con, name)
    where = Where().add('"MetricName" = ?', name).window("TimeUnix", start, end)
    # Grouped on the physical table; each group's resource joined after.
    rows = con.execute(
        f'SELECT g.s, g.a, r."ResourceAttributes", g.n, g.first, g.last FROM ('
        f'SELECT "ServiceName" AS s, "Attributes" AS a, "ResourceId", count(*) AS n, '
        f'epoch_ns(min("TimeUnix")) AS first, epoch_ns(max("TimeUnix")) AS last '
        f"FROM {physical(table)} WHERE {where.sql()} GROUP BY 1, 2, 3) g "
        f'JOIN {RESOURCES_TABLE} r ON r."ResourceId" = g."ResourceId" '
        "ORDER BY 1, 2, 3 LIMIT ? OFFSET ?",
        [*where.params, limit, offset],
    ).fetchall()
    return [
        MetricSeries(service, _pairs(attrs), _pairs(resource), points, first, last)
        for service, attrs, resource, points, first, last in rows
    ]


_LABEL_SQL = "coalesce(nullif({}, ''), {})".format(
    attr_value_sql('"Attributes"'), attr_value_sql('"ResourceAttributes"')
)
"""A label: the point attribute, else the resource attribute, else ''."""


def _label_sql(label: str) -> tuple[str, list[str]]:
    if label == "service.name":
        return '"ServiceName"', []
    return _LABEL_SQL, [label, label]


def _check_aggregation(kind: str, aggregation: str) -> float | None:
    allowed = AGGREGATIONS[kind]
    match = _PERCENTILE.match(aggregation)
    if match and "pNN" in allowed:
        q = float(match.group(1)) / 100
        if 0 < q < 1:
            return q
    if aggregation in allowed:
        return None
    shown = ", ".join(a if a != "pNN" else "p50/p90/p99 (any pNN)" for a in allowed)
    raise MetricQueryError(f"aggregation {aggregation!r} does not apply to a {kind}; use {shown}")


def metric_range(
    con: duckdb.DuckDBPyConnection,
    *,
    name: str,
    start: int,
    end: int,
    step_ns: int,
    aggregation: str,
    group_by: list[str],
    attributes: dict[str, str],
) -> MetricRange:
    table = _table_of(con, name)
    kind = TYPES[table]
    quantile = _check_aggregation(kind, aggregation)
    n_buckets = max(1, -(-(end - start) // step_ns))
    # Reach back for the point before the window: increases need a baseline.
    fetch_lo = start - max(step_ns, 600 * 10**9)
    labels_sql, label_params = [], []
    for label in group_by:
        sql, params = _label_sql(label)
        labels_sql.append(f'{sql} AS "l{len(labels_sql)}"')
        label_params += params
    where = Where().add('"MetricName" = ?', name).window("TimeUnix", fetch_lo, end)
    where.attributes("Attributes", attributes)
    columns = {
        Table.METRICS_GAUGE: '"Value"',
        Table.METRICS_SUM: '"Value", "AggregationTemporality", "IsMonotonic"',
        Table.METRICS_HISTOGRAM: '"Count", "Sum", "BucketCounts", "ExplicitBounds", "Min", '
        '"Max", "AggregationTemporality"',
        Table.METRICS_EXPONENTIAL_HISTOGRAM: '"Count", "Sum", "Scale", "ZeroCount", '
        '"PositiveOffset", "PositiveBucketCounts", "NegativeOffset", "NegativeBucketCounts", '
        '"Min", "Max", "AggregationTemporality"',
        Table.METRICS_SUMMARY: '"Count", "Sum"',
    }[table]
    extra = "".join(", " + s for s in labels_sql)
    source = physical(table)
    if label_params:  # a label may come from the resource's attributes: join them
        source = f'{source} JOIN {RESOURCES_TABLE} USING ("ResourceId")'
    data = con.sql(
        f'SELECT {_SERIES_KEY} AS sid, epoch_ns("TimeUnix") AS t, '
        f'epoch_ns("StartTimeUnix") AS st, {columns}{extra} FROM {source} '
        f"WHERE {where.sql()} ORDER BY sid, t",
        params=[*label_params, *where.params],
    ).to_arrow_table()
    series = _compute(
        data, table, kind, aggregation, quantile, start, step_ns, n_buckets, fetch_lo, group_by
    )
    return MetricRange(name, kind, aggregation, step_ns / 1e9, start, end, series)


def _groups(data: pa.Table, group_by: list[str]) -> tuple[np.ndarray, list[dict[str, str]]]:
    if not group_by:
        return np.zeros(data.num_rows, dtype=np.int64), [{}]
    key = pc.binary_join_element_wise(
        *[data.column(f"l{i}").fill_null("") for i in range(len(group_by))], "\x1f"
    )
    encoded = key.combine_chunks().dictionary_encode()
    labels = [
        dict(zip(group_by, k.split("\x1f"), strict=True)) for k in encoded.dictionary.to_pylist()
    ]
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64), labels


def _np(data: pa.Table, column: str, dtype: type = np.float64) -> np.ndarray:
    return data.column(column).to_numpy(zero_copy_only=False).astype(dtype)


def _compute(
    data: pa.Table,
    table: Table,
    kind: str,
    aggregation: str,
    quantile: float | None,
    start: int,
    step_ns: int,
    n_buckets: int,
    fetch_lo: int,
    group_by: list[str],
) -> list[RangeSeries]:
    if data.num_rows == 0:
        return []
    sid = _np(data, "sid", np.uint64)
    t = _np(data, "t", np.int64)
    st = _np(data, "st", np.int64)
    group, labels = _groups(data, group_by)
    bucket = (t - start) // step_ns
    inside = (bucket >= 0) & (bucket < n_buckets)
    n_cells = len(labels) * n_buckets
    step_s = step_ns / 1e9
    if kind in ("gauge", "sum") and aggregation != "rate":
        values = _np(data, "Value")
        last = mm.last_per_cell(sid, bucket)
        last = last[inside[last]]
        cells = mm.cell_index(group[last], bucket[last], n_buckets)
        result = _reduce(cells, values[last], aggregation, n_cells)
        return _series(result, labels, start, step_ns, n_buckets)
    if kind == "gauge":
        raise MetricQueryError("rate does not apply to a gauge")
    cumulative = _np(data, "AggregationTemporality", np.int64) == 2
    if kind == "sum":
        values = _np(data, "Value")
        monotonic = bool(pc.all(data.column("IsMonotonic")).as_py())
        delta, counted = mm.increases(sid, t, st, values, values, cumulative, fetch_lo, monotonic)
        keep = inside & counted
        sums = np.bincount(
            mm.cell_index(group[keep], bucket[keep], n_buckets),
            weights=delta[keep],
            minlength=n_cells,
        )
        seen = np.bincount(mm.cell_index(group[keep], bucket[keep], n_buckets), minlength=n_cells)
        return _series(np.where(seen > 0, sums / step_s, np.nan), labels, start, step_ns, n_buckets)
    counts = _np(data, "Count")
    sums = _np(data, "Sum")
    if quantile is None:
        stacked = np.stack([counts, sums], axis=1)
        delta, counted = mm.increases(sid, t, st, stacked, counts, cumulative, fetch_lo)
        keep = inside & counted
        cells = mm.cell_index(group[keep], bucket[keep], n_buckets)
        n = np.bincount(cells, weights=delta[keep, 0], minlength=n_cells)
        total = np.bincount(cells, weights=delta[keep, 1], minlength=n_cells)
        seen = np.bincount(cells, minlength=n_cells) > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            value = n / step_s if aggregation == "rate" else total / n
        return _series(np.where(seen, value, np.nan), labels, start, step_ns, n_buckets)
    lo = data.column("Min").to_numpy(zero_copy_only=False).astype(np.float64)
    hi = data.column("Max").to_numpy(zero_copy_only=False).astype(np.float64)
    if table is Table.METRICS_HISTOGRAM:
        matrix, bounds = _explicit_matrix(data)
        delta, counted = mm.increases(sid, t, st, matrix, counts, cumulative, fetch_lo)
        keep = inside & counted & ~np.isnan(matrix).any(axis=1)
        cells = mm.cell_index(group[keep], bucket[keep], n_buckets)
        merged, cell_lo, cell_hi = _merge(cells, delta[keep], lo[keep], hi[keep], n_cells)
        result = mm.explicit_quantiles(merged, bounds, quantile, cell_lo, cell_hi)
        return _series(result, labels, start, step_ns, n_buckets)
    scales = _np(data, "Scale", np.int64)
    target = int(scales.min())
    positive, pos_first = _exp_side(data, "PositiveOffset", "PositiveBucketCounts", scales, target)
    negative, neg_first = _exp_side(data, "NegativeOffset", "NegativeBucketCounts", scales, target)
    zero = _np(data, "ZeroCount")
    matrix = np.concatenate((negative, zero[:, None], positive), axis=1)
    delta, counted = mm.increases(sid, t, st, matrix, counts, cumulative, fetch_lo)
    keep = inside & counted
    cells = mm.cell_index(group[keep], bucket[keep], n_buckets)
    merged, cell_lo, cell_hi = _merge(cells, delta[keep], lo[keep], hi[keep], n_cells)
    width_neg = negative.shape[1]
    result = mm.exponential_quantiles(
        merged[:, width_neg + 1 :],
        pos_first,
        merged[:, :width_neg],
        neg_first,
        merged[:, width_neg],
        target,
        quantile,
        cell_lo,
        cell_hi,
    )
    return _series(result, labels, start, step_ns, n_buckets)


def _exp_side(
    data: pa.Table, offset_col: str, counts_col: str, scales: np.ndarray, target: int
) -> tuple[np.ndarray, int]:
    lists = data.column(counts_col).combine_chunks()
    flat = lists.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
    parent = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    list_offsets = lists.offsets.to_numpy()[:-1].astype(np.int64)
    position = np.arange(len(flat), dtype=np.int64) - list_offsets[parent]
    offsets = _np(data, offset_col, np.int64)
    return mm.exp_dense(offsets, flat, parent, position, scales, target, data.num_rows)


def _explicit_matrix(data: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Bucket counts as a matrix; rows whose bounds differ from the most common ones are NaN."""
    bounds_col = data.column("ExplicitBounds").combine_chunks()
    counts_col = data.column("BucketCounts").combine_chunks()
    keys = pc.cast(bounds_col, pa.list_(pa.float64())).to_pylist()
    common = max(set(map(tuple, keys)), key=lambda b: keys.count(list(b)))
    width = len(common) + 1
    matrix = np.full((data.num_rows, width), np.nan)
    same = np.array([tuple(k) == common for k in keys])
    if same.any():
        rows = counts_col.filter(pa.array(same))
        matrix[same] = rows.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
    return matrix, np.array(common, dtype=np.float64)


def _merge(
    cells: np.ndarray, rows: np.ndarray, lo: np.ndarray, hi: np.ndarray, n_cells: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    merged = np.zeros((n_cells, rows.shape[1]))
    np.add.at(merged, cells, rows)
    cell_lo = np.full(n_cells, np.inf)
    cell_hi = np.full(n_cells, -np.inf)
    np.minimum.at(cell_lo, cells, np.where(np.isnan(lo), np.inf, lo))
    np.maximum.at(cell_hi, cells, np.where(np.isnan(hi), -np.inf, hi))
    cell_lo[np.isinf(cell_lo)] = np.nan
    cell_hi[np.isinf(cell_hi)] = np.nan
    return merged, cell_lo, cell_hi


def _reduce(cells: np.ndarray, values: np.ndarray, aggregation: str, n_cells: int) -> np.ndarray:
    seen = np.bincount(cells, minlength=n_cells)
    if aggregation in ("sum", "avg"):
        total = np.bincount(cells, weights=values, minlength=n_cells)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = total / seen if aggregation == "avg" else total
    elif aggregation == "min":
        out = np.full(n_cells, np.inf)
        np.minimum.at(out, cells, values)
    else:
        out = np.full(n_cells, -np.inf)
        np.maximum.at(out, cells, values)
    return np.where(seen > 0, out, np.nan)


def _series(
    values: np.ndarray, labels: list[dict[str, str]], start: int, step_ns: int, n_buckets: int
) -> list[RangeSeries]:
    grid = values.reshape(len(labels), n_buckets)
    out = []
    for g, label in enumerate(labels):
        row = grid[g]
        points = [
            (start + int(b) * step_ns, float(row[b])) for b in np.flatnonzero(np.isfinite(row))
        ]
        if points:
            out.append(RangeSeries(label, points))
    return out


def exemplars(
    con: duckdb.DuckDBPyConnection,
    name: str,
    window: TimeWindow,
    attributes: dict[str, str],
    limit: int,
) -> list[Exemplar]:
    where = Where().add('"MetricName" = ?', name).window("TimeUnix", window.start, window.end)
    where.attributes("Attributes", attributes)
    parts = [
        f'SELECT "ServiceName" AS s, "Attributes" AS a, unnest("Exemplars") AS e '
        f"FROM {physical(table)} "
        f"WHERE {where.sql()}"
        for table in (
            Table.METRICS_SUM,
            Table.METRICS_GAUGE,
            Table.METRICS_HISTOGRAM,
            Table.METRICS_EXPONENTIAL_HISTOGRAM,
        )
    ]
    rows = con.execute(
        f'SELECT epoch_ns(e."TimeUnix"), e."Value", e."TraceId", e."SpanId", '
        f'e."FilteredAttributes", s, a FROM ({" UNION ALL ".join(parts)}) '
        'ORDER BY e."TimeUnix" DESC LIMIT ?',
        [*where.params * len(parts), limit],
    ).fetchall()
    return [
        Exemplar(
            time_unix_nano=ts,
            value=value,
            trace_id=trace_id or "",
            span_id=span_id or "",
            filtered_attributes=_pairs(filtered),
            service_name=service,
            attributes=_pairs(attrs),
            trace_url=f"/api/v1/traces/{trace_id}" if trace_id else None,
        )
        for ts, value, trace_id, span_id, filtered, service, attrs in rows
    ]
