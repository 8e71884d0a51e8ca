"""``llmops_rollup``: calls summed per hour and per day by service, provider, model and
operation; ``llmops_sketch``: per day and model, mergeable latency sketches.

Both are *appended to*, never updated, on each write: a write adds the partial sums of its own
calls (summed in numpy, one row per hour or day and group it touches) in the same
transaction as the calls. An upsert (``ON CONFLICT DO UPDATE``) cost DuckDB 10 to 20 ms per write
whatever its size; a plain append of a few rows costs about a tenth of that. Readers sum rows
anyway (an answer spans many hours), so partial rows give the same answers; :func:`compact`
merges the partial rows of the hours and days written lately, every minute or so, so that the
table stays about as small as with upserts.

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

from opstrata.plugins.llmops.dims import Combinations, dense_groups, group_rows

__all__ = [
    "DAY_NS",
    "DIMENSIONS",
    "HOUR_NS",
    "MEASURES",
    "ROLLUP_TABLE",
    "SKETCH_BINS",
    "SKETCH_TABLE",
    "compact",
    "partial_rows",
    "percentiles",
    "roll_up",
    "rollup_ddl",
    "sketch_ddl",
    "sketch_rows",
]

ROLLUP_TABLE = "llmops_rollup"
SKETCH_TABLE = "llmops_sketch"
HOUR_NS = 3_600_000_000_000
DAY_NS = 24 * HOUR_NS
DIMENSIONS = ("ServiceName", "Provider", "Model", "Operation")
"""Few and of low cardinality, so the table stays small (days by services by models); prompts,
users and sessions are answered from the calls."""
MEASURES = (
    "Calls", "Errors", "InputTokens", "OutputTokens", "CacheReadTokens", "CacheWriteTokens",
    "ReasoningTokens", "TotalTokens", "CostPicoUsd", "UnpricedCalls",
)  # fmt: skip
"""Summed columns of ``llmops_rollup`` (BIGINT), in table order after the dimensions."""
_SUMMED_FROM_CALLS = (
    "InputTokens", "OutputTokens", "CacheReadTokens", "CacheWriteTokens", "ReasoningTokens",
    "TotalTokens", "CostPicoUsd",
)  # fmt: skip
SKETCH_BINS = 160
_ZERO = pa.scalar(0, pa.int64())  # typed: a bare value costs a conversion per call
_FALSE = pa.scalar(False, pa.bool_())
_PER_DOUBLING = 8
_FLOOR_NS = 1_000_000  # bin 0 holds everything up to 1 ms; the last bin everything past ~16 min
_KEY = ("Grain", "Start", *DIMENSIONS)
_ROLLUP_SCHEMA = pa.schema(
    [("Grain", pa.int64()), ("Start", pa.int64())]
    + [(d, pa.string()) for d in DIMENSIONS]
    + [(m, pa.int64()) for m in MEASURES]
    + [("FirstSeen", pa.int64()), ("LastSeen", pa.int64())]
)
_SKETCH_SCHEMA = pa.schema(
    [
        ("Start", pa.int64()),
        ("Model", pa.string()),
        ("DurationBins", pa.list_(pa.int64())),
        ("TtftBins", pa.list_(pa.int64())),
    ]
)


def rollup_ddl() -> str:
    # No primary key: rows are partial sums, appended (see the module's docstring).
    columns = ", ".join(
        f'"{f.name}" {"VARCHAR" if f.type == pa.string() else "BIGINT"}' for f in _ROLLUP_SCHEMA
    )
    return f"CREATE TABLE IF NOT EXISTS {ROLLUP_TABLE} ({columns})"


def sketch_ddl() -> str:
    return (
        f'CREATE TABLE IF NOT EXISTS {SKETCH_TABLE} ("Start" BIGINT, "Model" VARCHAR, '
        '"DurationBins" BIGINT[], "TtftBins" BIGINT[])'
    )


def _merge(rows: pa.Table, grain: int | None) -> pa.Table:
    """Rows (``_ROLLUP_SCHEMA``, or per-call columns when first summed) summed by key; with
    ``grain`` the starts are first floored to it (hours into days)."""
    if grain is not None:
        step = pa.scalar(grain, pa.int64())  # typed: a bare int costs a failed import per call
        start = pc.multiply(pc.divide(rows.column("Start"), step), step)
        rows = rows.set_column(rows.schema.get_field_index("Start"), "Start", start)
        rows = rows.set_column(rows.schema.get_field_index("Grain"), "Grain",
                               pa.array(np.full(rows.num_rows, grain, dtype=np.int64)))  # fmt: skip
    merged = rows.group_by(list(_KEY), use_threads=False).aggregate(
        [(m, "sum") for m in MEASURES] + [("FirstSeen", "min"), ("LastSeen", "max")]
    )
    return pa.table(
        [merged.column(c) for c in _KEY]
        + [pc.cast(merged.column(f"{m}_sum"), pa.int64()) for m in MEASURES]
        + [merged.column("FirstSeen_min"), merged.column("LastSeen_max")],
        schema=_ROLLUP_SCHEMA,
    )


def partial_rows(calls: pa.Table, groups: Combinations | None = None) -> pa.Table:
    """The rollup rows of ``calls`` alone (an Arrow table of ``llmops_calls`` rows): one per
    hour and per day and group they touch, summed in numpy (exact int64 sums). ``groups``:
    the calls' combinations if known (the writer has them from giving ids)."""
    groups = groups if groups is not None else group_rows(calls, DIMENSIONS)
    code, names = _codes(groups, DIMENSIONS)
    row_code = code[groups.group]
    width = len(names)
    n = calls.num_rows
    times = pc.cast(calls.column("Timestamp"), pa.int64()).to_numpy(zero_copy_only=False)
    # Hours and days grouped apart, summed in one pass over the calls taken twice.
    found = [_time_groups(times, grain, row_code, width) for grain in (HOUR_NS, DAY_NS)]
    (hour_rows, hour_of), (day_rows, day_of) = found
    of = np.concatenate([hour_of, day_of + len(hour_rows)])
    counts = np.bincount(of, minlength=len(hour_rows) + len(day_rows))
    # A write touches few groups: as uint16 numpy sorts them by radix (~10x faster).
    order = np.argsort(of.astype(np.uint16) if len(counts) <= 1 << 16 else of, kind="stable")
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    take = np.where(order >= n, order - n, order)
    # Every summed column in one matrix: one gather and one reduceat for all of them.
    values = np.empty((n, len(_SUMMED_FROM_CALLS) + 2), dtype=np.int64)
    values[:, 0] = pc.fill_null(calls.column("IsError"), _FALSE).to_numpy(zero_copy_only=False)
    for j, name in enumerate(_SUMMED_FROM_CALLS, 1):
        values[:, j] = pc.fill_null(calls.column(name), _ZERO).to_numpy(zero_copy_only=False)
    values[:, -1] = pc.is_null(calls.column("CostPicoUsd")).to_numpy(zero_copy_only=False)
    sums = np.add.reduceat(values[take], starts, axis=0)
    at = np.concatenate([hour_rows, day_rows])
    grain = np.repeat(np.array([HOUR_NS, DAY_NS], np.int64), [len(hour_rows), len(day_rows)])
    picked = [names[c] for c in row_code[at]]
    ordered_times = times[take]
    columns: dict[str, Any] = {
        "Grain": pa.array(grain),
        "Start": pa.array(times[at] // grain * grain),
        **{d: pa.array([p[i] for p in picked], pa.string()) for i, d in enumerate(DIMENSIONS)},
        "Calls": pa.array(counts.astype(np.int64)),
        "Errors": pa.array(sums[:, 0]),
        **{m: pa.array(sums[:, j]) for j, m in enumerate(_SUMMED_FROM_CALLS, 1)},
        "UnpricedCalls": pa.array(sums[:, -1]),
        "FirstSeen": pa.array(np.minimum.reduceat(ordered_times, starts)),
        "LastSeen": pa.array(np.maximum.reduceat(ordered_times, starts)),
    }
    return pa.table(columns, schema=_ROLLUP_SCHEMA)


def _codes(
    groups: Combinations, columns: tuple[str, ...]
) -> tuple[np.ndarray, list[tuple[Any, ...]]]:
    """For each combination of ``groups``, the number of its values of ``columns`` (some of
    the ``groups``' columns), and those values by number: a few Python tuples."""
    at = [groups.columns.index(c) for c in columns]
    index: dict[tuple[Any, ...], int] = {}
    code = [index.setdefault(tuple(v[j] for j in at), len(index)) for v in groups.values]
    return np.array(code, dtype=np.int64), list(index)


def _time_groups(
    times: np.ndarray, grain: int, code: np.ndarray, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """A row of each (``grain`` step, code) the calls touch, and each call's group."""
    step = times // grain
    low = int(step.min())
    span = (int(step.max()) - low + 1) * width
    return dense_groups((step - low) * width + code, span)


def _floor(times: pa.Array | pa.ChunkedArray, grain: int) -> pa.Array | pa.ChunkedArray:
    step = pa.scalar(grain, pa.int64())  # typed: a bare int costs a failed import per call
    return pc.multiply(pc.divide(times, step), step)


def _bins(ns: pa.Array) -> np.ndarray:
    """Sketch bucket of each duration (ns); -1 where absent."""
    values = pc.fill_null(ns, -1).to_numpy(zero_copy_only=False).astype(np.float64)
    ratio = np.maximum(values, _FLOOR_NS) / _FLOOR_NS
    bins = np.minimum(np.floor(np.log2(ratio) * _PER_DOUBLING), SKETCH_BINS - 1).astype(np.int64)
    return np.where(values < 0, -1, bins)


def _histograms(starts: np.ndarray, models: pa.Array, bins: dict[str, np.ndarray]) -> pa.Table:
    """Per (start, model), the summed counts of ``bins`` (name: rows of SKETCH_BINS counts, or
    per-row bin numbers when 1-d)."""
    key = np.unique(starts, return_inverse=True)[1].astype(np.int64)
    # A NULL model is a value of its own (masked, its index would be NaN and fold NULL rows of
    # different days together).
    encoded = pc.dictionary_encode(models, null_encoding="encode")
    key = key * len(encoded.dictionary) + encoded.indices.to_numpy(zero_copy_only=False)
    _, first, group = np.unique(key, return_index=True, return_inverse=True)
    count = len(first)
    columns: dict[str, Any] = {
        "Start": pa.array(starts[first], pa.int64()),
        "Model": models.take(pa.array(first)),
    }
    offsets = pa.array(np.arange(count + 1, dtype=np.int32) * SKETCH_BINS, pa.int32())
    for name, values in bins.items():
        if values.ndim == 1:  # bin numbers of single calls (-1: none)
            given = values >= 0
            counts = np.bincount(
                group[given] * SKETCH_BINS + values[given], minlength=count * SKETCH_BINS
            )
        else:  # rows of counts
            counts = np.zeros((count, SKETCH_BINS), dtype=np.int64)
            np.add.at(counts, group, values)
        columns[name] = pa.ListArray.from_arrays(offsets, pa.array(counts.ravel(), pa.int64()))
    return pa.table(columns, schema=_SKETCH_SCHEMA)


def sketch_rows(calls: pa.Table, groups: Combinations | None = None) -> pa.Table:
    """Per day and model, the duration and TTFT histograms of ``calls`` (numpy counts);
    ``groups`` as for :func:`partial_rows`."""
    groups = groups if groups is not None else group_rows(calls, ("Model",))
    code, names = _codes(groups, ("Model",))
    group = groups.group
    times = pc.cast(calls.column("Timestamp"), pa.int64()).to_numpy(zero_copy_only=False)
    rows, of = _time_groups(times, DAY_NS, code[group], len(names))
    count = len(rows)
    offsets = pa.array(np.arange(count + 1, dtype=np.int32) * SKETCH_BINS, pa.int32())
    columns: dict[str, Any] = {
        "Start": pa.array(times[rows] // DAY_NS * DAY_NS, pa.int64()),
        "Model": pa.array([names[c][0] for c in code[group[rows]]], pa.string()),
    }
    for name, source in (("DurationBins", "Duration"), ("TtftBins", "Ttft")):
        values = _bins(calls.column(source).combine_chunks())
        given = values >= 0
        counts = np.bincount(of[given] * SKETCH_BINS + values[given], minlength=count * SKETCH_BINS)
        columns[name] = pa.ListArray.from_arrays(offsets, pa.array(counts, pa.int64()))
    return pa.table(columns, schema=_SKETCH_SCHEMA)


def roll_up(cursor: Any, calls: pa.Table, groups: Combinations | None = None) -> int:
    """Append the partial rollup rows and day sketches of ``calls`` (an Arrow table of
    ``llmops_calls`` rows): plain inserts, no upsert (see the module's docstring). Returns how
    many rows it appended (both tables). ``groups``: the calls' combinations of at least
    ``DIMENSIONS`` (with their texts) if known."""
    if calls.num_rows == 0:
        return 0
    if groups is None:
        groups = group_rows(calls, DIMENSIONS)
    rows, sketches = partial_rows(calls, groups), sketch_rows(calls, groups)
    _append(cursor, ROLLUP_TABLE, rows)
    _append(cursor, SKETCH_TABLE, sketches)
    return rows.num_rows + sketches.num_rows


def _append(cursor: Any, table: str, rows: pa.Table) -> None:
    # Found by DuckDB's replacement scan (a local of the caller): registering a view and
    # dropping it again costs more than the insert itself.
    llmops_appending = rows  # noqa: F841
    cursor.execute(f"INSERT INTO {table} SELECT * FROM llmops_appending")


def compact(cursor: Any, since_ns: int | None = None) -> int:
    """Merge the partial rows of every hour and day from ``since_ns`` on (``None``: all) into
    one row per key, in the caller's transaction. Returns how many rows it removed."""
    hour_from = -(2**62) if since_ns is None else since_ns // HOUR_NS * HOUR_NS
    day_from = -(2**62) if since_ns is None else since_ns // DAY_NS * DAY_NS
    where = f'("Grain" = {HOUR_NS} AND "Start" >= ?) OR ("Grain" = {DAY_NS} AND "Start" >= ?)'
    rows = cursor.sql(
        f"SELECT * FROM {ROLLUP_TABLE} WHERE {where}", params=[hour_from, day_from]
    ).to_arrow_table()
    removed = 0
    if rows.num_rows:
        merged = _merge(pa.table(rows.columns, schema=_ROLLUP_SCHEMA), None)
        if merged.num_rows < rows.num_rows:
            cursor.execute(f"DELETE FROM {ROLLUP_TABLE} WHERE {where}", [hour_from, day_from])
            _append(cursor, ROLLUP_TABLE, merged)
            removed += rows.num_rows - merged.num_rows
    sketches = cursor.sql(
        f'SELECT * FROM {SKETCH_TABLE} WHERE "Start" >= ?', params=[day_from]
    ).to_arrow_table()
    if sketches.num_rows:
        bins = {
            name: sketches.column(name).combine_chunks().flatten().to_numpy()
            .reshape(sketches.num_rows, SKETCH_BINS)
            for name in ("DurationBins", "TtftBins")
        }  # fmt: skip
        starts = sketches.column("Start").to_numpy()
        merged = _histograms(starts, sketches.column("Model").combine_chunks(), bins)
        if merged.num_rows < sketches.num_rows:
            cursor.execute(f'DELETE FROM {SKETCH_TABLE} WHERE "Start" >= ?', [day_from])
            _append(cursor, SKETCH_TABLE, merged)
            removed += sketches.num_rows - merged.num_rows
    return removed


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
