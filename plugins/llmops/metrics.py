"""Usage from the OpenTelemetry GenAI metrics, for calls that came as no span or event.

Instrumentations record ``gen_ai.client.operation.duration`` (one histogram point per call, so
its count is the number of calls, with ``error.type`` on failed ones) and
``gen_ai.client.token.usage`` (one per call and ``gen_ai.token.type``: its sum is the tokens);
model servers ``gen_ai.server.request.duration``. They are stored by the core like every metric
(``otel_metrics_histogram``) and read here when asked, as deltas per export: a cumulative
series' point minus the one before it in the same series (same service, resource, attributes
and start time), a delta series' point as is.

**No double counting.** A service's GenAI metrics describe the same calls as its spans, when it
sends both (openai-v2 records both). So metric deltas count only for a service and hour in which
no call of that service was recorded from spans or log events (``llmops_rollup`` has no hour
for it): a service that sends spans is measured by its spans, and one that sends only metrics
by its metrics, hour by hour.

Metrics carry no cached or reasoning token counts, no prompt, user or session: their input
tokens are priced as uncached, and questions grouped or filtered by those see no metric calls.
"""

from __future__ import annotations

from typing import Any

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


def _deltas_sql() -> str:
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
        f"coalesce({_attr('gen_ai.token.type')}, '') AS token_type, "
        f"{delta('Count')} AS n, {delta('Sum')} AS total "
        f'FROM {_TABLE} WHERE "MetricName" IN (?, ?, ?) '
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
) -> list[dict[str, Any]]:
    """Usage rows (as :func:`queries.usage` builds them before formatting) of the calls known
    only from GenAI metrics, in service-hours without span or event calls."""
    tables = cursor.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [_TABLE]
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
    spanned = (
        f'SELECT 1 FROM {ROLLUP_TABLE} r WHERE r."Grain" = {HOUR_NS} AND '
        f'r."Start" = d.t // {HOUR_NS} * {HOUR_NS} AND r."ServiceName" = d.service'
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
    return list(merged.values())


def error_class_of(values: list[str]) -> list[str]:
    import pyarrow as pa

    return error_class(pa.array(values, pa.string())).to_pylist()
