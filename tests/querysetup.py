"""The telemetry the query tests read back: sent once, with the real OpenTelemetry SDK, to one
server shared by ``test_query_traces``, ``test_query_logs_metrics``, ``test_jaeger_api`` and
``test_schema_fuzz`` (the ``query_server`` fixture in ``conftest.py``).

Spans and logs carry event times around ``BASE`` (2026-01-01, far from the wall clock); metric
points carry the SDK's collection times (the wall clock of the test), kept in the returned dict.
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs.export import LogRecordExportResult
from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    InMemoryMetricReader,
    MetricExportResult,
)
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from tests.otelsdk import log_exporter, make_logs, metric_exporter, resource, span_exporter
from tests.serverproc import ServerProcess

BASE = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z: event time, far from the wall clock
MS = 10**6


class Services:
    """One SDK tracer provider per service, all recording into one in-memory exporter."""

    def __init__(self, *names: str) -> None:
        self.memory = InMemorySpanExporter()
        self.providers = {}
        for name in names:
            provider = TracerProvider(resource=resource(name, **{"host.name": f"{name}-host"}))
            provider.add_span_processor(SimpleSpanProcessor(self.memory))
            self.providers[name] = provider

    def tracer(self, name: str) -> trace.Tracer:
        return self.providers[name].get_tracer("tests.query", "1.0")

    def finished(self) -> list[ReadableSpan]:
        for provider in self.providers.values():
            provider.shutdown()
        return list(self.memory.get_finished_spans())


def _span(tracer, name, kind, start, duration, parent=None, error=False, **kwargs):
    context = trace.set_span_in_context(parent) if parent is not None else None
    span = tracer.start_span(name, context=context, kind=kind, start_time=start, **kwargs)
    if error:
        span.set_status(Status(StatusCode.ERROR, "card declined"))
    return span, start + duration


def checkout_trace(svc: Services, start: int, payment_fails: bool) -> None:
    """frontend → checkout → payments (3 services), payments → postgresql (a database that sends
    no telemetry), checkout → stripe (peer.service)."""
    fe, co, pay = svc.tracer("frontend"), svc.tracer("checkout"), svc.tracer("payments")
    root, root_end = _span(
        fe,
        "GET /checkout",
        SpanKind.SERVER,
        start,
        100 * MS,
        attributes={"http.route": "/checkout"},
    )
    call, call_end = _span(fe, "POST checkout", SpanKind.CLIENT, start + MS, 90 * MS, root)
    server, server_end = _span(
        co,
        "POST /orders",
        SpanKind.SERVER,
        start + 2 * MS,
        80 * MS,
        call,
        attributes={"http.route": "/orders"},
    )
    server.add_event("order.validated", {"items": 3}, timestamp=start + 3 * MS)
    pay_call, pay_call_end = _span(
        co, "POST payments", SpanKind.CLIENT, start + 4 * MS, 50 * MS, server
    )
    pay_server, pay_end = _span(
        pay,
        "POST /charge",
        SpanKind.SERVER,
        start + 5 * MS,
        40 * MS,
        pay_call,
        error=payment_fails,
        attributes={"http.route": "/charge"},
    )
    db, db_end = _span(
        pay,
        "INSERT payments",
        SpanKind.CLIENT,
        start + 6 * MS,
        10 * MS,
        pay_server,
        attributes={"db.system": "postgresql", "db.name": "pay"},
    )
    stripe, stripe_end = _span(
        co,
        "POST stripe",
        SpanKind.CLIENT,
        start + 60 * MS,
        15 * MS,
        server,
        attributes={"peer.service": "stripe"},
        links=[Link(root.get_span_context(), {"why": "audit"})],
    )
    for span, end in (
        (db, db_end),
        (pay_server, pay_end),
        (pay_call, pay_call_end),
        (stripe, stripe_end),
        (server, server_end),
        (call, call_end),
        (root, root_end),
    ):
        span.end(end_time=end)


def send_spans(server: ServerProcess) -> list[ReadableSpan]:
    svc = Services("frontend", "checkout", "payments", "pager")
    for i in range(4):
        checkout_trace(svc, BASE + i * 60 * 10**9, payment_fails=(i == 3))
    pager = svc.tracer("pager")
    for i in range(25):
        # Five spans share each start time: the cursor must break ties, not skip or repeat.
        start = BASE + 10 * 10**9 + (i // 5) * MS
        span = pager.start_span(
            f"page-{i}",
            kind=SpanKind.INTERNAL,
            start_time=start,
            attributes={"n": str(i), "batch": "p"},
        )
        span.end(end_time=start + (i + 1) * MS)
    spans = svc.finished()
    exporter = span_exporter(server, "http")
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    exporter.shutdown()
    return spans


LOG_TRACE_ID = 0x5EED0000000000000000000000000001


def send_logs(server: ServerProcess) -> dict:
    """30 log lines of ``logs-svc`` one second apart; every third an error; five in one trace."""
    context = trace.set_span_in_context(
        trace.NonRecordingSpan(
            trace.SpanContext(LOG_TRACE_ID, 0x77, is_remote=False, trace_flags=trace.TraceFlags(1))
        )
    )

    def emit(provider) -> None:
        logger = provider.get_logger("tests.query.logs", "1.0")
        for i in range(30):
            error = i % 3 == 0
            logger.emit(
                body=f"order {i} {'FAILED to charge' if error else 'placed'}",
                severity_number=SeverityNumber.ERROR if error else SeverityNumber.INFO,
                severity_text="ERROR" if error else "INFO",
                attributes={"order.id": i, "shard": "a" if i < 15 else "b"},
                timestamp=BASE + i * 10**9,
                context=context if i >= 25 else None,
            )

    records = make_logs(emit)
    exporter = log_exporter(server, "http")
    assert exporter.export(records) is LogRecordExportResult.SUCCESS
    exporter.shutdown()
    return {"count": 30}


def _collect(reader: InMemoryMetricReader) -> object:
    data = reader.get_metrics_data()
    assert data is not None
    return data


def send_metrics(server: ServerProcess) -> dict:
    """A cumulative counter that restarts (reset), histograms (explicit and exponential),
    gauges, and a counter with an exemplar; returns the times of the points."""
    exporter = metric_exporter(server, "http")
    tracer = TracerProvider().get_tracer("exemplars")
    cumulative = {
        Counter: AggregationTemporality.CUMULATIVE,
        Histogram: AggregationTemporality.CUMULATIVE,
    }
    batches = []
    times: list[int] = []
    exemplar_ids: dict[str, str] = {}
    # First process: 5 then 3 more requests; then it restarts and counts 2.
    reader = InMemoryMetricReader(preferred_temporality=cumulative)
    provider = MeterProvider(
        metric_readers=[reader],
        resource=resource("metrics-svc"),
        views=[View(instrument_name="q.expo", aggregation=ExponentialBucketHistogramAggregation())],
    )
    meter = provider.get_meter("tests.query.metrics")
    requests = meter.create_counter("q.requests", unit="1", description="requests served")
    latency = meter.create_histogram("q.latency", unit="ms")
    expo = meter.create_histogram("q.expo", unit="ms")
    temperature = meter.create_gauge("q.temperature", unit="Cel")
    with tracer.start_as_current_span("exemplar") as span:
        exemplar_ids["trace"] = format(span.get_span_context().trace_id, "032x")
        requests.add(5, {"route": "/a"})
    for value in range(1, 101):
        latency.record(float(value), {"route": "/a"})
    for value in range(1, 1001):
        expo.record(float(value))
    temperature.set(21.5, {"room": "lab"})
    temperature.set(19.0, {"room": "office"})
    batches.append(_collect(reader))
    requests.add(3, {"route": "/a"})
    batches.append(_collect(reader))
    provider.shutdown()
    restarted = InMemoryMetricReader(preferred_temporality=cumulative)
    provider2 = MeterProvider(metric_readers=[restarted], resource=resource("metrics-svc"))
    provider2.get_meter("tests.query.metrics").create_counter(
        "q.requests", unit="1", description="requests served"
    ).add(2, {"route": "/a"})
    batches.append(_collect(restarted))
    provider2.shutdown()
    for data in batches:
        assert exporter.export(data) is MetricExportResult.SUCCESS
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    times += [p.time_unix_nano for p in metric.data.data_points]
    exporter.shutdown()
    return {"first": min(times), "last": max(times), "exemplar_trace": exemplar_ids["trace"]}


def send_all(server: ServerProcess) -> dict:
    return {
        "spans": send_spans(server),
        "logs": send_logs(server),
        "metrics": send_metrics(server),
    }
