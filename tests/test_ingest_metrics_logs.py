"""Metrics of every type and log records from the real Python SDK, stored field by field."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest
from opentelemetry import trace
from opentelemetry._logs import SeverityNumber
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.sdk._logs.export import LogRecordExportResult
from opentelemetry.sdk.metrics import Counter, Histogram, UpDownCounter
from opentelemetry.sdk.metrics.export import AggregationTemporality, MetricExportResult
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View
from opentelemetry.sdk.trace import TracerProvider

from tests.otelsdk import log_exporter, make_logs, make_metrics, metric_exporter
from tests.serverproc import ServerProcess
from tests.storeread import read_table


def _record(provider, prefix: str) -> None:
    meter = provider.get_meter("tests.meter", "0.1")
    tracer = TracerProvider().get_tracer("exemplars")
    counter = meter.create_counter(f"{prefix}.requests", unit="1", description="requests")
    updown = meter.create_up_down_counter(f"{prefix}.queue")
    latency = meter.create_histogram(f"{prefix}.latency", unit="ms")
    expo = meter.create_histogram(f"{prefix}.expo", unit="ms")
    gauge = meter.create_gauge(f"{prefix}.temperature", unit="Cel")
    with tracer.start_as_current_span("exemplar-span"):
        counter.add(5, {"route": "/a"})
        latency.record(42.0, {"route": "/a"})
    counter.add(2, {"route": "/b"})
    updown.add(7)
    updown.add(-3)
    for value in (1.0, 3.0, 120.0):
        latency.record(value, {"route": "/a"})
        expo.record(value)
    gauge.set(21.5, {"room": "lab"})


@pytest.mark.parametrize("transport", ["grpc", "http"])
@pytest.mark.parametrize(
    "temporality", [AggregationTemporality.CUMULATIVE, AggregationTemporality.DELTA]
)
def test_every_metric_type_is_stored(
    tmp_path: Path, transport: str, temporality: AggregationTemporality
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    reader_views = [
        View(instrument_name=f"{prefix}.expo", aggregation=ExponentialBucketHistogramAggregation())
    ]
    preferred = {Counter: temporality, UpDownCounter: temporality, Histogram: temporality}
    data = make_metrics(
        lambda p: _record(p, prefix), preferred_temporality=preferred, views=reader_views
    )
    server = ServerProcess(tmp_path / "data").start()
    exporter = metric_exporter(server, transport)
    assert exporter.export(data) is MetricExportResult.SUCCESS
    exporter.shutdown()
    assert server.stop() == 0

    def rows(table: str, name: str) -> list[dict]:
        return read_table(tmp_path / "data", table, "WHERE MetricName = ?", [f"{prefix}.{name}"])

    sums = {r["Attributes"]["route"]: r for r in rows("otel_metrics_sum", "requests")}
    assert sums["/a"]["Value"] == 5 and sums["/b"]["Value"] == 2
    assert sums["/a"]["IsMonotonic"] is True
    assert sums["/a"]["AggregationTemporality"] == int(temporality)
    assert sums["/a"]["MetricUnit"] == "1" and sums["/a"]["MetricDescription"] == "requests"
    assert sums["/a"]["ServiceName"] == "metrics-svc"
    assert sums["/a"]["ScopeName"] == "tests.meter" and sums["/a"]["ScopeVersion"] == "0.1"
    [exemplar] = sums["/a"]["Exemplars"]
    assert (
        exemplar["Value"] == 5 and len(exemplar["TraceId"]) == 32 and len(exemplar["SpanId"]) == 16
    )

    [queue] = rows("otel_metrics_sum", "queue")
    assert queue["Value"] == 4 and queue["IsMonotonic"] is False

    [hist] = rows("otel_metrics_histogram", "latency")
    assert hist["Count"] == 4 and hist["Sum"] == 166.0
    assert hist["Min"] == 1.0 and hist["Max"] == 120.0
    assert len(hist["BucketCounts"]) == len(hist["ExplicitBounds"]) + 1
    assert sum(hist["BucketCounts"]) == 4
    assert hist["AggregationTemporality"] == int(temporality)
    assert hist["Exemplars"], "the value recorded inside a span has an exemplar"

    [expo] = rows("otel_metrics_exponential_histogram", "expo")
    assert expo["Count"] == 3 and expo["Sum"] == 124.0
    assert sum(expo["PositiveBucketCounts"]) + expo["ZeroCount"] == 3
    assert expo["Scale"] <= 20 and expo["Min"] == 1.0 and expo["Max"] == 120.0

    [gauge] = rows("otel_metrics_gauge", "temperature")
    assert gauge["Value"] == 21.5 and gauge["Attributes"] == {"room": "lab"}
    assert gauge["TimeUnix"] > 0


def test_summary_points_are_stored(tmp_path: Path) -> None:
    request = ExportMetricsServiceRequest()
    metric = request.resource_metrics.add().scope_metrics.add().metrics.add()
    metric.name = "rpc.duration.summary"
    point = metric.summary.data_points.add()
    point.time_unix_nano = 1_700_000_000_000_000_000
    point.count, point.sum = 10, 55.5
    for q, v in ((0.5, 4.0), (0.99, 9.5)):
        quantile = point.quantile_values.add()
        quantile.quantile, quantile.value = q, v
    server = ServerProcess(tmp_path / "data").start()
    reply = httpx.post(
        server.http_base + "/v1/metrics",
        content=request.SerializeToString(),
        headers={"content-type": "application/x-protobuf"},
    )
    assert reply.status_code == 200
    assert server.stop() == 0
    [row] = read_table(tmp_path / "data", "otel_metrics_summary")
    assert row["Count"] == 10 and row["Sum"] == 55.5
    assert row["ValueAtQuantiles"] == [
        {"Quantile": 0.5, "Value": 4.0},
        {"Quantile": 0.99, "Value": 9.5},
    ]
    assert row["TimeUnix"] == 1_700_000_000_000_000_000


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_log_records_are_stored(tmp_path: Path, transport: str) -> None:
    tracer = TracerProvider().get_tracer("logs")
    ids: dict[str, str] = {}

    def emit(provider) -> None:
        logger = provider.get_logger("tests.logger", "2.0")
        with tracer.start_as_current_span("handler") as span:
            ids["trace"] = format(span.get_span_context().trace_id, "032x")
            ids["span"] = format(span.get_span_context().span_id, "016x")
            logger.emit(
                body="payment failed",
                severity_number=SeverityNumber.ERROR,
                severity_text="ERROR",
                attributes={"order.id": 42},
            )
        logger.emit(
            body={"event": "login", "user": {"id": 7, "roles": ["admin"]}},
            severity_number=SeverityNumber.INFO,
            event_name="user.login",
            timestamp=1_700_000_000_123_456_789,
        )

    records = make_logs(emit)
    server = ServerProcess(tmp_path / "data").start()
    exporter = log_exporter(server, transport)
    assert exporter.export(records) is LogRecordExportResult.SUCCESS
    exporter.shutdown()
    assert server.stop() == 0
    rows = read_table(tmp_path / "data", "otel_logs", "ORDER BY Timestamp")
    by_body = {r["Body"]: r for r in rows}
    error = by_body["payment failed"]
    assert error["SeverityNumber"] == 17 and error["SeverityText"] == "ERROR"
    assert error["TraceId"] == ids["trace"] and error["SpanId"] == ids["span"]
    assert error["LogAttributes"] == {"order.id": "42"}
    assert error["ServiceName"] == "logs-svc"
    assert error["ScopeName"] == "tests.logger" and error["ScopeVersion"] == "2.0"
    login = by_body['{"event":"login","user":{"id":7,"roles":["admin"]}}']
    assert login["EventName"] == "user.login"
    assert login["Timestamp"] == 1_700_000_000_123_456_789
    assert login["TraceId"] == ""
    assert trace.get_current_span() is trace.INVALID_SPAN
