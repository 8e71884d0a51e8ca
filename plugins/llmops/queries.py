"""The SQL behind the API, over ``llmops_calls`` and the stored messages (``llmops_messages``
and ``llmops_message_blocks``).

Every value from a request is a bound parameter; column names come only from the fixed
``DIMENSIONS`` table, never from the request text.
"""

from __future__ import annotations

import json
from typing import Any

from opstrata.plugins.llmops import metrics
from opstrata.plugins.llmops import rollup_queries as rq
from opstrata.plugins.llmops.blocks import read_rows
from opstrata.plugins.llmops.dims import DIM_COLUMNS, DIMS_TABLE, ROWS_TABLE
from opstrata.plugins.llmops.messages import CallMessages
from opstrata.plugins.llmops.prices import PICO, PriceTable
from opstrata.plugins.llmops.store import CALLS_TABLE, MESSAGES_TABLE

__all__ = [
    "DIMENSIONS",
    "Filters",
    "call_detail",
    "calls",
    "models",
    "prompts",
    "session",
    "usage",
]

DIMENSIONS = {
    "service": "ServiceName",
    "provider": "Provider",
    "model": "Model",
    "request_model": "RequestModel",
    "response_model": "ResponseModel",
    "operation": "Operation",
    "prompt": "PromptName",
    "prompt_version": "PromptVersion",
    "user": "UserId",
    "session": "SessionId",
    "error_type": "ErrorType",
    "finish_reason": "FinishReason",
    "source": "Source",
}
"""``group_by`` names and filter names of the API → columns."""

_SUMS = """count(*) AS calls,
    count(*) FILTER (WHERE "IsError") AS errors,
    coalesce(sum("InputTokens"), 0) AS input_tokens,
    coalesce(sum("OutputTokens"), 0) AS output_tokens,
    coalesce(sum("CacheReadTokens"), 0) AS cache_read_tokens,
    coalesce(sum("CacheWriteTokens"), 0) AS cache_write_tokens,
    coalesce(sum("ReasoningTokens"), 0) AS reasoning_tokens,
    coalesce(sum("TotalTokens"), 0) AS total_tokens,
    coalesce(sum("CostPicoUsd"), 0) AS cost_pico_usd,
    count(*) FILTER (WHERE "CostPicoUsd" IS NULL) AS unpriced_calls"""
_LATENCY = """approx_quantile("Duration"::DOUBLE, [0.5, 0.95, 0.99]) AS latency,
    approx_quantile("Ttft"::DOUBLE, [0.5, 0.95, 0.99]) AS ttft"""
"""t-digest percentiles (``approx``): fixed-size state, where ``quantile_cont`` keeps every value
and cannot spill (10M calls ran out of the 256MB ``duckdb_memory_limit``)."""
_SUM_NAMES = (
    "calls",
    "errors",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "total_tokens",
    "cost_pico_usd",
    "unpriced_calls",
)


class Filters:
    """WHERE clause and parameters from the API's filters."""

    def __init__(
        self,
        start: int | None = None,
        end: int | None = None,
        equals: dict[str, str | None] | None = None,
        errors_only: bool | None = None,
        trace_id: str | None = None,
    ) -> None:
        self.clauses: list[str] = []
        self.params: list[Any] = []
        # The same conditions split by table: those on the calls' own columns and those on the
        # text stored once per combination (``llmops_dims``), for queries that read the tables.
        self.row_clauses: list[str] = []
        self.row_params: list[Any] = []
        self.dim_clauses: list[str] = []
        self.dim_params: list[Any] = []
        self.start, self.end = start, end
        self.equals = {k: v for k, v in (equals or {}).items() if v is not None}
        self.other = errors_only is not None or trace_id is not None
        if start is not None:
            self._add('"Timestamp" >= make_timestamp_ns(?::BIGINT)', start, "Timestamp")
        if end is not None:
            self._add('"Timestamp" < make_timestamp_ns(?::BIGINT)', end, "Timestamp")
        for name, value in (equals or {}).items():
            if value is not None:
                self._add(f'"{DIMENSIONS[name]}" = ?', value, DIMENSIONS[name])
        if errors_only is not None:
            self._add('"IsError" = ?', errors_only, "IsError")
        if trace_id is not None:
            self._add('"TraceId" = ?', trace_id, "TraceId")

    def _add(self, clause: str, param: Any, column: str) -> None:
        self.clauses.append(clause)
        self.params.append(param)
        if column in DIM_COLUMNS:
            self.dim_clauses.append(clause)
            self.dim_params.append(param)
        else:
            self.row_clauses.append(clause)
            self.row_params.append(param)

    @property
    def where(self) -> str:
        return ("WHERE " + " AND ".join(self.clauses)) if self.clauses else ""

    @property
    def columns(self) -> dict[str, str]:
        """The equality filters by column."""
        return {DIMENSIONS[k]: v for k, v in self.equals.items() if v is not None}


def _ms(values: list[float | None] | None) -> dict[str, float | None] | None:
    if not values or values[0] is None:
        return None
    return {
        name: None if v is None else round(v / 1e6, 3)
        for name, v in zip(("p50", "p95", "p99"), values, strict=True)
    }


def _sums(row: dict[str, Any]) -> dict[str, Any]:
    out = {name: int(row[name]) for name in _SUM_NAMES}
    out["cost_usd"] = out["cost_pico_usd"] / PICO
    return out


def _pct(values: list[float | None]) -> dict[str, float | None] | None:
    if values[0] is None:
        return None
    return dict(zip(("p50", "p95", "p99"), values, strict=True))


def usage(
    cursor: Any,
    filters: Filters,
    group_by: list[str],
    bucket_ns: int | None,
    latency: bool,
    limit: int,
    prices: PriceTable | None = None,
    with_metrics: bool = True,
) -> tuple[list[dict[str, Any]], str | None]:
    """Usage rows, and where percentiles came from (``sketch``, ``approx``; None without). Read
    from ``llmops_rollup`` (and ``llmops_sketch``) when the question allows: the same sums from
    hourly or daily rows instead of every call."""
    found = None
    sketches = None
    if not filters.other:
        if latency and set(group_by) <= {"model"}:
            sketches = rq.sketch_percentiles(
                cursor, filters.start, filters.end, filters.columns, bool(group_by), bucket_ns
            )
        if not latency or sketches is not None:
            found = rq.usage_rows(
                cursor, filters.start, filters.end, filters.columns,
                [(g, DIMENSIONS[g]) for g in group_by], bucket_ns, limit,
            )  # fmt: skip
    if found is None:
        sketches = None
        found = _usage_from_calls(cursor, filters, group_by, bucket_ns, latency, limit)
    if with_metrics and not filters.other and metrics.answerable(group_by, filters.equals):
        found = _with_metric_calls(
            found,
            metrics.metric_usage(
                cursor,
                filters.start,
                filters.end,
                filters.equals,
                group_by,
                bucket_ns,
                prices,
                latency,
            ),
            group_by,
            limit,
        )
    rows = []
    for row in found:
        if not row["calls"]:
            continue
        out: dict[str, Any] = {
            "bucket_unix_nano": int(row["bucket"]) if bucket_ns else None,
            "group": {g: row[g] for g in group_by},
            **_sums(row),
        }
        if latency and "metric_latency" in row:  # only metric calls: their histograms
            out["latency_ms"] = _pct(row["metric_latency"] or [None])
            out["ttft_ms"] = _pct(row["metric_ttft"] or [None])
        elif sketches is not None:
            key = (out["bucket_unix_nano"], row["model"] if group_by else None)
            pair = sketches.get(key, ([None] * 3, [None] * 3))
            out["latency_ms"], out["ttft_ms"] = _pct(pair[0]), _pct(pair[1])
        elif latency:
            out["latency_ms"] = _ms(row.get("latency"))
            out["ttft_ms"] = _ms(row.get("ttft"))
        rows.append(out)
    return rows, ("sketch" if sketches is not None else "approx") if latency else None


def _with_metric_calls(
    found: list[dict[str, Any]],
    extra: list[dict[str, Any]],
    group_by: list[str],
    limit: int,
) -> list[dict[str, Any]]:
    """``found`` plus the calls known only from metrics, summed by bucket and group."""
    if not extra:
        return found

    def key(row: dict[str, Any]) -> tuple[Any, ...]:
        return (row.get("bucket"), *(row[g] for g in group_by))

    merged = {key(row): dict(row) for row in found}
    for row in extra:
        have = merged.get(key(row))
        if have is None:
            merged[key(row)] = row
        else:
            for name in _SUM_NAMES:
                have[name] = int(have[name] or 0) + int(row[name] or 0)
    ordered = sorted(merged.values(), key=lambda r: tuple((v is None, v) for v in key(r)))
    return ordered[:limit]


def _usage_from_calls(
    cursor: Any,
    filters: Filters,
    group_by: list[str],
    bucket_ns: int | None,
    latency: bool,
    limit: int,
) -> list[dict[str, Any]]:
    columns = [f'"{DIMENSIONS[g]}" AS "{g}"' for g in group_by]
    params: list[Any] = []
    if bucket_ns:
        columns.insert(0, '(epoch_ns("Timestamp") // ?) * ? AS bucket')
        params += [bucket_ns, bucket_ns]
    keys = len(columns)
    group = f"GROUP BY ALL ORDER BY {', '.join(str(i + 1) for i in range(keys))}" if keys else ""
    select = ", ".join([*columns, _SUMS] + ([_LATENCY] if latency else []))
    sql = f"SELECT {select} FROM {CALLS_TABLE} {filters.where} {group} LIMIT ?"
    return _fetch_dicts(cursor.execute(sql, params + filters.params + [limit]))


_CALL_COLUMNS = (
    'epoch_ns("Timestamp") AS "Timestamp", "TraceId", "SpanId", "ServiceName", "Provider", '
    '"RequestModel", "ResponseModel", "Model", "Operation", "Source", "Conventions", '
    '"InputTokens", "OutputTokens", "CacheReadTokens", "CacheWriteTokens", "ReasoningTokens", '
    '"TotalTokens", "CostPicoUsd", "CostSource", "Duration", "Ttft", "FinishReason", "IsError", '
    '"ErrorType", "PromptName", "PromptVersion", "SessionId", "UserId"'
)


def _call(row: dict[str, Any]) -> dict[str, Any]:
    cost = row["CostPicoUsd"]
    return {
        "time_unix_nano": row["Timestamp"],
        "trace_id": row["TraceId"],
        "span_id": row["SpanId"],
        "service": row["ServiceName"],
        "provider": row["Provider"],
        "request_model": row["RequestModel"],
        "response_model": row["ResponseModel"],
        "model": row["Model"],
        "operation": row["Operation"],
        "source": row["Source"],
        "conventions": row["Conventions"].split(",") if row["Conventions"] else [],
        "input_tokens": row["InputTokens"],
        "output_tokens": row["OutputTokens"],
        "cache_read_tokens": row["CacheReadTokens"],
        "cache_write_tokens": row["CacheWriteTokens"],
        "reasoning_tokens": row["ReasoningTokens"],
        "total_tokens": row["TotalTokens"],
        "cost_usd": None if cost is None else cost / PICO,
        "cost_pico_usd": cost,
        "cost_source": row["CostSource"],
        "duration_ms": row["Duration"] / 1e6,
        "ttft_ms": None if row["Ttft"] is None else row["Ttft"] / 1e6,
        "finish_reason": row["FinishReason"],
        "is_error": row["IsError"],
        "error_type": row["ErrorType"],
        "prompt_name": row["PromptName"],
        "prompt_version": row["PromptVersion"],
        "session_id": row["SessionId"],
        "user_id": row["UserId"],
    }


def _fetch_dicts(result: Any) -> list[dict[str, Any]]:
    names = [d[0] for d in result.description]
    return [dict(zip(names, values, strict=True)) for values in result.fetchall()]


def calls(
    cursor: Any, filters: Filters, limit: int, before: tuple[int, str] | None
) -> list[dict[str, Any]]:
    # The page is chosen from the calls' own rows, and only its rows are joined with their
    # text: through the ``llmops_calls`` view DuckDB joins every call before its top-N (2 M
    # calls: 400 ms against 12 here). A filter on the text keeps the rows of its combinations'
    # ids; the top-N then picks row ids only, and the page's rows are read after it (a top-N
    # of whole rows past a join reads every column of every matching call: 210 ms against 60).
    clauses, params = list(filters.row_clauses), list(filters.row_params)
    if filters.dim_clauses:
        clauses.append(
            f'"DimId" IN (SELECT "DimId" FROM {DIMS_TABLE} '
            f"WHERE {' AND '.join(filters.dim_clauses)})"
        )
        params += filters.dim_params
    if before is not None:
        clauses.append('(epoch_ns("Timestamp"), "SpanId") < (?, ?)')
        params += list(before)
    where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
    order = 'ORDER BY "Timestamp" DESC, "SpanId" DESC'
    if filters.dim_clauses:
        sql = (
            f"WITH page AS (SELECT rowid AS row_id FROM {ROWS_TABLE} {where} {order} LIMIT ?) "
            f"SELECT {_CALL_COLUMNS} FROM {ROWS_TABLE} SEMI JOIN page ON rowid = page.row_id "
            f'JOIN {DIMS_TABLE} USING ("DimId") {order}'
        )
    else:
        sql = (
            f"SELECT {_CALL_COLUMNS} FROM (SELECT * FROM {ROWS_TABLE} {where} {order} LIMIT ?) "
            f'JOIN {DIMS_TABLE} USING ("DimId") {order}'
        )
    result = cursor.execute(sql, [*params, limit])
    return [_call(row) for row in _fetch_dicts(result)]


def call_detail(cursor: Any, trace_id: str, span_id: str) -> dict[str, Any] | None:
    found = _fetch_dicts(
        cursor.execute(
            f'SELECT {_CALL_COLUMNS}, "MessageBlock" FROM {CALLS_TABLE} '
            'WHERE "TraceId" = ? AND "SpanId" = ? LIMIT 1',
            [trace_id, span_id],
        )
    )
    if not found:
        return None
    call = _call(found[0])
    block = found[0]["MessageBlock"]
    stored = [] if block is None else read_rows(cursor, block, trace_id, span_id)
    stored += cursor.execute(  # from log events, and from spans before blocks were stored
        f'SELECT "Source", "Messages", "System", "Input", "Output" FROM {MESSAGES_TABLE} '
        'WHERE "TraceId" = ? AND "SpanId" = ? ORDER BY "Source" DESC, "Timestamp"',
        [trace_id, span_id],
    ).fetchall()
    # Messages from the span itself win; events (logs) fill in when the span had none.
    by_source: dict[str, dict[str, list[Any]]] = {}
    for source, text, *raw in stored:
        merged = by_source.setdefault(source, {"input": [], "output": []})
        parsed = CallMessages()  # the GenAI JSON attributes, stored as sent (masked)
        for direction, value in zip(("system", "input", "output"), raw, strict=True):
            if value is not None:
                parsed.add_json(direction, value)
        merged["input"] += parsed.input
        merged["output"] += parsed.output
        data = json.loads(text) if text else {}
        merged["input"] += data.get("input", [])
        merged["output"] += data.get("output", [])
    chosen = next((s for s in ("span", "event") if s in by_source), None)
    call["messages"] = by_source[chosen] if chosen else None
    call["messages_source"] = chosen
    return call


def models(cursor: Any, filters: Filters) -> tuple[list[dict[str, Any]], str]:
    """Per model, and where the percentiles came from (``sketch`` or ``approx``)."""
    found = rq.model_rows(cursor, filters.start, filters.end) if not filters.other else None
    if found is not None:
        return [_model(row, _pct(row["latency"]), _pct(row["ttft"])) for row in found], "sketch"
    result = cursor.execute(
        f'SELECT "Model" AS model, mode("Provider") AS provider, '
        'epoch_ns(min("Timestamp")) AS first_seen, epoch_ns(max("Timestamp")) AS last_seen, '
        f"{_SUMS}, {_LATENCY} FROM {CALLS_TABLE} {filters.where} "
        "GROUP BY ALL ORDER BY cost_pico_usd DESC, calls DESC",
        filters.params,
    )
    rows = _fetch_dicts(result)
    return [_model(row, _ms(row["latency"]), _ms(row["ttft"])) for row in rows], "approx"


def _model(row: dict[str, Any], latency: Any, ttft: Any) -> dict[str, Any]:
    return {
        "model": row["model"],
        "provider": row["provider"],
        "first_seen_unix_nano": row["first_seen"],
        "last_seen_unix_nano": row["last_seen"],
        **_sums(row),
        "error_rate": row["errors"] / row["calls"],
        "latency_ms": latency,
        "ttft_ms": ttft,
    }


def prompts(cursor: Any, filters: Filters) -> list[dict[str, Any]]:
    result = cursor.execute(
        f'SELECT "PromptName" AS prompt, "PromptVersion" AS version, '
        'epoch_ns(min("Timestamp")) AS first_seen, epoch_ns(max("Timestamp")) AS last_seen, '
        f"{_SUMS}, {_LATENCY} FROM {CALLS_TABLE} "
        f"{filters.where} {'AND' if filters.clauses else 'WHERE'} \"PromptName\" <> '' "
        "GROUP BY ALL ORDER BY prompt, first_seen",
        filters.params,
    )
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in _fetch_dicts(result):
        sums = _sums(row)
        calls_n = sums["calls"]
        grouped.setdefault(row["prompt"], []).append(
            {
                "version": row["version"],
                "first_seen_unix_nano": row["first_seen"],
                "last_seen_unix_nano": row["last_seen"],
                **sums,
                "error_rate": sums["errors"] / calls_n,
                "input_tokens_per_call": sums["input_tokens"] / calls_n,
                "output_tokens_per_call": sums["output_tokens"] / calls_n,
                "cost_usd_per_call": sums["cost_usd"] / calls_n,
                "latency_ms": _ms(row["latency"]),
                "ttft_ms": _ms(row["ttft"]),
            }
        )
    return [{"prompt": name, "versions": versions} for name, versions in grouped.items()]


def session(cursor: Any, session_id: str) -> dict[str, Any] | None:
    rows = _fetch_dicts(
        cursor.execute(
            f'SELECT {_CALL_COLUMNS} FROM {CALLS_TABLE} WHERE "SessionId" = ? '
            'ORDER BY "Timestamp", "SpanId" LIMIT 10000',
            [session_id],
        )
    )
    if not rows:
        return None
    calls_out = [_call(r) for r in rows]
    totals = _fetch_dicts(
        cursor.execute(f'SELECT {_SUMS} FROM {CALLS_TABLE} WHERE "SessionId" = ?', [session_id])
    )[0]
    return {
        "session_id": session_id,
        "users": sorted({c["user_id"] for c in calls_out if c["user_id"]}),
        "services": sorted({c["service"] for c in calls_out if c["service"]}),
        "models": sorted({c["model"] for c in calls_out if c["model"]}),
        "first_seen_unix_nano": calls_out[0]["time_unix_nano"],
        "last_seen_unix_nano": calls_out[-1]["time_unix_nano"],
        **_sums(totals),
        "call_list": calls_out,
    }
