"""The columnar vocabulary shared from the wire to the disk.

Column names follow the OpenTelemetry Collector's ClickHouse exporter tables (``otel_traces``,
``otel_logs``, ``otel_metrics_gauge`` / ``_sum`` / ``_histogram`` / ``_exponential_histogram`` /
``_summary``), so a user who knows those tables knows ours. ClickHouse ``Nested`` columns
(``Events``, ``Links``, ``Exemplars``, ``ValueAtQuantiles``) are lists of structs here, with the
same field names. A few columns the exporter drops are kept (``ScopeAttributes`` and
``TraceFlags`` on spans, ``EventName`` on logs) so nothing sent to us is flattened away.

Every decoded batch is a ``pyarrow.RecordBatch`` with exactly one of these schemas.
"""

from __future__ import annotations

from enum import StrEnum

import pyarrow as pa

__all__ = [
    "EVENT_TYPE",
    "EXEMPLAR_TYPE",
    "LINK_TYPE",
    "LOGS",
    "METRICS_EXPONENTIAL_HISTOGRAM",
    "METRICS_GAUGE",
    "METRICS_HISTOGRAM",
    "METRICS_SUM",
    "METRICS_SUMMARY",
    "QUANTILE_TYPE",
    "STRING_MAP",
    "TABLES",
    "TRACES",
    "TS",
    "Signal",
    "Table",
    "signal_of",
]


class Signal(StrEnum):
    """The three OTLP signals, named as their item counters are labelled."""

    SPANS = "spans"
    METRIC_POINTS = "metric_points"
    LOG_RECORDS = "log_records"


class Table(StrEnum):
    TRACES = "otel_traces"
    LOGS = "otel_logs"
    METRICS_GAUGE = "otel_metrics_gauge"
    METRICS_SUM = "otel_metrics_sum"
    METRICS_HISTOGRAM = "otel_metrics_histogram"
    METRICS_EXPONENTIAL_HISTOGRAM = "otel_metrics_exponential_histogram"
    METRICS_SUMMARY = "otel_metrics_summary"


# UTC by convention; no zone in the type because DuckDB keeps zoned timestamps in microseconds.
TS = pa.timestamp("ns")
STRING_MAP = pa.map_(pa.string(), pa.string())

EVENT_TYPE = pa.struct([("Timestamp", TS), ("Name", pa.string()), ("Attributes", STRING_MAP)])
LINK_TYPE = pa.struct(
    [
        ("TraceId", pa.string()),
        ("SpanId", pa.string()),
        ("TraceState", pa.string()),
        ("Attributes", STRING_MAP),
    ]
)
EXEMPLAR_TYPE = pa.struct(
    [
        ("FilteredAttributes", STRING_MAP),
        ("TimeUnix", TS),
        ("Value", pa.float64()),
        ("SpanId", pa.string()),
        ("TraceId", pa.string()),
    ]
)
QUANTILE_TYPE = pa.struct([("Quantile", pa.float64()), ("Value", pa.float64())])

TRACES = pa.schema(
    [
        ("Timestamp", TS),
        ("TraceId", pa.string()),
        ("SpanId", pa.string()),
        ("ParentSpanId", pa.string()),
        ("TraceState", pa.string()),
        ("SpanName", pa.string()),
        ("SpanKind", pa.string()),
        ("ServiceName", pa.string()),
        ("ResourceAttributes", STRING_MAP),
        ("ScopeName", pa.string()),
        ("ScopeVersion", pa.string()),
        ("SpanAttributes", STRING_MAP),
        ("Duration", pa.int64()),
        ("StatusCode", pa.string()),
        ("StatusMessage", pa.string()),
        ("Events", pa.list_(EVENT_TYPE)),
        ("Links", pa.list_(LINK_TYPE)),
        ("ScopeAttributes", STRING_MAP),
        ("TraceFlags", pa.uint32()),
    ]
)

LOGS = pa.schema(
    [
        ("Timestamp", TS),
        ("ObservedTimestamp", TS),
        ("TraceId", pa.string()),
        ("SpanId", pa.string()),
        ("TraceFlags", pa.uint32()),
        ("SeverityText", pa.string()),
        ("SeverityNumber", pa.uint8()),
        ("ServiceName", pa.string()),
        ("Body", pa.string()),
        ("ResourceSchemaUrl", pa.string()),
        ("ResourceAttributes", STRING_MAP),
        ("ScopeSchemaUrl", pa.string()),
        ("ScopeName", pa.string()),
        ("ScopeVersion", pa.string()),
        ("ScopeAttributes", STRING_MAP),
        ("LogAttributes", STRING_MAP),
        ("EventName", pa.string()),
    ]
)

_METRIC_COMMON = [
    ("ResourceAttributes", STRING_MAP),
    ("ResourceSchemaUrl", pa.string()),
    ("ScopeName", pa.string()),
    ("ScopeVersion", pa.string()),
    ("ScopeAttributes", STRING_MAP),
    ("ScopeDroppedAttrCount", pa.uint32()),
    ("ScopeSchemaUrl", pa.string()),
    ("ServiceName", pa.string()),
    ("MetricName", pa.string()),
    ("MetricDescription", pa.string()),
    ("MetricUnit", pa.string()),
    ("Attributes", STRING_MAP),
    ("StartTimeUnix", TS),
    ("TimeUnix", TS),
]
_EXEMPLARS = ("Exemplars", pa.list_(EXEMPLAR_TYPE))
_FLAGS = ("Flags", pa.uint32())
_TEMPORALITY = ("AggregationTemporality", pa.int32())

METRICS_GAUGE = pa.schema([*_METRIC_COMMON, ("Value", pa.float64()), _FLAGS, _EXEMPLARS])
METRICS_SUM = pa.schema(
    [
        *_METRIC_COMMON,
        ("Value", pa.float64()),
        _FLAGS,
        _EXEMPLARS,
        _TEMPORALITY,
        ("IsMonotonic", pa.bool_()),
    ]
)
METRICS_HISTOGRAM = pa.schema(
    [
        *_METRIC_COMMON,
        ("Count", pa.uint64()),
        ("Sum", pa.float64()),
        ("BucketCounts", pa.list_(pa.uint64())),
        ("ExplicitBounds", pa.list_(pa.float64())),
        _EXEMPLARS,
        _FLAGS,
        ("Min", pa.float64()),
        ("Max", pa.float64()),
        _TEMPORALITY,
    ]
)
METRICS_EXPONENTIAL_HISTOGRAM = pa.schema(
    [
        *_METRIC_COMMON,
        ("Count", pa.uint64()),
        ("Sum", pa.float64()),
        ("Scale", pa.int32()),
        ("ZeroCount", pa.uint64()),
        ("PositiveOffset", pa.int32()),
        ("PositiveBucketCounts", pa.list_(pa.uint64())),
        ("NegativeOffset", pa.int32()),
        ("NegativeBucketCounts", pa.list_(pa.uint64())),
        _EXEMPLARS,
        _FLAGS,
        ("Min", pa.float64()),
        ("Max", pa.float64()),
        _TEMPORALITY,
        ("ZeroThreshold", pa.float64()),
    ]
)
METRICS_SUMMARY = pa.schema(
    [
        *_METRIC_COMMON,
        ("Count", pa.uint64()),
        ("Sum", pa.float64()),
        ("ValueAtQuantiles", pa.list_(QUANTILE_TYPE)),
        _FLAGS,
    ]
)

TABLES: dict[Table, pa.Schema] = {
    Table.TRACES: TRACES,
    Table.LOGS: LOGS,
    Table.METRICS_GAUGE: METRICS_GAUGE,
    Table.METRICS_SUM: METRICS_SUM,
    Table.METRICS_HISTOGRAM: METRICS_HISTOGRAM,
    Table.METRICS_EXPONENTIAL_HISTOGRAM: METRICS_EXPONENTIAL_HISTOGRAM,
    Table.METRICS_SUMMARY: METRICS_SUMMARY,
}


def signal_of(table: Table) -> Signal:
    """The signal whose items a table holds."""
    if table is Table.TRACES:
        return Signal.SPANS
    if table is Table.LOGS:
        return Signal.LOG_RECORDS
    return Signal.METRIC_POINTS
