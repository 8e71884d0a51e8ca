"""``ExportMetricsServiceRequest`` → one record batch per metric type that has points.

Every data point is one row of ``otel_metrics_gauge`` / ``_sum`` / ``_histogram`` /
``_exponential_histogram`` / ``_summary``.

Building an Arrow array costs a fixed ~5–10 µs here whatever its length, and a request of a
hundred points often spans three or four tables, so that fixed cost rivals the walk itself. Hence
the shape of this module: metrics are grouped by type first and their points appended type by
type, so the columns all tables share (:class:`_Common`) are built once per request and each
table takes a zero-copy slice of them; a type's own columns (:class:`_Kind` subclasses) are the
only per-table arrays. Columns are filled a metric at a time with comprehensions over its points,
which keeps the per-point Python work small.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from opstrata.otlp.anyvalue import AttributeRenderer
from opstrata.otlp.columns import StringMapColumn, hex_or_empty, list_column
from opstrata.otlp.decoded import MAX_TIMESTAMP_NS, DecodedRequest
from opstrata.otlp.limits import Tally
from opstrata.otlp.scopes import ScopeColumns, take_scopes
from opstrata.schema import (
    EXEMPLAR_TYPE,
    METRICS_EXPONENTIAL_HISTOGRAM,
    METRICS_GAUGE,
    METRICS_HISTOGRAM,
    METRICS_SUM,
    METRICS_SUMMARY,
    QUANTILE_TYPE,
    TS,
    Signal,
    Table,
)

__all__ = ["decode_metrics"]

_U64_LIST = pa.list_(pa.uint64())
_F64_LIST = pa.list_(pa.float64())
_EXEMPLAR_LIST = pa.list_(EXEMPLAR_TYPE)
_NO_EXEMPLARS = pa.array([], EXEMPLAR_TYPE)

# ``as_double or float(as_int)`` reads the oneof without a ``WhichOneof`` call per point: an unset
# value reads as 0, so the expression is 0.0 when neither is set, as the Collector stores it.
# The trailing ``or as_double`` keeps the sign of a set -0.0. Inlined where it runs per point.


class _Exemplars:
    """The ``Exemplars`` list-of-structs column."""

    __slots__ = ("attributes", "offsets", "span_ids", "times", "trace_ids", "values")

    def __init__(self) -> None:
        self.offsets = [0]
        self.attributes = StringMapColumn()
        self.times: list[int] = []
        self.values: list[float] = []
        self.span_ids: list[str] = []
        self.trace_ids: list[str] = []

    def add(self, points: Sequence, attrs: AttributeRenderer, tally: Tally) -> None:
        offsets = self.offsets
        times = self.times
        amap = self.attributes
        for point in points:
            for ex in point.exemplars:
                # A bad exemplar time should not cost the point it illustrates: clamp it.
                times.append(min(ex.time_unix_nano, MAX_TIMESTAMP_NS))
                self.values.append(ex.as_double or float(ex.as_int) or ex.as_double)
                self.span_ids.append(hex_or_empty(ex.span_id))
                self.trace_ids.append(hex_or_empty(ex.trace_id))
                attrs.extend(ex.filtered_attributes, amap.keys, amap.values, tally)
                amap.close_row()
            offsets.append(len(times))

    def skip(self, n: int) -> None:
        """Rows of a type that has no exemplars (summaries)."""
        self.offsets += [self.offsets[-1]] * n

    def to_arrow(self) -> pa.Array:
        if not self.times:
            return list_column(self.offsets, _NO_EXEMPLARS, _EXEMPLAR_LIST)
        structs = pa.StructArray.from_arrays(
            [
                self.attributes.to_arrow(),
                pa.array(self.times, TS),
                pa.array(self.values, pa.float64()),
                pa.array(self.span_ids, pa.string()),
                pa.array(self.trace_ids, pa.string()),
            ],
            fields=list(EXEMPLAR_TYPE),
        )
        return list_column(self.offsets, structs, _EXEMPLAR_LIST)


class _Common:
    """The columns all five tables share, for every stored point of a request."""

    __slots__ = (
        "attributes",
        "descriptions",
        "exemplars",
        "flags",
        "names",
        "rejected",
        "scope_rows",
        "starts",
        "times",
        "units",
    )

    def __init__(self) -> None:
        self.rejected = 0
        self.scope_rows: list[int] = []
        self.names: list[str] = []
        self.descriptions: list[str] = []
        self.units: list[str] = []
        self.starts: list[int] = []
        self.times: list[int] = []
        self.flags: list[int] = []
        self.attributes = StringMapColumn()
        self.exemplars = _Exemplars()

    def add(
        self,
        scope_id: int,
        metric,  # noqa: ANN001
        points: Sequence,
        attrs: AttributeRenderer,
        tally: Tally,
        with_exemplars: bool,
    ) -> Sequence:
        """Append the shared columns of ``points``; return those stored (not rejected)."""
        starts = [p.start_time_unix_nano for p in points]
        times = [p.time_unix_nano for p in points]
        if not times:
            return times
        if max(starts) > MAX_TIMESTAMP_NS or max(times) > MAX_TIMESTAMP_NS:
            points = [
                p
                for p, s, t in zip(points, starts, times, strict=True)
                if s <= MAX_TIMESTAMP_NS and t <= MAX_TIMESTAMP_NS
            ]
            self.rejected += len(times) - len(points)
            if not points:
                return points
            starts = [p.start_time_unix_nano for p in points]
            times = [p.time_unix_nano for p in points]
        n = len(points)
        self.starts += starts
        self.times += times
        self.flags += [p.flags for p in points]
        self.scope_rows += [scope_id] * n
        self.names += [metric.name] * n
        self.descriptions += [metric.description] * n
        self.units += [metric.unit] * n
        amap = self.attributes
        keys = amap.keys
        values = amap.values
        for p in points:
            attrs.extend(p.attributes, keys, values, tally)
            amap.close_row()
        if with_exemplars:
            self.exemplars.add(points, attrs, tally)
        else:
            self.exemplars.skip(n)
        return points

    def to_arrow(self, scopes: ScopeColumns) -> dict[str, pa.Array]:
        columns = take_scopes(scopes.to_batch(), self.scope_rows)
        columns.update(
            MetricName=pa.array(self.names, pa.string()),
            MetricDescription=pa.array(self.descriptions, pa.string()),
            MetricUnit=pa.array(self.units, pa.string()),
            Attributes=self.attributes.to_arrow(),
            StartTimeUnix=pa.array(self.starts, TS),
            TimeUnix=pa.array(self.times, TS),
            Flags=pa.array(self.flags, pa.uint32()),
            Exemplars=self.exemplars.to_arrow(),
        )
        return columns


class _Kind:
    """The columns of one metric type that the others lack."""

    field: str  # the ``Metric.data`` oneof member holding this type
    table: Table
    schema: pa.Schema
    has_exemplars = True

    def add(self, data, points: Sequence) -> None:  # noqa: ANN001
        """Append the columns of ``points``, stored points of ``data`` (``metric.sum``, …)."""
        raise NotImplementedError

    def to_arrow(self) -> dict[str, pa.Array]:
        raise NotImplementedError


class _Gauge(_Kind):
    field = "gauge"
    table = Table.METRICS_GAUGE
    schema = METRICS_GAUGE

    def __init__(self) -> None:
        self.values: list[float] = []

    def add(self, data, points: Sequence) -> None:  # noqa: ANN001
        self.values += [p.as_double or float(p.as_int) or p.as_double for p in points]

    def to_arrow(self) -> dict[str, pa.Array]:
        return {"Value": pa.array(self.values, pa.float64())}


class _Temporal(_Kind):
    """A type whose metric carries an aggregation temporality, repeated on each of its points."""

    def __init__(self) -> None:
        self.temporalities: list[int] = []

    def add(self, data, points: Sequence) -> None:  # noqa: ANN001
        self.temporalities += [data.aggregation_temporality] * len(points)

    def to_arrow(self) -> dict[str, pa.Array]:
        return {"AggregationTemporality": pa.array(self.temporalities, pa.int32())}


class _Sum(_Temporal):
    field = "sum"
    table = Table.METRICS_SUM
    schema = METRICS_SUM

    def __init__(self) -> None:
        super().__init__()
        self.values: list[float] = []
        self.monotonic: list[bool] = []

    def add(self, data, points: Sequence) -> None:  # noqa: ANN001
        super().add(data, points)
        self.values += [p.as_double or float(p.as_int) or p.as_double for p in points]
        self.monotonic += [data.is_monotonic] * len(points)

    def to_arrow(self) -> dict[str, pa.Array]:
        return {
            **super().to_arrow(),
            "Value": pa.array(self.values, pa.float64()),
            "IsMonotonic": pa.array(self.monotonic, pa.bool_()),
        }


class _AnyHistogram(_Temporal):
    """What explicit and exponential histograms share: count, optional sum, min and max."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: list[int] = []
        self.sums: list[float | None] = []
        self.mins: list[float | None] = []
        self.maxes: list[float | None] = []

    def add(self, data, points: Sequence) -> None:  # noqa: ANN001
        super().add(data, points)
        self.counts += [p.count for p in points]
        # Optional fields: absent means unknown, which a stored 0.0 would misstate.
        self.sums += [p.sum if p.HasField("sum") else None for p in points]
        self.mins += [p.min if p.HasField("min") else None for p in points]
        self.maxes += [p.max if p.HasField("max") else None for p in points]

    def to_arrow(self) -> dict[str, pa.Array]:
        return {
            **super().to_arrow(),
            "Count": pa.array(self.counts, pa.uint64()),
            "Sum": pa.array(self.sums, pa.float64()),
            "Min": pa.array(self.mins, pa.float64()),
            "Max": pa.array(self.maxes, pa.float64()),
        }


class _Histogram(_AnyHistogram):
    field = "histogram"
    table = Table.METRICS_HISTOGRAM
    schema = METRICS_HISTOGRAM

    def __init__(self) -> None:
        super().__init__()
        # The repeated fields themselves: Arrow converts them faster than Python copies them.
        self.bucket_counts: list[Sequence[int]] = []
        self.bounds: list[Sequence[float]] = []

    def add(self, data, points: Sequence) -> None:  # noqa: ANN001
        super().add(data, points)
        self.bucket_counts += [p.bucket_counts for p in points]
        self.bounds += [p.explicit_bounds for p in points]

    def to_arrow(self) -> dict[str, pa.Array]:
        return {
            **super().to_arrow(),
            "BucketCounts": pa.array(self.bucket_counts, _U64_LIST),
            "ExplicitBounds": pa.array(self.bounds, _F64_LIST),
        }


class _ExponentialHistogram(_AnyHistogram):
    field = "exponential_histogram"
    table = Table.METRICS_EXPONENTIAL_HISTOGRAM
    schema = METRICS_EXPONENTIAL_HISTOGRAM

    def __init__(self) -> None:
        super().__init__()
        self.scales: list[int] = []
        self.zero_counts: list[int] = []
        self.zero_thresholds: list[float] = []
        self.positive_offsets: list[int] = []
        self.positive_counts: list[Sequence[int]] = []
        self.negative_offsets: list[int] = []
        self.negative_counts: list[Sequence[int]] = []

    def add(self, data, points: Sequence) -> None:  # noqa: ANN001
        super().add(data, points)
        self.scales += [p.scale for p in points]
        self.zero_counts += [p.zero_count for p in points]
        self.zero_thresholds += [p.zero_threshold for p in points]
        positives = [p.positive for p in points]
        self.positive_offsets += [b.offset for b in positives]
        self.positive_counts += [b.bucket_counts for b in positives]
        negatives = [p.negative for p in points]
        self.negative_offsets += [b.offset for b in negatives]
        self.negative_counts += [b.bucket_counts for b in negatives]

    def to_arrow(self) -> dict[str, pa.Array]:
        return {
            **super().to_arrow(),
            "Scale": pa.array(self.scales, pa.int32()),
            "ZeroCount": pa.array(self.zero_counts, pa.uint64()),
            "ZeroThreshold": pa.array(self.zero_thresholds, pa.float64()),
            "PositiveOffset": pa.array(self.positive_offsets, pa.int32()),
            "PositiveBucketCounts": pa.array(self.positive_counts, _U64_LIST),
            "NegativeOffset": pa.array(self.negative_offsets, pa.int32()),
            "NegativeBucketCounts": pa.array(self.negative_counts, _U64_LIST),
        }


class _Summary(_Kind):
    field = "summary"
    table = Table.METRICS_SUMMARY
    schema = METRICS_SUMMARY
    has_exemplars = False

    def __init__(self) -> None:
        self.counts: list[int] = []
        self.sums: list[float] = []
        self.quantile_offsets = [0]
        self.quantiles: list[float] = []
        self.quantile_values: list[float] = []

    def add(self, data, points: Sequence) -> None:  # noqa: ANN001
        self.counts += [p.count for p in points]
        self.sums += [p.sum for p in points]
        offsets = self.quantile_offsets
        quantiles = self.quantiles
        for p in points:
            for qv in p.quantile_values:
                quantiles.append(qv.quantile)
                self.quantile_values.append(qv.value)
            offsets.append(len(quantiles))

    def to_arrow(self) -> dict[str, pa.Array]:
        structs = pa.StructArray.from_arrays(
            [pa.array(self.quantiles, pa.float64()), pa.array(self.quantile_values, pa.float64())],
            fields=list(QUANTILE_TYPE),
        )
        return {
            "Count": pa.array(self.counts, pa.uint64()),
            "Sum": pa.array(self.sums, pa.float64()),
            "ValueAtQuantiles": list_column(
                self.quantile_offsets, structs, METRICS_SUMMARY.field("ValueAtQuantiles").type
            ),
        }


# In the order their batches are emitted.
_KINDS: tuple[type[_Kind], ...] = (_Gauge, _Sum, _Histogram, _ExponentialHistogram, _Summary)


def decode_metrics(
    request: ExportMetricsServiceRequest, attrs: AttributeRenderer
) -> DecodedRequest:
    """Walk a parsed request into columns; points with out-of-range times are counted, not stored."""
    tally = Tally()
    out = DecodedRequest(Signal.METRIC_POINTS)
    scopes = ScopeColumns()
    by_field: dict[str, list] = {kind.field: [] for kind in _KINDS}

    for resource_metrics in request.resource_metrics:
        scopes.set_resource(resource_metrics, attrs, tally)
        for scope_metrics in resource_metrics.scope_metrics:
            metrics = scope_metrics.metrics
            if not metrics:
                continue
            scope_id = scopes.add_scope(scope_metrics, attrs, tally)
            for metric in metrics:
                # A metric without data (or of a type unknown to us) has no points: nothing to
                # store, nothing to reject.
                pending = by_field.get(metric.WhichOneof("data"))
                if pending is not None:
                    pending.append((scope_id, metric))

    common = _Common()
    filled: list[tuple[_Kind, int, int]] = []
    for kind_type in _KINDS:
        field = kind_type.field
        kind = kind_type()
        start = len(common.times)
        for scope_id, metric in by_field[field]:
            data = getattr(metric, field)
            points = common.add(
                scope_id, metric, data.data_points, attrs, tally, kind.has_exemplars
            )
            if points:
                kind.add(data, points)
        if len(common.times) > start:
            filled.append((kind, start, len(common.times) - start))

    out.accepted = len(common.times)
    out.rejected = common.rejected
    out.dropped_attributes = tally.dropped_attributes
    out.truncated_values = tally.truncated_values
    if out.rejected:
        out.message = f"{out.rejected} data point(s) rejected: timestamp out of range"
    if not filled:
        return out

    shared = common.to_arrow(scopes)
    for kind, start, length in filled:
        columns = {name: array.slice(start, length) for name, array in shared.items()}
        columns.update(kind.to_arrow())
        schema = kind.schema
        batch = pa.RecordBatch.from_arrays([columns[name] for name in schema.names], schema=schema)
        out.batches.append((kind.table, batch))
    return out
