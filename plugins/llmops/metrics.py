"""Usage from the OpenTelemetry GenAI metrics, for calls that came as no span or event.

Instrumentations record ``gen_ai.client.operation.duration`` (one histogram point per call, so
its count is the number of calls, with ``error.type`` on failed ones) and
``gen_ai.client.token.usage`` (one per call and ``gen_ai.token.type``: its sum is the tokens);
model servers ``gen_ai.server.request.duration``. They are stored by the core like every metric
(``otel_metrics_histogram``) and read here when asked, as deltas per export: a cumulative
series' point minus the one before it in the same series (same service, resource, attributes
and start time), a delta series' point as is.

**No double counting.** A service's GenAI metrics describe the same calls as its spans, when it
sends both (openai-v2 records both). So a metric delta counts only if no call of that service
was recorded from spans or log events in any hour the delta covers (from the series' previous
point, or the point's start time, to the point; ``llmops_rollup`` has no such hour for it): a
service that sends spans is measured by its spans, and one that sends only metrics by its
metrics, hour by hour.

Metrics carry no cached or reasoning token counts, no prompt, user or session: their input
tokens are priced as uncached, and questions grouped or filtered by those see no metric calls.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from opstrata.plugins.llmops.columns import error_class
from opstrata.plugins.llmops.prices import PriceTable
from opstrata.plugins.llmops.rollup import HOUR_NS, ROLLUP_TABLE

__all__ = ["CALL_METRICS", "METRIC_DIMENSIONS", "TOKEN_METRIC", "answerable", "metric_usage"]

CALL_METRICS = ("gen_ai.client.operation.duration", "gen_ai.server.request.duration")
"""Histograms with one point per call: their count is the number of calls."""
TOKEN_METRIC = "gen_ai.client.token.usage"
_TABLE = "otel_metrics_histogram"


def _attr(key: str) -> str:
    """A metric point's attribute (stored as a list of key/value structs); NULL if absent."""
    return f"list_filter(\"Attributes\", lambda e: e.key = '{key}')[1].value"


METRIC_DIMENSIONS = {
    "service": '"ServiceName"',
    "provider": f"lower(coalesce({_attr('gen_ai.provider.name')}, {_attr('gen_ai.system')}, ''))",
    "request_model": f"coalesce({_attr('gen_ai.request.model')}, '')",
    "response_model": f"coalesce({_attr('gen_ai.response.model')}, '')",
    "operation": f"coalesce({_attr('gen_ai.operation.name')}, 'chat')",
    "error_type": f"coalesce({_attr('error.type')}, '')",
}
"""What a GenAI metric point says of its calls, by the API's dimension names."""
_GROUPABLE = {*METRIC_DIMENSIONS, "model", "source"}
_FILTERABLE = {"service", "provider", "model", "operation"}


def _deltas_sql(metrics: int = 3) -> str:
    dims = ", ".join(f"{sql} AS {name}" for name, sql in METRIC_DIMENSIONS.items())
    series = (
        'PARTITION BY "MetricName", hash("ServiceName", "ResourceAttributes", "Attributes"), '
        '"StartTimeUnix" ORDER BY "TimeUnix"'
    )

    def delta(column: str) -> str:
        # Cumulative (2): the growth since the series' previous point; a drop is a reset.
        previous = f'lag("{column}") OVER ({series})'
        return (
            f'CASE WHEN "AggregationTemporality" = 2 AND "{column}" >= coalesce({previous}, 0) '
            f'THEN "{column}" - coalesce({previous}, 0) ELSE "{column}" END'
        )

    return (
        f'SELECT "MetricName" AS metric, epoch_ns("TimeUnix") AS t, {dims}, '
        # The time the delta covers begins at the series' previous point (cumulative) or at
        # the point's own start time (delta, or the first point of a series).
        'epoch_ns(CASE WHEN "AggregationTemporality" = 2 THEN coalesce(lag("TimeUnix") '
        f'OVER ({series}), "StartTimeUnix") ELSE "StartTimeUnix" END) AS since, '
        f"coalesce({_attr('gen_ai.token.type')}, '') AS token_type, "
        f"{delta('Count')} AS n, {delta('Sum')} AS total, "
        '"ExplicitBounds" AS bounds, CASE WHEN "AggregationTemporality" = 2 AND '
        f'"Count" >= coalesce(lag("Count") OVER ({series}), 0) AND '
        f'lag("BucketCounts") OVER ({series}) IS NOT NULL THEN list_transform(list_zip('
        f'"BucketCounts", lag("BucketCounts") OVER ({series})), lambda x: x[1] - x[2]) '
        'ELSE "BucketCounts" END AS counts '
        f'FROM {_TABLE} WHERE "MetricName" IN ({", ".join("?" * metrics)}) '
        'AND "TimeUnix" < make_timestamp_ns(?::BIGINT)'
    )


def answerable(group_by: list[str], equals: dict[str, str]) -> bool:
    """Whether metric calls can take part in a usage question so grouped and filtered."""
    return set(group_by) <= _GROUPABLE and set(equals) <= _FILTERABLE


def metric_usage(
    cursor: Any,
    start: int | None,
    end: int | None,
    equals: dict[str, str],
    group_by: list[str],
    bucket_ns: int | None,
    prices: PriceTable | None,
    latency: bool = False,
) -> list[dict[str, Any]]:
    """Usage rows (as :func:`queries.usage` builds them before formatting) of the calls known
    only from GenAI metrics, in service-hours without span or event calls; with ``latency``,
    ``metric_latency`` / ``metric_ttft`` percentiles (ms) from the duration and time-to-first-
    chunk histograms, interpolated within their buckets."""
    tables = cursor.execute(  # a table, or since the store keeps resources apart a view
        "SELECT (SELECT count(*) FROM duckdb_tables() WHERE table_name = ?) + "
        "(SELECT count(*) FROM duckdb_views() WHERE view_name = ?)",
        [_TABLE, _TABLE],
    ).fetchall()[0][0]
    if not tables:
        return []
    where = ["d.t >= ?"] if start is not None else []
    params: list[Any] = [*CALL_METRICS, TOKEN_METRIC, end if end is not None else 2**62]
    if start is not None:
        params.append(start)
    for name, value in equals.items():
        column = (
            "coalesce(nullif(d.response_model, ''), d.request_model)"
            if name == "model"
            else f"d.{name}"
        )
        where.append(f"{column} = ?")
        params.append(value)
    spanned = (  # any hour the delta covers in which the service had span or event calls
        f'SELECT 1 FROM {ROLLUP_TABLE} r WHERE r."Grain" = {HOUR_NS} AND r."ServiceName" = '
        f'd.service AND r."Start" BETWEEN least(d.since, d.t) // {HOUR_NS} * {HOUR_NS} '
        f"AND d.t // {HOUR_NS} * {HOUR_NS}"
    )
    bucket = "d.t // ? * ?" if bucket_ns else "NULL::BIGINT"
    bucket_params = [bucket_ns, bucket_ns] if bucket_ns else []
    sql = (
        f"SELECT {bucket} AS bucket, d.service, d.provider, d.request_model, d.response_model, "
        "d.operation, d.error_type, "
        f"sum(d.n) FILTER (WHERE d.metric IN ('{CALL_METRICS[0]}', '{CALL_METRICS[1]}')) "
        "AS calls, "
        f"sum(d.total) FILTER (WHERE d.metric = '{TOKEN_METRIC}' AND d.token_type = 'input') "
        "AS input_tokens, "
        f"sum(d.total) FILTER (WHERE d.metric = '{TOKEN_METRIC}' AND d.token_type = 'output') "
        f"AS output_tokens FROM ({_deltas_sql()}) d "
        f"WHERE NOT EXISTS ({spanned}) {'AND ' + ' AND '.join(where) if where else ''} "
        "GROUP BY ALL"
    )
    found = cursor.execute(sql, bucket_params + params).fetchall()
    if not found:
        return []
    condition = f"WHERE NOT EXISTS ({spanned}) {'AND ' + ' AND '.join(where) if where else ''}"
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    errors = error_class_of([row[6] for row in found])
    for row, error in zip(found, errors, strict=True):
        bucket_start, service, provider, request, response, operation, _, calls, inp, out = row
        calls, inp, out = int(calls or 0), round(inp or 0), round(out or 0)
        model = response or request
        price = None
        if prices is not None:
            price = (prices.lookup(provider, response) if response else None) or (
                prices.lookup(provider, request) if request else None
            )
        values = {
            "service": service, "provider": provider, "model": model,
            "request_model": request, "response_model": response, "operation": operation,
            "error_type": error, "source": "metric",
        }  # fmt: skip
        key = (bucket_start, *(values[g] for g in group_by))
        acc = merged.setdefault(
            key,
            {"bucket": bucket_start, **{g: values[g] for g in group_by}, "calls": 0,
             "errors": 0, "input_tokens": 0, "output_tokens": 0, "cache_read_tokens": 0,
             "cache_write_tokens": 0, "reasoning_tokens": 0, "total_tokens": 0,
             "cost_pico_usd": 0, "unpriced_calls": 0},
        )  # fmt: skip
        acc["calls"] += calls
        acc["errors"] += calls if error else 0
        acc["input_tokens"] += inp
        acc["output_tokens"] += out
        acc["total_tokens"] += inp + out
        if price is None:
            acc["unpriced_calls"] += calls
        else:
            acc["cost_pico_usd"] += inp * price.input + out * price.output
    if latency:
        histograms = _histograms(cursor, bucket, bucket_params, params[3:], condition, group_by)
        for key, row in merged.items():
            for kind in ("latency", "ttft"):
                row["metric_" + kind] = histograms.get((key, kind))
    return list(merged.values())


_LATENCY_METRICS = {
    "gen_ai.client.operation.duration": "latency",
    "gen_ai.server.request.duration": "latency",
    "gen_ai.client.operation.time_to_first_chunk": "ttft",
    "gen_ai.server.time_to_first_token": "ttft",
}


def _histograms(
    cursor: Any,
    bucket: str,
    bucket_params: list[Any],
    params: list[Any],
    condition: str,
    group_by: list[str],
) -> dict[tuple[Any, ...], list[float | None]]:
    """Percentiles (p50, p95, p99, ms) of the summed delta histograms per (row key, kind)."""
    names = list(_LATENCY_METRICS)
    found = cursor.execute(
        f"SELECT {bucket} AS bucket, d.service, d.provider, d.request_model, d.response_model, "
        f"d.operation, d.error_type, d.metric, d.bounds, d.counts FROM "
        f"({_deltas_sql(len(names))}) d {condition}",
        bucket_params + names + params,
    ).fetchall()
    errors = error_class_of([row[6] for row in found])
    summed: dict[tuple[Any, ...], np.ndarray] = {}
    for row, error in zip(found, errors, strict=True):
        bucket_start, service, provider, request, response, operation, _, metric, bounds, counts = (
            row
        )
        if not counts:
            continue
        values = {
            "service": service, "provider": provider, "model": response or request,
            "request_model": request, "response_model": response, "operation": operation,
            "error_type": error, "source": "metric",
        }  # fmt: skip
        key = (bucket_start, *(values[g] for g in group_by))
        slot = (key, _LATENCY_METRICS[metric], tuple(bounds or ()))
        have = summed.get(slot)
        counts_array = np.asarray(counts, dtype=np.int64)
        summed[slot] = counts_array if have is None else have + counts_array
    out: dict[tuple[Any, ...], list[float | None]] = {}
    merged: dict[tuple[Any, ...], list[tuple[tuple[float, ...], np.ndarray]]] = {}
    for (key, kind, bounds), counts in summed.items():
        merged.setdefault((key, kind), []).append((bounds, counts))
    for slot, parts in merged.items():
        bounds, counts = max(parts, key=lambda part: int(part[1].sum()))  # one set of bounds
        out[slot] = _histogram_percentiles(np.asarray(bounds), counts)
    return out


def _histogram_percentiles(bounds: np.ndarray, counts: np.ndarray) -> list[float | None]:
    """p50, p95, p99 in ms of an explicit-bucket histogram in seconds: linear within the bucket
    holding the rank (the first bucket from 0, the last at its lower bound)."""
    total = int(counts.sum())
    if total == 0 or len(counts) != len(bounds) + 1:
        return [None, None, None]
    cumulative = np.cumsum(counts)
    out: list[float | None] = []
    for q in (0.5, 0.95, 0.99):
        rank = q * total
        i = int(np.searchsorted(cumulative, rank))
        lower = 0.0 if i == 0 else float(bounds[i - 1])
        if i >= len(bounds):
            out.append(round(lower * 1000, 3))
            continue
        before = 0 if i == 0 else int(cumulative[i - 1])
        share = float((rank - before) / counts[i]) if counts[i] else 1.0
        out.append(round((lower + (float(bounds[i]) - lower) * share) * 1000, 3))
    return out


def error_class_of(values: list[str]) -> list[str]:
    import pyarrow as pa

    return error_class(pa.array(values, pa.string())).to_pylist()
