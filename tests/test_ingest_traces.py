"""Spans exported by the real Python SDK over gRPC and HTTP arrive intact, field by field."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from tests.otelsdk import make_spans, span_exporter
from tests.serverproc import ServerProcess


def _build(tracer: trace.Tracer) -> None:
    with tracer.start_as_current_span(
        "GET /checkout", kind=SpanKind.SERVER, attributes={"http.route": "/checkout", "n": 3}
    ) as root:
        root.add_event("cache.miss", {"key": "user:42", "hit": False})
        with tracer.start_as_current_span(
            "SELECT orders",
            kind=SpanKind.CLIENT,
            attributes={"db.system": "postgresql", "ratio": 0.25, "tags": ["a", "b"]},
            links=[Link(root.get_span_context(), {"link.kind": "follows"})],
        ) as child:
            child.set_status(Status(StatusCode.ERROR, "timeout"))


@pytest.mark.parametrize(
    ("transport", "compression"),
    [("grpc", "none"), ("grpc", "gzip"), ("http", "none"), ("http", "gzip")],
)
def test_sdk_spans_are_stored_field_by_field(
    shared_server: ServerProcess, transport: str, compression: str
) -> None:
    spans = make_spans(f"checkout-{transport}-{compression}", _build)
    exporter = span_exporter(shared_server, transport, compression)
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    exporter.shutdown()

    _child, root = spans  # the SDK finishes the child first
    trace_id = format(root.context.trace_id, "032x")
    body = shared_server.api(f"/api/v1/traces/{trace_id}").json()
    assert body["span_count"] == 2
    by_name = {s["name"]: s for s in body["spans"]}
    got_root, got_child = by_name["GET /checkout"], by_name["SELECT orders"]

    assert got_root["span_id"] == format(root.context.span_id, "016x")
    assert got_root["parent_span_id"] == ""
    assert got_root["kind"] == "Server"
    assert got_root["service_name"] == f"checkout-{transport}-{compression}"
    assert got_root["resource_attributes"]["host.name"] == "node-1"
    assert got_root["resource_attributes"]["telemetry.sdk.language"] == "python"
    assert got_root["scope_name"] == "tests.scope"
    assert got_root["scope_version"] == "1.2.3"
    assert got_root["attributes"] == {"http.route": "/checkout", "n": "3"}
    assert got_root["start_time_unix_nano"] == root.start_time
    assert got_root["duration_nano"] == root.end_time - root.start_time
    assert got_root["status_code"] == "Unset"
    sent = encode_spans(spans).resource_spans[0].scope_spans[0].spans
    assert got_root["trace_flags"] == next(s.flags for s in sent if s.name == "GET /checkout")
    [event] = got_root["events"]
    assert event["name"] == "cache.miss"
    assert event["attributes"] == {"key": "user:42", "hit": "false"}
    assert event["timestamp"] == root.events[0].timestamp

    assert got_child["parent_span_id"] == got_root["span_id"]
    assert got_child["kind"] == "Client"
    assert got_child["status_code"] == "Error"
    assert got_child["status_message"] == "timeout"
    assert got_child["attributes"] == {
        "db.system": "postgresql",
        "ratio": "0.25",
        "tags": '["a","b"]',
    }
    [link] = got_child["links"]
    assert link["trace_id"] == trace_id
    assert link["span_id"] == got_root["span_id"]
    assert link["attributes"] == {"link.kind": "follows"}


def test_unknown_trace_is_404_and_bad_id_is_400(shared_server: ServerProcess) -> None:
    missing = shared_server.api("/api/v1/traces/" + "ab" * 16)
    assert missing.status_code == 404
    assert "not found" in missing.json()["detail"]
    bad = shared_server.api("/api/v1/traces/not-hex")
    assert bad.status_code == 400
    assert bad.json()["status_code"] == 400
