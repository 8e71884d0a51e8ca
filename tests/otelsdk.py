"""Telemetry made with the real OpenTelemetry Python SDK, exported with its real OTLP exporters."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogs
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
    OTLPMetricExporter as GrpcMetrics,
)
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpans
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogs
from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
    OTLPMetricExporter as HttpMetrics,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpans
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import (
    InMemoryLogRecordExporter,
    LogRecordExportResult,
    SimpleLogRecordProcessor,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricsData
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.serverproc import ServerProcess


def resource(service: str, **extra: str) -> Resource:
    return Resource.create({"service.name": service, **extra})


def make_spans(service: str, build: Callable[[trace.Tracer], None]) -> Sequence[ReadableSpan]:
    """Spans recorded by a real SDK tracer while ``build`` runs."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=resource(service, **{"host.name": "node-1"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    build(provider.get_tracer("tests.scope", "1.2.3"))
    provider.shutdown()
    return memory.get_finished_spans()


def make_metrics(
    build: Callable[[MeterProvider], None], views: Sequence[object] = (), **reader_args: object
) -> MetricsData:
    reader = InMemoryMetricReader(**reader_args)  # type: ignore[arg-type]
    provider = MeterProvider(
        metric_readers=[reader], resource=resource("metrics-svc"), views=list(views)
    )
    build(provider)
    data = reader.get_metrics_data()
    provider.shutdown()
    assert data is not None
    return data


def make_logs(build: Callable[[LoggerProvider], None]) -> Sequence[object]:
    memory = InMemoryLogRecordExporter()
    provider = LoggerProvider(resource=resource("logs-svc"))
    provider.add_log_record_processor(SimpleLogRecordProcessor(memory))
    build(provider)
    provider.shutdown()
    return memory.get_finished_logs()


def span_exporter(server: ServerProcess, transport: str, compression: str = "none"):
    if transport == "grpc":
        from grpc import Compression as GrpcCompression

        gz = GrpcCompression.Gzip if compression == "gzip" else GrpcCompression.NoCompression
        return GrpcSpans(endpoint=server.grpc_endpoint, insecure=True, compression=gz, timeout=30)
    return HttpSpans(
        endpoint=server.http_base + "/v1/traces",
        compression=Compression(compression if compression != "none" else "none"),
        timeout=30,
    )


def metric_exporter(server: ServerProcess, transport: str, **kwargs: object):
    if transport == "grpc":
        return GrpcMetrics(endpoint=server.grpc_endpoint, insecure=True, timeout=30, **kwargs)
    return HttpMetrics(endpoint=server.http_base + "/v1/metrics", timeout=30, **kwargs)


def log_exporter(server: ServerProcess, transport: str):
    if transport == "grpc":
        return GrpcLogs(endpoint=server.grpc_endpoint, insecure=True, timeout=30)
    return HttpLogs(endpoint=server.http_base + "/v1/logs", timeout=30)


def send_log_records(
    server: ServerProcess, attributes: dict[str, str], records: list[dict]
) -> None:
    """Emit ``records`` (``Logger.emit`` keyword arguments) through the SDK under a resource
    with ``attributes``, and export them to ``server`` over OTLP/HTTP, 500 per request."""
    memory = InMemoryLogRecordExporter()
    provider = LoggerProvider(resource=Resource.create(attributes))
    provider.add_log_record_processor(SimpleLogRecordProcessor(memory))
    logger = provider.get_logger("model-server", "1.0")
    for record in records:
        logger.emit(**record)
    provider.shutdown()
    exporter = log_exporter(server, "http")
    logs = memory.get_finished_logs()
    for start in range(0, len(logs), 500):
        assert exporter.export(logs[start : start + 500]) is LogRecordExportResult.SUCCESS
    exporter.shutdown()
