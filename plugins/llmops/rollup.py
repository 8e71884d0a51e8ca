"""``llmops_rollup``: calls summed per hour and per day by service, provider, model and
operation; ``llmops_sketch``: per day and model, mergeable latency sketches. Both are upserted
in the same transaction as the calls.

Usage questions that group and filter only by the rollup's columns, over whole hours or days,
read it instead of the calls: the same sums, from some thousand rows instead of millions. The
sketches are log-bucket histograms of duration and time to first token (``SKETCH_BINS`` counts
each, 8 per doubling from 1 ms, so a percentile read from them is within about 4.4 % of the
exact one); counts add up across days, so percentiles per model over whole days come from them.
They are kept per model only: a histogram per service and operation too would cost each write
several times more.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "DAY_NS",
    "DIMENSIONS",
    "HOUR_NS",
    "MEASURES",
    "ROLLUP_TABLE",
    "SKETCH_BINS",
    "SKETCH_TABLE",
    "percentiles",
    "roll_up",
    "rollup_ddl",
    "sketch_ddl",
]

ROLLUP_TABLE = "llmops_rollup"
SKETCH_TABLE = "llmops_sketch"
HOUR_NS = 3_600_000_000_000
DAY_NS = 24 * HOUR_NS
DIMENSIONS = ("ServiceName", "Provider", "Model", "Operation")
"""Few and of low cardinality, so the table stays small (days by services by models); prompts,
users and sessions are answered from the calls."""
MEASURES = (
    ("Calls", "count(*)"),
    ("Errors", 'count(*) FILTER (WHERE "IsError")'),
    ("InputTokens", 'coalesce(sum("InputTokens"), 0)'),
    ("OutputTokens", 'coalesce(sum("OutputTokens"), 0)'),
    ("CacheReadTokens", 'coalesce(sum("CacheReadTokens"), 0)'),
    ("CacheWriteTokens", 'coalesce(sum("CacheWriteTokens"), 0)'),
    ("ReasoningTokens", 'coalesce(sum("ReasoningTokens"), 0)'),
    ("TotalTokens", 'coalesce(sum("TotalTokens"), 0)'),
    ("CostPicoUsd", 'coalesce(sum("CostPicoUsd"), 0)'),
    ("UnpricedCalls", 'count(*) FILTER (WHERE "CostPicoUsd" IS NULL)'),
)
SKETCH_BINS = 160
_PER_DOUBLING = 8
_FLOOR_NS = 1_000_000  # bin 0 holds everything up to 1 ms; the last bin everything past ~16 min
_MERGE = "list_transform(list_zip({a}, {b}), lambda x: x[1] + x[2])"


def rollup_ddl() -> str:
    dims = ", ".join(f'"{d}" VARCHAR' for d in DIMENSIONS)
    measures = ", ".join(f'"{m}" BIGINT' for m, _ in MEASURES)
    key = ", ".join(f'"{d}"' for d in ("Grain", "Start", *DIMENSIONS))
    return (
        f'CREATE TABLE IF NOT EXISTS {ROLLUP_TABLE} ("Grain" BIGINT, "Start" BIGINT, {dims}, '
        f'{measures}, "FirstSeen" BIGINT, "LastSeen" BIGINT, PRIMARY KEY ({key}))'
    )


def sketch_ddl() -> str:
    return (
        f'CREATE TABLE IF NOT EXISTS {SKETCH_TABLE} ("Start" BIGINT, "Model" VARCHAR, '
        '"DurationBins" BIGINT[], "TtftBins" BIGINT[], PRIMARY KEY ("Start", "Model"))'
    )


def _bins(ns: pa.Array) -> np.ndarray:
    """Sketch bucket of each duration (ns); -1 where absent."""
    values = pc.fill_null(ns, -1).to_numpy(zero_copy_only=False).astype(np.float64)
    ratio = np.maximum(values, _FLOOR_NS) / _FLOOR_NS
    bins = np.minimum(np.floor(np.log2(ratio) * _PER_DOUBLING), SKETCH_BINS - 1).astype(np.int64)
    return np.where(values < 0, -1, bins)


def _sketches(calls: pa.Table) -> pa.Table:
    """Per day and model, the duration and TTFT histograms of ``calls`` (numpy counts)."""
    day = pc.cast(calls.column("Timestamp"), pa.int64()).to_numpy(zero_copy_only=False)
    day = day // DAY_NS * DAY_NS
    key = np.unique(day, return_inverse=True)[1].astype(np.int64)
    for name in ("Model",):
        encoded = pc.dictionary_encode(calls.column(name).combine_chunks())
        key = key * len(encoded.dictionary) + encoded.indices.to_numpy(zero_copy_only=False)
    _, first, group = np.unique(key, return_index=True, return_inverse=True)
    count = len(first)
    columns: dict[str, Any] = {"Start": pa.array(day[first], pa.int64())}
    columns["Model"] = calls.column("Model").take(pa.array(first))
    offsets = pa.array(np.arange(count + 1, dtype=np.int32) * SKETCH_BINS, pa.int32())
    for name, column in (("DurationBins", "Duration"), ("TtftBins", "Ttft")):
        bins = _bins(calls.column(column).combine_chunks())
        given = bins >= 0
        counts = np.bincount(
            group[given] * SKETCH_BINS + bins[given], minlength=count * SKETCH_BINS
        )
        columns[name] = pa.ListArray.from_arrays(offsets, pa.array(counts, pa.int64()))
    return pa.table(columns)


def roll_up(cursor: Any, calls: pa.Table) -> None:
    """Add ``calls`` (an Arrow table of ``llmops_calls`` rows) to ``llmops_rollup`` and
    ``llmops_sketch``, summing into the hours and days already there."""
    if calls.num_rows == 0:
        return
    cursor.register("llmops_rolling_up", calls)
    cursor.register("llmops_rolling_sketches", _sketches(calls))
    dims = ", ".join(f'"{d}"' for d in DIMENSIONS)
    sums = ", ".join(f'{expr} AS "{name}"' for name, expr in MEASURES)
    updates = ", ".join(f'"{m}" = {ROLLUP_TABLE}."{m}" + EXCLUDED."{m}"' for m, _ in MEASURES)
    merges = ", ".join(
        f'"{c}" = ' + _MERGE.format(a=f'{SKETCH_TABLE}."{c}"', b=f'EXCLUDED."{c}"')
        for c in ("DurationBins", "TtftBins")
    )
    try:
        # Both grains in one statement: each call once per grain.
        cursor.execute(
            f'INSERT INTO {ROLLUP_TABLE} SELECT "Grain", epoch_ns("Timestamp") // "Grain" * '
            f'"Grain" AS "Start", {dims}, {sums}, epoch_ns(min("Timestamp")), '
            f'epoch_ns(max("Timestamp")) FROM llmops_rolling_up, '
            f'(VALUES ({HOUR_NS}::BIGINT), ({DAY_NS}::BIGINT)) AS grains("Grain") GROUP BY ALL '
            f"ON CONFLICT DO UPDATE SET {updates}, "
            f'"FirstSeen" = least({ROLLUP_TABLE}."FirstSeen", EXCLUDED."FirstSeen"), '
            f'"LastSeen" = greatest({ROLLUP_TABLE}."LastSeen", EXCLUDED."LastSeen")'
        )
        cursor.execute(
            f"INSERT INTO {SKETCH_TABLE} SELECT * FROM llmops_rolling_sketches "
            f"ON CONFLICT DO UPDATE SET {merges}"
        )
    finally:
        cursor.unregister("llmops_rolling_up")
        cursor.unregister("llmops_rolling_sketches")


_MIDPOINT_MS = (_FLOOR_NS / 1e6) * np.exp2((np.arange(SKETCH_BINS) + 0.5) / _PER_DOUBLING)
_MIDPOINT_MS[0] = _FLOOR_NS / 1e6  # bin 0 is "up to 1 ms"


def percentiles(
    bins: np.ndarray, quantiles: tuple[float, ...] = (0.5, 0.95, 0.99)
) -> list[list[float | None]]:
    """Percentiles in ms of each row of summed sketch counts (rows, bins): the middle of the
    bucket holding the nearest-rank value; None where a row has no counts. All rows at once."""
    counts = np.atleast_2d(bins)
    cumulative = np.cumsum(counts, axis=1)
    total = cumulative[:, -1]
    out = np.empty((len(counts), len(quantiles)), dtype=object)
    for j, q in enumerate(quantiles):
        rank = np.maximum(1, np.ceil(q * total - 1e-9))
        found = (cumulative >= rank[:, None]).argmax(axis=1)
        out[:, j] = np.round(_MIDPOINT_MS[found], 3)
    out[total == 0] = None
    return [[None if v is None else float(v) for v in row] for row in out]
