"""``ExportMetricsServiceRequest`` → one record batch per metric type that has points.

Every data point is one row of ``otel_metrics_gauge`` / ``_sum`` / ``_histogram`` /
``_exponential_histogram`` / ``_summary``.

Building an Arrow array costs a fixed ~5-10 µs here whatever its length, and a request of a
hundred points often spans three or four tables, so that fixed cost rivals the walk itself. Hence
the shape of this module: metrics are grouped by type first and their points appended type by
type, so the columns all tables share (:class:`_Common`) are built once per request and each
table takes a zero-copy slice of them; a type's own columns (:mod:`opstrata.otlp.metric_kinds`)
are the only per-table arrays. Columns are filled a metric at a time with comprehensions over its
points, which keeps the per-point Python work small.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
from google.protobuf.message import DecodeError as ProtobufDecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric

from opstrata.otlp import _wire
from opstrata.otlp.anyvalue import AttributeRenderer
from opstrata.otlp.columns import StringMapColumn, hex_or_empty, list_column
from opstrata.otlp.decode_traces import complex_renderer
from opstrata.otlp.decoded import MAX_TIMESTAMP_NS, DecodedRequest, InvalidRequest
from opstrata.otlp.exported_tables import ExportedTable, layout_of
from opstrata.otlp.limits import Tally
from opstrata.otlp.metric_kinds import KINDS, MetricKind
from opstrata.otlp.scopes import ScopeColumns
from opstrata.schema import EXEMPLAR_TYPE, METRICS_GAUGE, TS, Signal

__all__ = ["decode_metric_bytes", "decode_metrics"]

_EXEMPLAR_LIST = pa.list_(EXEMPLAR_TYPE)
_NO_EXEMPLARS = pa.array([], EXEMPLAR_TYPE)
_SCOPE_COLUMNS = METRICS_GAUGE.names


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
                # As for gauge and sum values (see ``metric_kinds``): as_double, else as_int.
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
        "scope_runs",
        "starts",
        "times",
        "units",
    )

    def __init__(self) -> None:
        self.rejected = 0
        self.scope_runs: list[tuple[int, int]] = []
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
        metric: Metric,
        points: Sequence,
        attrs: AttributeRenderer,
        tally: Tally,
        with_exemplars: bool,
    ) -> Sequence:
        """Append the shared columns of ``points``; return those stored (not rejected)."""
        # Materialised once, so that each pass below and in ``MetricKind.add`` reuses the wrappers.
        points = list(points)
        starts = [p.start_time_unix_nano for p in points]
        times = [p.time_unix_nano for p in points]
        if not times:
            return times
        if max(starts) > MAX_TIMESTAMP_NS or max(times) > MAX_TIMESTAMP_NS:
            keep = [
                i
                for i, (s, t) in enumerate(zip(starts, times, strict=True))
                if s <= MAX_TIMESTAMP_NS and t <= MAX_TIMESTAMP_NS
            ]
            self.rejected += len(points) - len(keep)
            if not keep:
                return keep
            points, starts, times = (
                [column[i] for i in keep] for column in (points, starts, times)
            )
        n = len(points)
        self.starts += starts
        self.times += times
        self.flags += [p.flags for p in points]
        runs = self.scope_runs
        if runs and runs[-1][0] == scope_id:
            runs[-1] = (scope_id, runs[-1][1] + n)
        else:
            runs.append((scope_id, n))
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
        columns = scopes.to_arrow(self.scope_runs, _SCOPE_COLUMNS)
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


def decode_metrics(
    request: ExportMetricsServiceRequest, attrs: AttributeRenderer
) -> DecodedRequest:
    """Walk a parsed request into columns; points with bad times are counted, not stored."""
    tally = Tally()
    out = DecodedRequest(Signal.METRIC_POINTS)
    scopes = ScopeColumns()
    by_field: dict[str, list[tuple[int, Metric]]] = {kind.field: [] for kind in KINDS}

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
    filled: list[tuple[MetricKind, int, int]] = []
    for kind_type in KINDS:
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

    out.rejected = common.rejected
    out.settle(len(common.times), tally, "data point(s)", "timestamp out of range")
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


# --- The same from the serialized request, decoded in C (``otlp/_wire_metrics.c``) -------------

_import_batch = pa.RecordBatch._import_from_c
# ``_wire`` numbers the tables in this order.
_TABLES = [(kind.table, kind.schema) for kind in KINDS]
_LAYOUTS = [layout_of(kind.schema) for kind in KINDS]


def decode_metric_bytes(
    data: bytes, attrs: AttributeRenderer, exported: bool = False
) -> DecodedRequest:
    """Decode a serialized ``ExportMetricsServiceRequest`` without building protobuf objects.

    The result equals ``decode_metrics(ExportMetricsServiceRequest.FromString(data), attrs)``;
    bytes that upb would refuse raise :class:`InvalidRequest`. ``attrs`` supplies the limits.
    With ``exported`` the batches are :class:`ExportedTable` objects, not imported into pyarrow
    (for the DuckDB store, which imports a commit's worth at once).
    """
    limits = attrs.limits
    if not isinstance(data, bytes):
        data = bytes(data)  # an immutable copy: the C code keeps pointers into it
    try:
        rejected, dropped, truncated, tables = _wire.decode_metrics(
            data, limits.max_attributes, limits.max_value_chars, complex_renderer(limits)
        )
    except (_wire.DecodeError, ProtobufDecodeError) as exc:
        raise InvalidRequest(f"cannot parse protobuf ExportMetricsServiceRequest: {exc}") from None
    out = DecodedRequest(
        Signal.METRIC_POINTS,
        rejected=rejected,
        dropped_attributes=dropped,
        truncated_values=truncated,
        buffer_bytes=0,
    )
    if rejected:
        out.message = f"{rejected} data point(s) rejected: timestamp out of range"
    event_time = 0  # as consumers.latest_event_time: the greatest of the tables' medians
    starts = out.batches.resource_starts = {}  # type: ignore[attr-defined]
    for index, _capsule, address, nbytes, median, resource_starts in tables:
        table, schema = _TABLES[index]
        starts[table] = np.frombuffer(resource_starts, np.int32)
        if exported:
            batch = ExportedTable(_capsule, address, schema, _LAYOUTS[index])
        else:
            # Moves the arrays out; ``_capsule`` (alive until the loop moves on) frees the rest.
            batch = _import_batch(address, schema)
        out.accepted += batch.num_rows
        out.buffer_bytes += nbytes
        out.batches.append((table, batch))
        event_time = -1 if median < 0 or event_time < 0 else max(event_time, median)
    out.batches.event_time = event_time  # type: ignore[attr-defined]
    return out
