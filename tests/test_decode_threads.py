"""``ingest.decode_threads``: requests decoded in a thread of the server beside the event loop.

A real server with one decode thread; the real SDK's exporters send spans (with an array
attribute, which the C decoder hands to the Python callback), metric points and log records
over both transports; what was stored is read back through the API and from the store. A
malformed request still gets its 400 and harms nothing.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
from opentelemetry.sdk._logs.export import LogRecordExportResult
from opentelemetry.sdk.metrics.export import MetricExportResult
from opentelemetry.sdk.trace.export import SpanExportResult

from tests.otelsdk import (
    log_exporter,
    make_logs,
    make_metrics,
    make_spans,
    metric_exporter,
    span_exporter,
)
from tests.serverproc import ServerProcess
from tests.storeread import read_table


def test_requests_decoded_in_a_thread_are_stored(tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:12]
    server = ServerProcess(tmp_path / "data", env={"OPSTRATA_INGEST__DECODE_THREADS": "1"}).start()
    try:

        def build(tracer) -> None:
            for i in range(40):
                with tracer.start_as_current_span(f"op-{tag}-{i}") as span:
                    span.set_attribute("tag", tag)
                    span.set_attribute("list", ["a", "b", str(i)])

        spans = make_spans(f"svc-{tag}", build)
        trace_ids = {format(s.context.trace_id, "032x") for s in spans}
        for transport in ("http", "grpc"):
            assert span_exporter(server, transport).export(spans) == SpanExportResult.SUCCESS

        def record(provider) -> None:
            counter = provider.get_meter("m").create_counter(f"c.{tag}")
            for i in range(30):
                counter.add(i + 1, {"n": str(i)})

        metrics = make_metrics(record)
        assert metric_exporter(server, "http").export(metrics) == MetricExportResult.SUCCESS

        def emit(provider) -> None:
            logger = provider.get_logger("l")
            for i in range(25):
                logger.emit(body=f"line {tag} {i}", attributes={"tag": tag})

        logs = make_logs(emit)
        assert log_exporter(server, "http").export(logs) == LogRecordExportResult.SUCCESS

        bad = httpx.post(
            server.http_base + "/v1/traces",
            content=b"\x0a\xff\xff\xff\xff\x0f" + b"x" * 4096,
            headers={"content-type": "application/x-protobuf"},
        )
        assert bad.status_code == 400

        one = sorted(trace_ids)[0]
        body = server.api(f"/api/v1/traces/{one}").json()
        assert body["spans"], body
        assert all(
            s["attributes"]["list"] == f'["a","b","{s["name"].rsplit("-", 1)[1]}"]'
            for s in body["spans"]
        ), body["spans"][0]["attributes"]
    finally:
        assert server.stop() == 0
    data_dir = tmp_path / "data"
    stored = read_table(data_dir, "otel_traces", "WHERE ServiceName = ?", [f"svc-{tag}"])
    assert len(stored) == 2 * len(spans)  # once per transport
    assert {r["TraceId"] for r in stored} == trace_ids
    assert all(r["SpanAttributes"]["tag"] == tag for r in stored)
    points = read_table(data_dir, "otel_metrics_sum", "WHERE MetricName = ?", [f"c.{tag}"])
    assert sorted(p["Value"] for p in points) == [float(i + 1) for i in range(30)]
    records = read_table(data_dir, "otel_logs", "WHERE Body LIKE ?", [f"line {tag} %"])
    assert sorted(r["Body"] for r in records) == sorted(f"line {tag} {i}" for i in range(25))
    assert all(r["LogAttributes"]["tag"] == tag for r in records)
