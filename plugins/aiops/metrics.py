"""Series from metric points: gauges as they are, sums as rates, histograms as quantiles.

- gauges, non-monotonic sums, summaries' quantiles: the value;
- monotonic sums: the rate per second — cumulative ones from the difference to the previous
  point of the same stream (a value that drops, or a new start time, is a reset: no point),
  delta ones as value / (time - start);
- histograms and exponential histograms: p50 and p99 of the interval (the difference of
  cumulative bucket counts, or the delta counts), interpolated within the bucket.

A stream is one metric of one resource with one attribute set; the series key is built from
Arrow columns at once, and only a stream seen for the first time costs Python work.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from opstrata import Table
from opstrata.plugins.aiops.arrowkeys import int_times, map_as_dict, map_to_text, text_column
from opstrata.plugins.aiops.scorer import SeriesScorer
from opstrata.plugins.aiops.series import (
    BOTH,
    UP,
    SeriesMeta,
    entity_of_metric,
    locating_resource,
)

__all__ = ["MetricSeries"]

DELTA, CUMULATIVE = 1, 2
_LATENCY = re.compile(r"(duration|latency|time_to_first_token|response_time|_seconds$)", re.I)
QUANTILES = (0.5, 0.99)


class MetricSeries:
    """Derives series from metric tables and feeds them to a scorer."""

    def __init__(self, scorer: SeriesScorer) -> None:
        self.scorer = scorer
        self.prev_value = np.zeros(0)
        self.prev_time = np.zeros(0, np.int64)
        self.prev_start = np.zeros(0, np.int64)
        self.seen = np.zeros(0, np.bool_)
        self.hist_prev: dict[str, tuple[int, int, np.ndarray, int]] = {}

    def consume(self, tables: dict[Table, pa.RecordBatch]) -> int:
        points = 0
        for table, records in tables.items():
            if not records.num_rows:
                continue
            if table is Table.METRICS_GAUGE:
                points += self._values(records, ":value" if False else "", None)
            elif table is Table.METRICS_SUM:
                points += self._sums(records)
            elif table in (Table.METRICS_HISTOGRAM, Table.METRICS_EXPONENTIAL_HISTOGRAM):
                points += self._histograms(records, table)
            elif table is Table.METRICS_SUMMARY:
                points += self._summaries(records)
        return points

    # -- keys and metadata --------------------------------------------------------------------

    def _stream_keys(self, records: pa.RecordBatch) -> pa.Array:
        return pc.binary_join_element_wise(
            text_column(records, "MetricName"),
            text_column(records, "ServiceName"),
            map_to_text(records.column("ResourceAttributes")),
            map_to_text(records.column("Attributes")),
            "|",
        )

    def _describe(
        self, records: pa.RecordBatch, suffix: str, unit: str | None = None, counts: bool = False
    ) -> Callable[[int, str], SeriesMeta]:
        names = records.column("MetricName")
        units = records.column("MetricUnit")
        resources = records.column("ResourceAttributes")
        attributes = records.column("Attributes")

        def describe(row: int, key: str) -> SeriesMeta:
            metric = str(names[row].as_py() or "")
            resource = map_as_dict(resources, row)
            service = records.column("ServiceName")[row].as_py()
            if service and "service.name" not in resource:
                resource["service.name"] = str(service)
            labels = map_as_dict(attributes, row)
            entity = entity_of_metric(metric, resource, labels)
            latency = bool(_LATENCY.search(metric)) and suffix.startswith(":p")
            if entity.kind == "metric" and resource.get("service.name"):
                entity = entity  # no better entity: keep the metric itself
            return SeriesMeta(
                id=0,
                key=key,
                name=metric + suffix,
                kind="latency"
                if latency and entity.kind in ("service", "model")
                else "metric_anomaly",
                entity=entity,
                resource=locating_resource(resource),
                labels=labels,
                unit=unit if unit is not None else str(units[row].as_py() or ""),
                # A histogram measures a cost (time, tokens, bytes): only its quantiles rising
                # is trouble; a smaller median of token counts is not an incident.
                direction=UP if suffix.startswith(":p") else BOTH,
                counts=counts,
                rate=suffix == ":rate",
            )

        return describe

    def _ids(
        self,
        records: pa.RecordBatch,
        rows: np.ndarray,
        keys: pa.Array,
        suffix: str,
        unit: str | None = None,
    ) -> np.ndarray:
        """Series ids of ``rows``: unique keys are looked up once each."""
        encoded = pc.dictionary_encode(
            keys.take(pa.array(rows)) if rows.size != len(keys) else keys
        )
        indices = encoded.indices.to_numpy(zero_copy_only=False)
        dictionary = encoded.dictionary.to_pylist()
        first_row = np.full(len(dictionary), -1, np.int64)
        first_row[indices[::-1]] = np.arange(indices.size)[::-1]
        describe = self._describe(records, suffix, unit)
        unique_ids = self.scorer.registry.ids(
            [k + suffix for k in dictionary], lambda i, key: describe(int(rows[first_row[i]]), key)
        )
        return unique_ids[indices]

    # -- tables -----------------------------------------------------------------------------

    def _values(self, records: pa.RecordBatch, suffix: str, rows: np.ndarray | None) -> int:
        all_rows = np.arange(records.num_rows) if rows is None else rows
        if not all_rows.size:
            return 0
        keys = self._stream_keys(records)
        ids = self._ids(records, all_rows, keys, suffix)
        times = int_times(records, "TimeUnix")[all_rows]
        values = records.column("Value").to_numpy(zero_copy_only=False)[all_rows]
        self.scorer.feed(ids, times, values)
        return int(all_rows.size)

    def _grow(self, size: int) -> None:
        if size <= self.seen.size:
            return
        cap = max(size, 2 * self.seen.size, 64)
        for name in ("prev_value", "prev_time", "prev_start", "seen"):
            old = getattr(self, name)
            new = np.zeros(cap, old.dtype)
            new[: old.size] = old
            setattr(self, name, new)

    def _sums(self, records: pa.RecordBatch) -> int:
        monotonic = pc.fill_null(records.column("IsMonotonic"), False).to_numpy(
            zero_copy_only=False
        )
        temporality = (
            records.column("AggregationTemporality").fill_null(0).to_numpy(zero_copy_only=False)
        )
        points = self._values(records, "", np.flatnonzero(~monotonic))
        rows = np.flatnonzero(monotonic)
        if not rows.size:
            return points
        keys = self._stream_keys(records)
        ids = self._ids(records, rows, keys, ":rate")
        times = int_times(records, "TimeUnix")[rows]
        starts = int_times(records, "StartTimeUnix")[rows]
        values = records.column("Value").to_numpy(zero_copy_only=False)[rows]
        delta = temporality[rows] == DELTA
        rates = np.full(rows.size, np.nan)
        seconds = np.zeros(rows.size)  # what each rate covers: its count is rate x seconds
        span = (times - starts) * 1e-9
        ok = delta & (span > 0)
        rates[ok] = values[ok] / span[ok]
        seconds[ok] = span[ok]
        # Cumulative: in (series, time) order, each point against the one before it.
        cum = np.flatnonzero(~delta & (ids >= 0))
        if cum.size:
            self._grow(int(ids.max()) + 1)
            order = cum[np.lexsort((times[cum], ids[cum]))]
            for i in order.tolist():  # per point, but only arithmetic on scalars
                s = int(ids[i])
                if (
                    self.seen[s]
                    and times[i] > self.prev_time[s]
                    and values[i] >= self.prev_value[s]
                    and starts[i] == self.prev_start[s]
                ):
                    seconds[i] = (times[i] - self.prev_time[s]) * 1e-9
                    rates[i] = (values[i] - self.prev_value[s]) / seconds[i]
                self.seen[s] = True
                self.prev_value[s], self.prev_time[s], self.prev_start[s] = (
                    values[i],
                    times[i],
                    starts[i],
                )
        self.scorer.feed(ids, times, rates, weights=seconds)
        return points + int(np.isfinite(rates).sum())

    def _histograms(self, records: pa.RecordBatch, table: Table) -> int:
        keys = self._stream_keys(records).to_pylist()
        times = int_times(records, "TimeUnix")
        starts = int_times(records, "StartTimeUnix")
        temporality = (
            records.column("AggregationTemporality").fill_null(0).to_numpy(zero_copy_only=False)
        )
        exponential = table is Table.METRICS_EXPONENTIAL_HISTOGRAM
        if exponential:
            counts_col = records.column("PositiveBucketCounts").to_pylist()
            scale = records.column("Scale").to_pylist()
            offset = records.column("PositiveOffset").to_pylist()
            zero = records.column("ZeroCount").to_pylist()
        else:
            counts_col = records.column("BucketCounts").to_pylist()
            bounds_col = records.column("ExplicitBounds").to_pylist()
        mins = records.column("Min").to_pylist()
        maxs = records.column("Max").to_pylist()
        exemplars = _exemplar_trace_ids(records.column("Exemplars"))
        rows, quantiles, traces, buckets = [], [], [], []
        for row in range(records.num_rows):
            counts = np.asarray(counts_col[row] or [], np.float64)
            shape = (
                (int(scale[row]), int(offset[row]), int(zero[row] or 0))
                if exponential
                else (0, 0, 0)
            )
            if temporality[row] != DELTA:
                prev = self.hist_prev.get(keys[row])
                self.hist_prev[keys[row]] = (int(starts[row]), shape[0], counts.copy(), shape[2])
                if (
                    prev is None
                    or prev[0] != starts[row]
                    or prev[1] != shape[0]
                    or prev[2].size != counts.size
                ):
                    continue
                counts = counts - prev[2]
                shape = (shape[0], shape[1], shape[2] - prev[3])
                if (counts < 0).any() or shape[2] < 0:
                    continue
            if counts.sum() + shape[2] <= 0:
                continue
            if exponential:
                qs = _exp_quantiles(counts, *shape)
                edges = _exp_edges(counts, *shape)
            else:
                qs = _explicit_quantiles(counts, bounds_col[row] or [], mins[row], maxs[row])
                edges = _explicit_edges(counts, bounds_col[row] or [], mins[row], maxs[row])
            buckets.append(edges)
            rows.append(row)
            quantiles.append(qs)
            traces.append([t for t in (exemplars[row] or []) if t])
        if not rows:
            return 0
        rows_a = np.array(rows)
        keys_arr = pa.array(keys)
        q = np.array(quantiles)  # rows x (value, noise below/above, resolution below/above) x q
        totals = np.array([float(c.sum()) for _, _, c in buckets])

        def tail_counts(points: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
            # Samples in buckets wholly below / above each threshold (the point's interval).
            out = np.zeros((points.size, 2))
            pairs = zip(points.tolist(), thresholds.tolist(), strict=True)
            for i, (point, threshold) in enumerate(pairs):
                lower, upper, counts = buckets[point]
                out[i, 0] = counts[upper <= threshold].sum()
                out[i, 1] = counts[lower >= threshold].sum()
            return out

        fed = 0
        for j, quantile in enumerate(QUANTILES):
            suffix = f":p{round(quantile * 100)}"
            ids = self._ids(records, rows_a, keys_arr, suffix)
            self.scorer.feed(
                ids,
                times[rows_a],
                q[:, 0, j],
                traces,
                noise=q[:, 1:3, j],
                resolution=q[:, 3:5, j],
                weights=totals,
                quantiles=np.full(rows_a.size, quantile),
                tail_counts=tail_counts,
            )
            fed += rows_a.size
        return fed

    def _summaries(self, records: pa.RecordBatch) -> int:
        quantile_lists = records.column("ValueAtQuantiles").to_pylist()
        times = int_times(records, "TimeUnix")
        keys = self._stream_keys(records)
        fed = 0
        for quantile in QUANTILES:
            rows, values = [], []
            for row, pairs in enumerate(quantile_lists):
                match = [p["Value"] for p in pairs or [] if abs(p["Quantile"] - quantile) < 1e-9]
                if match:
                    rows.append(row)
                    values.append(match[0])
            if rows:
                rows_a = np.array(rows)
                ids = self._ids(records, rows_a, keys, f":p{round(quantile * 100)}")
                self.scorer.feed(ids, times[rows_a], np.array(values))
                fed += len(rows)
        return fed


def _with_noise(
    at: Callable[[float], tuple[float, float, float, int]], total: float
) -> list[list[float]]:
    """[values, noise below, noise above, resolution below, resolution above], one entry per
    quantile of :data:`QUANTILES`.

    *Noise* is the sampling error: the rank of the q-quantile of n samples is binomial,
    ``n q ± sqrt(n q (1 - q))``, and the values at those ranks bound a one-sigma interval, below
    and above the value — where those ranks fall in other buckets (within the value's own bucket
    the interpolation knows nothing, which is the resolution's part). When the upper rank lies
    beyond the sample (a p99 of fewer than ~100 values) the window says nothing about the
    quantile: the noise is infinite and the detector abstains on that point.

    *Resolution* is how far the value may be from the truth because only its bucket is known:
    the distances to the bucket's edges. Only a deviation beyond them counts. ``at(rank)`` is
    (value, bucket's lower edge, upper edge, bucket index).
    """
    out: list[list[float]] = [[], [], [], [], []]
    for q in QUANTILES:
        value, lo, hi, bucket = at(q * total)
        spread = math.sqrt(total * q * (1 - q))
        if q * total + spread > total:
            below = above = math.inf
        else:
            high, _, _, b_high = at(q * total + spread)
            low, _, _, b_low = at(max(q * total - spread, 0.0))
            below = value - low if b_low != bucket else 0.0
            above = high - value if b_high != bucket else 0.0
        for column, x in zip(
            out, (value, below, above, max(value - lo, 0.0), max(hi - value, 0.0)), strict=True
        ):
            column.append(x)
    return out


def _explicit_edges(
    counts: np.ndarray, bounds: list[float], low: float | None, high: float | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lower edges, upper edges, counts) of an explicit-bucket histogram's buckets; the open
    ends reach the recorded min / max, or infinity when there is none."""
    size = counts.size
    edges = np.array([-np.inf, *bounds, np.inf], np.float64)[: size + 1]
    if edges.size < size + 1:  # more counts than bounds allow: the rest is open above
        edges = np.r_[edges, np.full(size + 1 - edges.size, np.inf)]
    lower, upper = edges[:-1].copy(), edges[1:].copy()
    if low is not None and size:
        lower[0] = min(low, upper[0])
    if high is not None and size:
        upper[-1] = max(high, lower[-1])
    return lower, upper, counts


def _exp_edges(
    counts: np.ndarray, scale: int, offset: int, zero: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lower edges, upper edges, counts) of an exponential histogram's positive buckets and
    its zero bucket."""
    base = 2.0 ** (2.0**-scale)
    lower = base ** (offset + np.arange(counts.size, dtype=np.float64))
    return (
        np.r_[0.0, lower],
        np.r_[0.0, lower * base],
        np.r_[float(max(zero, 0)), counts],
    )


def _explicit_quantiles(
    counts: np.ndarray, bounds: list[float], low: float | None, high: float | None
) -> list[float]:
    """p50 and p99 of one explicit-bucket histogram, with their noise and resolution
    (:func:`_with_noise`)."""
    cumulative = np.cumsum(counts)
    total = float(cumulative[-1])
    edges = [
        low if low is not None else (bounds[0] if bounds else 0.0),
        *bounds,
        high if high is not None else (bounds[-1] if bounds else 0.0),
    ]

    def at(rank: float) -> tuple[float, float, float, int]:
        i = min(int(np.searchsorted(cumulative, rank, side="left")), counts.size - 1)
        lo, hi = edges[i], edges[i + 1]
        if lo > hi:
            lo = hi
        before = cumulative[i - 1] if i else 0.0
        share = (rank - before) / counts[i] if counts[i] else 1.0
        return lo + (hi - lo) * min(max(share, 0.0), 1.0), lo, hi, i

    return _with_noise(at, total)


def _exp_quantiles(counts: np.ndarray, scale: int, offset: int, zero: int) -> list[float]:
    """p50 and p99 of one exponential histogram, with their noise and resolution."""
    base = 2.0 ** (2.0**-scale)
    cumulative = zero + np.cumsum(counts)
    total = float(cumulative[-1] if counts.size else zero)

    def at(rank: float) -> tuple[float, float, float, int]:
        if rank <= zero or not counts.size:
            return 0.0, 0.0, 0.0, -1
        i = min(int(np.searchsorted(cumulative, rank, side="left")), counts.size - 1)
        lo = base ** (offset + i)
        return math.sqrt(lo * lo * base), lo, lo * base, i  # the bucket's geometric middle

    return _with_noise(at, total)


def _exemplar_trace_ids(exemplars: pa.Array) -> list[list[str | None]]:
    """Each row's exemplar trace ids. Only that field is converted: the whole struct's
    ``to_pylist`` fails on nanosecond exemplar times (not representable as ``datetime``)."""
    if isinstance(exemplars, pa.ChunkedArray):
        exemplars = exemplars.combine_chunks()
    lengths = pc.fill_null(pc.list_value_length(exemplars), 0).to_numpy(zero_copy_only=False)
    offsets = np.zeros(len(lengths) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    trace_ids = pc.struct_field(pc.list_flatten(exemplars), "TraceId")
    return pa.ListArray.from_arrays(pa.array(offsets), trace_ids).to_pylist()
