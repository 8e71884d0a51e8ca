"""Answers read from ``llmops_rollup`` and ``llmops_sketch`` instead of the calls, when the
question allows: grouped and filtered only by the rollup's columns, over whole hours or days
(and, for percentiles, by model only and over whole days). They give the same sums as the
calls; percentiles from sketches are within about 4.4 % of the exact ones."""

from __future__ import annotations

from typing import Any

import numpy as np

from opstrata.plugins.llmops.rollup import (
    DAY_NS,
    DIMENSIONS,
    HOUR_NS,
    ROLLUP_TABLE,
    SKETCH_BINS,
    SKETCH_TABLE,
    percentiles,
)

__all__ = ["Aligned", "model_rows", "sketch_percentiles", "usage_rows"]

_SUM_NAMES = (
    "calls", "errors", "input_tokens", "output_tokens", "cache_read_tokens",
    "cache_write_tokens", "reasoning_tokens", "total_tokens", "cost_pico_usd", "unpriced_calls",
)  # fmt: skip
_SUMS = ", ".join(
    f'sum("{column}") AS {name}'
    for column, name in (
        ("Calls", "calls"), ("Errors", "errors"), ("InputTokens", "input_tokens"),
        ("OutputTokens", "output_tokens"), ("CacheReadTokens", "cache_read_tokens"),
        ("CacheWriteTokens", "cache_write_tokens"), ("ReasoningTokens", "reasoning_tokens"),
        ("TotalTokens", "total_tokens"), ("CostPicoUsd", "cost_pico_usd"),
        ("UnpricedCalls", "unpriced_calls"),
    )
)  # fmt: skip


class Aligned:
    """A filter (time range, equalities by column) restated over a rollup grain, if it can
    be: every filtered column kept there, the range on whole grains."""

    def __init__(
        self, start: int | None, end: int | None, equals: dict[str, str], grain: int
    ) -> None:
        self.grain = grain
        self.clauses: list[str] = []
        self.params: list[Any] = []
        if start is not None:
            self.clauses.append('"Start" >= ?')
            self.params.append(start)
        if end is not None:
            self.clauses.append('"Start" < ?')
            self.params.append(end)
        for column, value in equals.items():
            self.clauses.append(f'"{column}" = ?')
            self.params.append(value)

    @classmethod
    def of(
        cls,
        start: int | None,
        end: int | None,
        equals: dict[str, str],
        grain: int,
        columns: tuple[str, ...],
    ) -> Aligned | None:
        if any(c not in columns for c in equals):
            return None
        if any(t is not None and t % grain for t in (start, end)):
            return None
        return cls(start, end, equals, grain)

    def where(self, with_grain: bool = True) -> tuple[str, list[Any]]:
        clauses = (['"Grain" = ?'] if with_grain else []) + self.clauses
        params = ([self.grain] if with_grain else []) + self.params
        return ("WHERE " + " AND ".join(clauses)) if clauses else "", params


def _grain_for(bucket_ns: int | None) -> list[int]:
    return [g for g in (DAY_NS, HOUR_NS) if bucket_ns is None or bucket_ns % g == 0]


def usage_rows(
    cursor: Any,
    start: int | None,
    end: int | None,
    equals: dict[str, str],
    group_columns: list[tuple[str, str]],
    bucket_ns: int | None,
    limit: int,
) -> list[dict[str, Any]] | None:
    """Usage sums from the rollup (``group_columns``: (API name, column)); None when the
    question cannot be answered there."""
    if any(column not in DIMENSIONS for _, column in group_columns):
        return None
    for grain in _grain_for(bucket_ns):
        aligned = Aligned.of(start, end, equals, grain, DIMENSIONS)
        if aligned is not None:
            break
    else:
        return None
    columns = [f'"{column}" AS "{name}"' for name, column in group_columns]
    params: list[Any] = []
    if bucket_ns:
        columns.insert(0, '("Start" // ?) * ? AS bucket')
        params += [bucket_ns, bucket_ns]
    keys = len(columns)
    group = f"GROUP BY ALL ORDER BY {', '.join(str(i + 1) for i in range(keys))}" if keys else ""
    where, where_params = aligned.where()
    select = ", ".join([*columns, _SUMS])
    result = cursor.execute(
        f"SELECT {select} FROM {ROLLUP_TABLE} {where} {group} LIMIT ?",
        params + where_params + [limit],
    )
    names = [d[0] for d in result.description]
    return [dict(zip(names, values, strict=True)) for values in result.fetchall()]


def sketch_percentiles(
    cursor: Any,
    start: int | None,
    end: int | None,
    equals: dict[str, str],
    by_model: bool,
    bucket_ns: int | None,
) -> dict[tuple[Any, ...], tuple[list[float | None], list[float | None]]] | None:
    """Duration and TTFT percentiles (p50, p95, p99 in ms) per (bucket, model) key from the
    day sketches; None when the question cannot be answered there."""
    if bucket_ns is not None and bucket_ns % DAY_NS:
        return None
    aligned = Aligned.of(start, end, equals, DAY_NS, ("Model",))
    if aligned is None:
        return None
    where, params = aligned.where(with_grain=False)
    bucket = '("Start" // ?) * ?' if bucket_ns else "NULL::BIGINT"
    bucket_params = [bucket_ns, bucket_ns] if bucket_ns else []
    model = '"Model"' if by_model else "NULL::VARCHAR"
    table = cursor.sql(
        f'SELECT {bucket} AS bucket, {model} AS model, "DurationBins", "TtftBins" '
        f"FROM {SKETCH_TABLE} {where}",
        params=bucket_params + params,
    ).to_arrow_table()
    out: dict[tuple[Any, ...], tuple[list[float | None], list[float | None]]] = {}
    if table.num_rows == 0:
        return out
    buckets = table.column("bucket").to_pylist()
    models = table.column("model").to_pylist()
    keys = list(zip(buckets, models, strict=True))
    index: dict[tuple[Any, ...], int] = {}
    group = np.array([index.setdefault(k, len(index)) for k in keys], dtype=np.int64)
    summed = {}
    for column in ("DurationBins", "TtftBins"):
        counts = table.column(column).combine_chunks().flatten().to_numpy()
        counts = counts.reshape(table.num_rows, SKETCH_BINS)
        total = np.zeros((len(index), SKETCH_BINS), dtype=np.int64)
        np.add.at(total, group, counts)
        summed[column] = total
    durations = percentiles(summed["DurationBins"])
    ttfts = percentiles(summed["TtftBins"])
    for key, i in index.items():
        out[key] = (durations[i], ttfts[i])
    return out


def model_rows(cursor: Any, start: int | None, end: int | None) -> list[dict[str, Any]] | None:
    """``models`` from the day rollup and sketches; None unless the range is whole days."""
    aligned = Aligned.of(start, end, {}, DAY_NS, DIMENSIONS)
    if aligned is None:
        return None
    where, params = aligned.where()
    totals = ", ".join(f"sum({name}) AS {name}" for name in _SUM_NAMES)
    result = cursor.execute(
        f'SELECT "Model" AS model, arg_max("Provider", calls) AS provider, '
        f"min(first_seen) AS first_seen, max(last_seen) AS last_seen, {totals} "
        f'FROM (SELECT "Model", "Provider", min("FirstSeen") AS first_seen, '
        f'max("LastSeen") AS last_seen, {_SUMS} FROM {ROLLUP_TABLE} {where} GROUP BY ALL) '
        "GROUP BY ALL ORDER BY cost_pico_usd DESC, calls DESC",
        params,
    )
    names = [d[0] for d in result.description]
    rows = [dict(zip(names, values, strict=True)) for values in result.fetchall()]
    sketches = sketch_percentiles(cursor, start, end, {}, True, None) or {}
    for row in rows:
        latency, ttft = sketches.get((None, row["model"]), ([None] * 3, [None] * 3))
        row["latency"], row["ttft"] = latency, ttft
    return rows
