"""Logs and metrics requests decoded into the Collector-vocabulary batches, field by field."""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.logs.v1 import logs_pb2 as L
from opentelemetry.proto.metrics.v1 import metrics_pb2 as M
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from opstrata.otlp.anyvalue import AttributeRenderer
from opstrata.otlp.decode_logs import decode_logs
from opstrata.otlp.decode_metrics import decode_metrics
from opstrata.otlp.decoded import MAX_TIMESTAMP_NS
from opstrata.otlp.limits import DecodeLimits
from opstrata.schema import (
    LOGS,
    METRICS_EXPONENTIAL_HISTOGRAM,
    METRICS_GAUGE,
    METRICS_HISTOGRAM,
    METRICS_SUM,
    METRICS_SUMMARY,
    TABLES,
    TS,
    Signal,
    Table,
)

T0 = 1_760_000_000_000_000_000
TRACE_ID = bytes(range(1, 17))
SPAN_ID = bytes(range(0xA1, 0xA9))
DELTA = M.AGGREGATION_TEMPORALITY_DELTA
CUMULATIVE = M.AGGREGATION_TEMPORALITY_CUMULATIVE


def value(v: object) -> AnyValue:
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, float):
        return AnyValue(double_value=v)
    if isinstance(v, bytes):
        return AnyValue(bytes_value=v)
    if isinstance(v, list):
        return AnyValue(array_value=ArrayValue(values=[value(x) for x in v]))
    if isinstance(v, dict):
        return AnyValue(kvlist_value=KeyValueList(values=kvs(**v)))
    return AnyValue(string_value=v)


def kvs(**pairs: object) -> list[KeyValue]:
    return [KeyValue(key=k.replace("_", "."), value=value(v)) for k, v in pairs.items()]


def renderer(**limits: int) -> AttributeRenderer:
    return AttributeRenderer(DecodeLimits(**limits))


def _plain_type(t: pa.DataType) -> pa.DataType:
    """The same type with timestamps as int64, so values come back as exact nanoseconds."""
    if t == TS:
        return pa.int64()
    if pa.types.is_list(t):
        return pa.list_(_plain_type(t.value_type))
    if pa.types.is_struct(t):
        return pa.struct([(f.name, _plain_type(f.type)) for f in t])
    return t


def column(batch: pa.RecordBatch, name: str) -> list:
    array = batch.column(name)
    return array.cast(_plain_type(array.type)).to_pylist()


def only_batch(out, table: Table) -> pa.RecordBatch:
    assert [t for t, _ in out.batches] == [table]
    batch = out.batches[0][1]
    assert batch.schema.equals(TABLES[table])
    return batch


# --- logs ----------------------------------------------------------------------------------


def logs_request(*records: L.LogRecord, **resource: object) -> ExportLogsServiceRequest:
    resource = resource or {"service_name": "checkout", "host_name": "node-1"}
    return ExportLogsServiceRequest(
        resource_logs=[
            L.ResourceLogs(
                resource=Resource(attributes=kvs(**resource)),
                schema_url="https://opentelemetry.io/schemas/1.26.0",
                scope_logs=[
                    L.ScopeLogs(
                        scope=InstrumentationScope(
                            name="app.logger", version="2.1", attributes=kvs(lib="std")
                        ),
                        schema_url="https://opentelemetry.io/schemas/1.25.0",
                        log_records=list(records),
                    )
                ],
            )
        ]
    )


def test_log_record_every_column() -> None:
    record = L.LogRecord(
        time_unix_nano=T0,
        observed_time_unix_nano=T0 + 7,
        severity_number=L.SEVERITY_NUMBER_WARN,
        severity_text="WARN",
        body=value("disk almost full"),
        attributes=kvs(disk="/dev/sda1", used_pct=93.5, retry=3),
        flags=1,
        trace_id=TRACE_ID,
        span_id=SPAN_ID,
        event_name="disk.pressure",
    )
    out = decode_logs(logs_request(record), renderer())

    assert out.signal is Signal.LOG_RECORDS
    assert (out.accepted, out.rejected, out.message) == (1, 0, "")
    batch = only_batch(out, Table.LOGS)
    assert batch.schema.equals(LOGS)
    assert column(batch, "Timestamp") == [T0]
    assert column(batch, "ObservedTimestamp") == [T0 + 7]
    assert column(batch, "TraceId") == [TRACE_ID.hex()]
    assert column(batch, "SpanId") == [SPAN_ID.hex()]
    assert column(batch, "TraceFlags") == [1]
    assert column(batch, "SeverityText") == ["WARN"]
    assert column(batch, "SeverityNumber") == [13]
    assert column(batch, "ServiceName") == ["checkout"]
    assert column(batch, "Body") == ["disk almost full"]
    assert column(batch, "ResourceSchemaUrl") == ["https://opentelemetry.io/schemas/1.26.0"]
    assert column(batch, "ResourceAttributes") == [
        [("service.name", "checkout"), ("host.name", "node-1")]
    ]
    assert column(batch, "ScopeSchemaUrl") == ["https://opentelemetry.io/schemas/1.25.0"]
    assert column(batch, "ScopeName") == ["app.logger"]
    assert column(batch, "ScopeVersion") == ["2.1"]
    assert column(batch, "ScopeAttributes") == [[("lib", "std")]]
    assert column(batch, "LogAttributes") == [
        [("disk", "/dev/sda1"), ("used.pct", "93.5"), ("retry", "3")]
    ]
    assert column(batch, "EventName") == ["disk.pressure"]


def test_log_without_time_is_stored_at_its_observed_time() -> None:
    out = decode_logs(
        logs_request(
            L.LogRecord(observed_time_unix_nano=T0 + 5),
            L.LogRecord(time_unix_nano=T0, observed_time_unix_nano=T0 + 9),
            L.LogRecord(time_unix_nano=T0 + 1),
        ),
        renderer(),
    )
    batch = only_batch(out, Table.LOGS)
    assert column(batch, "Timestamp") == [T0 + 5, T0, T0 + 1]
    assert column(batch, "ObservedTimestamp") == [T0 + 5, T0 + 9, 0]


def test_log_bodies_of_every_kind() -> None:
    bodies = [
        {"user": "ada", "status": 500, "tags": ["a", "b"], "ok": False},
        [1, "two", 3.5],
        42,
        2.5,
        True,
        b"\x00\x01",
        "",
    ]
    records = [L.LogRecord(time_unix_nano=T0, body=value(b)) for b in bodies]
    records.append(L.LogRecord(time_unix_nano=T0))  # no body at all
    batch = only_batch(decode_logs(logs_request(*records), renderer()), Table.LOGS)
    stored = column(batch, "Body")
    assert json.loads(stored[0]) == bodies[0]
    assert stored[0] == '{"user":"ada","status":500,"tags":["a","b"],"ok":false}'
    assert stored[1] == '[1,"two",3.5]'
    assert stored[2:] == ["42", "2.5", "true", "AAE=", "", ""]


def test_log_ids_empty_or_all_zero_are_stored_empty() -> None:
    records = [
        L.LogRecord(time_unix_nano=T0),
        L.LogRecord(time_unix_nano=T0, trace_id=bytes(16), span_id=bytes(8)),
        L.LogRecord(time_unix_nano=T0, trace_id=TRACE_ID),
    ]
    out = decode_logs(logs_request(*records), renderer())
    batch = only_batch(out, Table.LOGS)
    assert out.rejected == 0
    assert column(batch, "TraceId") == ["", "", TRACE_ID.hex()]
    assert column(batch, "SpanId") == ["", "", ""]


def test_log_severity_number_is_clamped_to_uint8() -> None:
    records = [L.LogRecord(time_unix_nano=T0, severity_number=n) for n in (0, 24, 300, -5)]
    batch = only_batch(decode_logs(logs_request(*records), renderer()), Table.LOGS)
    assert column(batch, "SeverityNumber") == [0, 24, 255, 0]


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ({"trace_id": b"\x01" * 5}, "trace_id must be empty or 16 bytes"),
        ({"trace_id": TRACE_ID, "span_id": b"\x01" * 3}, "span_id must be empty or 8 bytes"),
        ({"span_id": SPAN_ID * 2}, "span_id must be empty or 8 bytes"),
        ({"time_unix_nano": MAX_TIMESTAMP_NS + 1}, "timestamp out of range"),
        ({"observed_time_unix_nano": 2**64 - 1}, "timestamp out of range"),
    ],
)
def test_invalid_log_records_are_rejected_and_counted(bad: dict, reason: str) -> None:
    good = L.LogRecord(time_unix_nano=T0, body=value("kept"))
    out = decode_logs(
        logs_request(good, L.LogRecord(body=value("bad 1"), **bad), good, L.LogRecord(**bad)),
        renderer(),
    )
    assert (out.accepted, out.rejected) == (2, 2)
    assert out.message == f"2 log record(s) rejected: {reason}"
    batch = only_batch(out, Table.LOGS)
    assert column(batch, "Body") == ["kept", "kept"]
    assert (
        column(batch, "ResourceAttributes")
        == [[("service.name", "checkout"), ("host.name", "node-1")]] * 2
    )


def test_all_log_records_rejected_gives_no_batch() -> None:
    out = decode_logs(logs_request(L.LogRecord(trace_id=b"\x01")), renderer())
    assert (out.accepted, out.rejected, out.batches) == (0, 1, [])
    assert out.message == "1 log record(s) rejected: trace_id must be empty or 16 bytes"


def test_empty_logs_request() -> None:
    for request in (ExportLogsServiceRequest(), logs_request()):
        out = decode_logs(request, renderer())
        assert (out.accepted, out.rejected, out.batches, out.message) == (0, 0, [], "")


def test_logs_of_several_resources_and_scopes_keep_their_own() -> None:
    def scope(name: str, *bodies: str, **attributes: object) -> L.ScopeLogs:
        return L.ScopeLogs(
            scope=InstrumentationScope(name=name, attributes=kvs(**attributes)),
            log_records=[L.LogRecord(time_unix_nano=T0, body=value(b)) for b in bodies],
        )

    request = ExportLogsServiceRequest(
        resource_logs=[
            L.ResourceLogs(
                resource=Resource(attributes=kvs(service_name="a", zone="z1")),
                scope_logs=[scope("s1", "a1", "a2"), scope("empty"), scope("s2", "a3", k="v")],
            ),
            L.ResourceLogs(  # no service.name, no attributes at all
                scope_logs=[scope("s3", "b1")],
            ),
            L.ResourceLogs(
                resource=Resource(attributes=kvs(service_name="c")),
                schema_url="u",
                scope_logs=[scope("s4", "c1", "c2", x=1, y=2)],
            ),
        ]
    )
    batch = only_batch(decode_logs(request, renderer()), Table.LOGS)
    assert column(batch, "Body") == ["a1", "a2", "a3", "b1", "c1", "c2"]
    assert column(batch, "ServiceName") == ["a", "a", "a", "", "c", "c"]
    assert column(batch, "ScopeName") == ["s1", "s1", "s2", "s3", "s4", "s4"]
    assert column(batch, "ResourceSchemaUrl") == ["", "", "", "", "u", "u"]
    a = [("service.name", "a"), ("zone", "z1")]
    c = [("service.name", "c")]
    assert column(batch, "ResourceAttributes") == [a, a, a, [], c, c]
    xy = [("x", "1"), ("y", "2")]
    assert column(batch, "ScopeAttributes") == [[], [], [("k", "v")], [], xy, xy]


def test_log_attribute_limits_are_counted() -> None:
    record = L.LogRecord(
        time_unix_nano=T0, attributes=kvs(a="1", b="2", c="3"), body=value("x" * 50)
    )
    out = decode_logs(logs_request(record), renderer(max_attributes=2, max_value_chars=10))
    batch = only_batch(out, Table.LOGS)
    assert column(batch, "LogAttributes") == [[("a", "1"), ("b", "2")]]
    assert column(batch, "Body") == ["x" * 10]
    assert (out.dropped_attributes, out.truncated_values) == (1, 1)


# --- metrics -------------------------------------------------------------------------------


def metrics_request(*metrics: M.Metric, **scope: object) -> ExportMetricsServiceRequest:
    return ExportMetricsServiceRequest(
        resource_metrics=[
            M.ResourceMetrics(
                resource=Resource(attributes=kvs(service_name="cart", host_name="node-2")),
                schema_url="https://opentelemetry.io/schemas/1.26.0",
                scope_metrics=[
                    M.ScopeMetrics(
                        scope=InstrumentationScope(
                            name="meter",
                            version="0.9",
                            attributes=kvs(**scope),
                            dropped_attributes_count=4,
                        ),
                        schema_url="https://opentelemetry.io/schemas/1.24.0",
                        metrics=list(metrics),
                    )
                ],
            )
        ]
    )


def exemplar(**fields: object) -> M.Exemplar:
    return M.Exemplar(
        filtered_attributes=kvs(user="u1"),
        time_unix_nano=T0 - 3,
        span_id=SPAN_ID,
        trace_id=TRACE_ID,
        **fields,
    )


def stored_exemplar(value: float) -> dict:
    return {
        "FilteredAttributes": [("user", "u1")],
        "TimeUnix": T0 - 3,
        "Value": value,
        "SpanId": SPAN_ID.hex(),
        "TraceId": TRACE_ID.hex(),
    }


def assert_common(batch: pa.RecordBatch, name: str, rows: int) -> None:
    """The resource, scope and metric columns every metrics table has."""
    assert (
        column(batch, "ResourceAttributes")
        == [[("service.name", "cart"), ("host.name", "node-2")]] * rows
    )
    assert column(batch, "ResourceSchemaUrl") == ["https://opentelemetry.io/schemas/1.26.0"] * rows
    assert column(batch, "ScopeName") == ["meter"] * rows
    assert column(batch, "ScopeVersion") == ["0.9"] * rows
    assert column(batch, "ScopeAttributes") == [[("team", "payments")]] * rows
    assert column(batch, "ScopeDroppedAttrCount") == [4] * rows
    assert column(batch, "ScopeSchemaUrl") == ["https://opentelemetry.io/schemas/1.24.0"] * rows
    assert column(batch, "ServiceName") == ["cart"] * rows
    assert column(batch, "MetricName") == [name] * rows
    assert column(batch, "MetricDescription") == [f"{name} described"] * rows
    assert column(batch, "MetricUnit") == ["ms"] * rows


def metric(name: str, **data: object) -> M.Metric:
    return M.Metric(name=name, description=f"{name} described", unit="ms", **data)


def test_gauge_points() -> None:
    points = [
        M.NumberDataPoint(
            attributes=kvs(cpu=0),
            start_time_unix_nano=T0 - 10,
            time_unix_nano=T0,
            as_double=0.25,
            exemplars=[exemplar(as_double=0.5), exemplar(as_int=7)],
        ),
        M.NumberDataPoint(attributes=kvs(cpu=1), time_unix_nano=T0 + 1, as_int=-3, flags=1),
        M.NumberDataPoint(time_unix_nano=T0 + 2),  # no value: stored as 0.0, as the Collector does
        M.NumberDataPoint(time_unix_nano=T0 + 3, as_double=-0.0),
        M.NumberDataPoint(time_unix_nano=T0 + 4, as_int=0),
        M.NumberDataPoint(time_unix_nano=T0 + 5, as_double=math.inf),
    ]
    out = decode_metrics(
        metrics_request(metric("cpu.util", gauge=M.Gauge(data_points=points)), team="payments"),
        renderer(),
    )
    assert out.signal is Signal.METRIC_POINTS
    assert (out.accepted, out.rejected, out.message) == (6, 0, "")
    batch = only_batch(out, Table.METRICS_GAUGE)
    assert batch.schema.equals(METRICS_GAUGE)
    assert_common(batch, "cpu.util", 6)
    assert column(batch, "Attributes") == [[("cpu", "0")], [("cpu", "1")], [], [], [], []]
    assert column(batch, "StartTimeUnix") == [T0 - 10, 0, 0, 0, 0, 0]
    assert column(batch, "TimeUnix") == [T0 + i for i in range(6)]
    values = column(batch, "Value")
    assert values == [0.25, -3.0, 0.0, 0.0, 0.0, math.inf]
    assert math.copysign(1, values[3]) == -1
    assert column(batch, "Flags") == [0, 1, 0, 0, 0, 0]
    assert column(batch, "Exemplars") == [
        [stored_exemplar(0.5), stored_exemplar(7.0)],
        [],
        [],
        [],
        [],
        [],
    ]


def test_sum_points_keep_temporality_and_monotonicity() -> None:
    def counter(name: str, temporality: int, monotonic: bool, *values: int) -> M.Metric:
        return metric(
            name,
            sum=M.Sum(
                aggregation_temporality=temporality,
                is_monotonic=monotonic,
                data_points=[
                    M.NumberDataPoint(start_time_unix_nano=T0 - 60, time_unix_nano=T0, as_int=v)
                    for v in values
                ],
            ),
        )

    out = decode_metrics(
        metrics_request(
            counter("requests", CUMULATIVE, True, 10, 20),
            counter("queue.delta", DELTA, False, -4),
            counter("unspecified", M.AGGREGATION_TEMPORALITY_UNSPECIFIED, True, 1),
            team="payments",
        ),
        renderer(),
    )
    batch = only_batch(out, Table.METRICS_SUM)
    assert batch.schema.equals(METRICS_SUM)
    assert out.accepted == 4
    assert column(batch, "MetricName") == ["requests", "requests", "queue.delta", "unspecified"]
    assert column(batch, "Value") == [10.0, 20.0, -4.0, 1.0]
    assert column(batch, "AggregationTemporality") == [2, 2, 1, 0]
    assert column(batch, "IsMonotonic") == [True, True, False, True]
    assert column(batch, "StartTimeUnix") == [T0 - 60] * 4
    assert column(batch, "Exemplars") == [[]] * 4


def test_sum_large_int_value_is_stored_as_float() -> None:
    point = M.NumberDataPoint(time_unix_nano=T0, as_int=2**62 + 1)
    out = decode_metrics(
        metrics_request(metric("big", sum=M.Sum(data_points=[point])), team="payments"),
        renderer(),
    )
    assert column(only_batch(out, Table.METRICS_SUM), "Value") == [float(2**62)]


def test_histogram_points() -> None:
    full = M.HistogramDataPoint(
        attributes=kvs(route="/pay"),
        start_time_unix_nano=T0 - 60,
        time_unix_nano=T0,
        count=6,
        sum=123.5,
        bucket_counts=[1, 2, 3],
        explicit_bounds=[10.0, 100.0],
        min=0.5,
        max=99.0,
        flags=0,
        exemplars=[exemplar(as_double=42.0)],
    )
    bare = M.HistogramDataPoint(time_unix_nano=T0 + 1, count=0, flags=1)
    zeros = M.HistogramDataPoint(time_unix_nano=T0 + 2, count=1, sum=0.0, min=0.0, max=0.0)
    zeros.bucket_counts.append(2**64 - 1)
    out = decode_metrics(
        metrics_request(
            metric(
                "latency",
                histogram=M.Histogram(
                    aggregation_temporality=DELTA, data_points=[full, bare, zeros]
                ),
            ),
            team="payments",
        ),
        renderer(),
    )
    batch = only_batch(out, Table.METRICS_HISTOGRAM)
    assert batch.schema.equals(METRICS_HISTOGRAM)
    assert_common(batch, "latency", 3)
    assert column(batch, "Attributes") == [[("route", "/pay")], [], []]
    assert column(batch, "StartTimeUnix") == [T0 - 60, 0, 0]
    assert column(batch, "TimeUnix") == [T0, T0 + 1, T0 + 2]
    assert column(batch, "Count") == [6, 0, 1]
    # Absent optional fields are null; present ones, even 0.0, are values.
    assert column(batch, "Sum") == [123.5, None, 0.0]
    assert column(batch, "Min") == [0.5, None, 0.0]
    assert column(batch, "Max") == [99.0, None, 0.0]
    assert column(batch, "BucketCounts") == [[1, 2, 3], [], [2**64 - 1]]
    assert column(batch, "ExplicitBounds") == [[10.0, 100.0], [], []]
    assert column(batch, "Flags") == [0, 1, 0]
    assert column(batch, "AggregationTemporality") == [1, 1, 1]
    assert column(batch, "Exemplars") == [[stored_exemplar(42.0)], [], []]


def test_exponential_histogram_points() -> None:
    full = M.ExponentialHistogramDataPoint(
        attributes=kvs(route="/pay"),
        start_time_unix_nano=T0 - 60,
        time_unix_nano=T0,
        count=9,
        sum=20.25,
        scale=-2,
        zero_count=1,
        positive=M.ExponentialHistogramDataPoint.Buckets(offset=-3, bucket_counts=[1, 0, 4]),
        negative=M.ExponentialHistogramDataPoint.Buckets(offset=2, bucket_counts=[3]),
        flags=0,
        exemplars=[exemplar(as_int=5)],
        min=-7.5,
        max=12.0,
        zero_threshold=1e-9,
    )
    bare = M.ExponentialHistogramDataPoint(time_unix_nano=T0 + 1, scale=20)
    out = decode_metrics(
        metrics_request(
            metric(
                "latency",
                exponential_histogram=M.ExponentialHistogram(
                    aggregation_temporality=CUMULATIVE, data_points=[full, bare]
                ),
            ),
            team="payments",
        ),
        renderer(),
    )
    batch = only_batch(out, Table.METRICS_EXPONENTIAL_HISTOGRAM)
    assert batch.schema.equals(METRICS_EXPONENTIAL_HISTOGRAM)
    assert_common(batch, "latency", 2)
    assert column(batch, "Attributes") == [[("route", "/pay")], []]
    assert column(batch, "StartTimeUnix") == [T0 - 60, 0]
    assert column(batch, "TimeUnix") == [T0, T0 + 1]
    assert column(batch, "Count") == [9, 0]
    assert column(batch, "Sum") == [20.25, None]
    assert column(batch, "Scale") == [-2, 20]
    assert column(batch, "ZeroCount") == [1, 0]
    assert column(batch, "PositiveOffset") == [-3, 0]
    assert column(batch, "PositiveBucketCounts") == [[1, 0, 4], []]
    assert column(batch, "NegativeOffset") == [2, 0]
    assert column(batch, "NegativeBucketCounts") == [[3], []]
    assert column(batch, "Min") == [-7.5, None]
    assert column(batch, "Max") == [12.0, None]
    assert column(batch, "ZeroThreshold") == [1e-9, 0.0]
    assert column(batch, "Flags") == [0, 0]
    assert column(batch, "AggregationTemporality") == [2, 2]
    assert column(batch, "Exemplars") == [[stored_exemplar(5.0)], []]


def test_summary_points() -> None:
    quantiles = [
        M.SummaryDataPoint.ValueAtQuantile(quantile=0.5, value=12.0),
        M.SummaryDataPoint.ValueAtQuantile(quantile=0.99, value=80.5),
    ]
    points = [
        M.SummaryDataPoint(
            attributes=kvs(route="/pay"),
            start_time_unix_nano=T0 - 60,
            time_unix_nano=T0,
            count=100,
            sum=1500.0,
            quantile_values=quantiles,
            flags=1,
        ),
        M.SummaryDataPoint(time_unix_nano=T0 + 1),
    ]
    out = decode_metrics(
        metrics_request(metric("rpc", summary=M.Summary(data_points=points)), team="payments"),
        renderer(),
    )
    batch = only_batch(out, Table.METRICS_SUMMARY)
    assert batch.schema.equals(METRICS_SUMMARY)
    assert "Exemplars" not in batch.schema.names
    assert_common(batch, "rpc", 2)
    assert column(batch, "Attributes") == [[("route", "/pay")], []]
    assert column(batch, "StartTimeUnix") == [T0 - 60, 0]
    assert column(batch, "TimeUnix") == [T0, T0 + 1]
    assert column(batch, "Count") == [100, 0]
    assert column(batch, "Sum") == [1500.0, 0.0]
    assert column(batch, "ValueAtQuantiles") == [
        [{"Quantile": 0.5, "Value": 12.0}, {"Quantile": 0.99, "Value": 80.5}],
        [],
    ]
    assert column(batch, "Flags") == [1, 0]


def all_types(prefix: str, t: int) -> list[M.Metric]:
    """One metric of each type, with one point each (two for the gauge)."""
    ex = [exemplar(as_double=1.0)]
    return [
        metric(
            f"{prefix}.summary",
            summary=M.Summary(data_points=[M.SummaryDataPoint(time_unix_nano=t, count=1)]),
        ),
        metric(
            f"{prefix}.gauge",
            gauge=M.Gauge(
                data_points=[
                    M.NumberDataPoint(time_unix_nano=t, as_int=1, exemplars=ex),
                    M.NumberDataPoint(time_unix_nano=t, as_int=2),
                ]
            ),
        ),
        metric(
            f"{prefix}.histogram",
            histogram=M.Histogram(
                data_points=[M.HistogramDataPoint(time_unix_nano=t, count=3, exemplars=ex)]
            ),
        ),
        metric(
            f"{prefix}.sum",
            sum=M.Sum(
                is_monotonic=True,
                data_points=[M.NumberDataPoint(time_unix_nano=t, as_double=4.0, exemplars=ex)],
            ),
        ),
        metric(
            f"{prefix}.exp",
            exponential_histogram=M.ExponentialHistogram(
                data_points=[M.ExponentialHistogramDataPoint(time_unix_nano=t, count=5)]
            ),
        ),
    ]


def test_every_type_in_one_request_from_several_resources() -> None:
    def resource(service: str, *scopes: M.ScopeMetrics) -> M.ResourceMetrics:
        return M.ResourceMetrics(
            resource=Resource(attributes=kvs(service_name=service)), scope_metrics=list(scopes)
        )

    def scope(name: str, metrics: list[M.Metric]) -> M.ScopeMetrics:
        return M.ScopeMetrics(
            scope=InstrumentationScope(name=name, dropped_attributes_count=len(name)),
            metrics=metrics,
        )

    request = ExportMetricsServiceRequest(
        resource_metrics=[
            resource("a", scope("s1", all_types("a1", T0)), scope("s22", all_types("a2", T0 + 1))),
            resource("b", scope("s333", all_types("b1", T0 + 2))),
        ]
    )
    out = decode_metrics(request, renderer())
    assert (out.accepted, out.rejected) == (18, 0)
    tables = [t for t, _ in out.batches]
    assert tables == [
        Table.METRICS_GAUGE,
        Table.METRICS_SUM,
        Table.METRICS_HISTOGRAM,
        Table.METRICS_EXPONENTIAL_HISTOGRAM,
        Table.METRICS_SUMMARY,
    ]
    batches = dict(out.batches)
    for table, batch in batches.items():
        assert batch.schema.equals(TABLES[table])
    assert sum(b.num_rows for b in batches.values()) == out.accepted

    gauge = batches[Table.METRICS_GAUGE]
    assert column(gauge, "MetricName") == ["a1.gauge"] * 2 + ["a2.gauge"] * 2 + ["b1.gauge"] * 2
    assert column(gauge, "ServiceName") == ["a"] * 4 + ["b"] * 2
    assert column(gauge, "ScopeName") == ["s1", "s1", "s22", "s22", "s333", "s333"]
    assert column(gauge, "ScopeDroppedAttrCount") == [2, 2, 3, 3, 4, 4]
    assert (
        column(gauge, "ResourceAttributes")
        == [[("service.name", "a")]] * 4 + [[("service.name", "b")]] * 2
    )
    assert column(gauge, "TimeUnix") == [T0, T0, T0 + 1, T0 + 1, T0 + 2, T0 + 2]
    assert column(gauge, "Value") == [1.0, 2.0] * 3
    assert [len(e) for e in column(gauge, "Exemplars")] == [1, 0] * 3

    for table, kind, value_column, stored in [
        (Table.METRICS_SUM, "sum", "Value", 4.0),
        (Table.METRICS_HISTOGRAM, "histogram", "Count", 3),
        (Table.METRICS_EXPONENTIAL_HISTOGRAM, "exp", "Count", 5),
        (Table.METRICS_SUMMARY, "summary", "Count", 1),
    ]:
        batch = batches[table]
        assert column(batch, "MetricName") == [f"a1.{kind}", f"a2.{kind}", f"b1.{kind}"]
        assert column(batch, "ServiceName") == ["a", "a", "b"]
        assert column(batch, "ScopeName") == ["s1", "s22", "s333"]
        assert column(batch, "TimeUnix") == [T0, T0 + 1, T0 + 2]
        assert column(batch, value_column) == [stored] * 3
    assert [len(e) for e in column(batches[Table.METRICS_SUM], "Exemplars")] == [1, 1, 1]
    assert [len(e) for e in column(batches[Table.METRICS_HISTOGRAM], "Exemplars")] == [1, 1, 1]
    assert column(batches[Table.METRICS_SUM], "IsMonotonic") == [True] * 3


def test_points_with_out_of_range_times_are_rejected() -> None:
    ok = M.NumberDataPoint(time_unix_nano=T0, as_int=1)
    late = M.NumberDataPoint(time_unix_nano=MAX_TIMESTAMP_NS + 1, as_int=2)
    bad_start = M.NumberDataPoint(start_time_unix_nano=2**64 - 1, time_unix_nano=T0, as_int=3)
    edge = M.NumberDataPoint(time_unix_nano=MAX_TIMESTAMP_NS, as_int=4)
    hist_late = M.HistogramDataPoint(time_unix_nano=2**64 - 1, count=1)
    out = decode_metrics(
        metrics_request(
            metric("g", gauge=M.Gauge(data_points=[ok, late, bad_start, edge])),
            metric("h", histogram=M.Histogram(data_points=[hist_late])),
            # Each check alone in its metric, not only behind the other one.
            metric("only.late", gauge=M.Gauge(data_points=[late])),
            metric("only.start", gauge=M.Gauge(data_points=[bad_start])),
            metric("g2", gauge=M.Gauge(data_points=[ok])),
            team="payments",
        ),
        renderer(),
    )
    assert (out.accepted, out.rejected) == (3, 5)
    assert out.message == "5 data point(s) rejected: timestamp out of range"
    batch = only_batch(out, Table.METRICS_GAUGE)
    assert column(batch, "MetricName") == ["g", "g", "g2"]
    assert column(batch, "Value") == [1.0, 4.0, 1.0]
    assert column(batch, "TimeUnix") == [T0, MAX_TIMESTAMP_NS, T0]
    assert column(batch, "ServiceName") == ["cart"] * 3


def test_exemplar_with_out_of_range_time_is_clamped_not_rejected() -> None:
    point = M.NumberDataPoint(
        time_unix_nano=T0, as_int=1, exemplars=[M.Exemplar(time_unix_nano=2**64 - 1, as_int=9)]
    )
    out = decode_metrics(
        metrics_request(metric("g", gauge=M.Gauge(data_points=[point])), team="payments"),
        renderer(),
    )
    assert (out.accepted, out.rejected) == (1, 0)
    [[stored]] = column(only_batch(out, Table.METRICS_GAUGE), "Exemplars")
    assert stored == {
        "FilteredAttributes": [],
        "TimeUnix": MAX_TIMESTAMP_NS,
        "Value": 9.0,
        "SpanId": "",
        "TraceId": "",
    }


def test_metrics_without_points_count_nothing() -> None:
    request = metrics_request(
        M.Metric(name="no.data"),
        metric("no.points", gauge=M.Gauge()),
        metric("no.points.either", histogram=M.Histogram(aggregation_temporality=DELTA)),
        team="payments",
    )
    out = decode_metrics(request, renderer())
    assert (out.accepted, out.rejected, out.batches, out.message) == (0, 0, [], "")
    empty = decode_metrics(ExportMetricsServiceRequest(), renderer())
    assert (empty.accepted, empty.rejected, empty.batches) == (0, 0, [])


def test_empty_metric_between_others_changes_nothing() -> None:
    point = M.NumberDataPoint(time_unix_nano=T0, as_double=1.5)
    out = decode_metrics(
        metrics_request(
            M.Metric(name="no.data"),
            metric("g", gauge=M.Gauge(data_points=[point])),
            M.Metric(name="no.data.2"),
            team="payments",
        ),
        renderer(),
    )
    batch = only_batch(out, Table.METRICS_GAUGE)
    assert_common(batch, "g", 1)
    assert column(batch, "Value") == [1.5]


def test_point_attribute_limits_are_counted() -> None:
    point = M.NumberDataPoint(time_unix_nano=T0, as_int=1, attributes=kvs(a="1", b="2", c="3"))
    out = decode_metrics(
        metrics_request(metric("g", gauge=M.Gauge(data_points=[point])), team="payments"),
        renderer(max_attributes=2),
    )
    assert column(only_batch(out, Table.METRICS_GAUGE), "Attributes") == [[("a", "1"), ("b", "2")]]
    assert out.dropped_attributes == 1


def test_decoded_batches_are_reusable_after_the_request_is_gone() -> None:
    # Histogram bucket lists are converted from the request's repeated fields; the batch must
    # own its data once built.
    point = M.HistogramDataPoint(time_unix_nano=T0, bucket_counts=[1, 2], explicit_bounds=[5.0])
    request = metrics_request(
        metric("h", histogram=M.Histogram(data_points=[point])), team="payments"
    )
    out = decode_metrics(request, renderer())
    del request, point
    batch = only_batch(out, Table.METRICS_HISTOGRAM)
    assert column(batch, "BucketCounts") == [[1, 2]]
    assert column(batch, "ExplicitBounds") == [[5.0]]
    assert out.nbytes > 0
