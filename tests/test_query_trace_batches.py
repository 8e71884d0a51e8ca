"""A trace whose spans reach the server in two OTLP requests minutes apart (in event time), with
other traces between them, is returned whole and in tree order by ``/api/v1/traces/{id}`` and
the Jaeger ``/api/traces/{id}`` — read once while the second batch is newer than the trace index
and once after the index has taken it in."""

from __future__ import annotations

import time
from pathlib import Path

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from tests.otelsdk import make_spans, span_exporter
from tests.querysetup import BASE, MS
from tests.serverproc import ServerProcess

MINUTE = 60 * 10**9
INDEX_INTERVAL = 1.0  # the trace index catches up every second


def _hex(value: int, width: int) -> str:
    return format(value, f"0{width}x")


def _report_spans() -> list:
    """``GET /report`` runs five minutes: two children early, a third four minutes in."""

    def build(tracer: trace.Tracer) -> None:
        root = tracer.start_span("GET /report", kind=SpanKind.SERVER, start_time=BASE)
        ctx = trace.set_span_in_context(root)
        for name, start, end in (
            ("load rows", BASE + 1 * MS, BASE + 20 * MS),
            ("query db", BASE + 30 * MS, BASE + 40 * MS),
            ("render", BASE + 4 * MINUTE, BASE + 4 * MINUTE + 50 * MS),
        ):
            child = tracer.start_span(name, context=ctx, start_time=start)
            if name == "query db":
                grandchild = tracer.start_span(
                    "SELECT rows",
                    context=trace.set_span_in_context(child),
                    kind=SpanKind.CLIENT,
                    start_time=start + MS,
                )
                grandchild.end(end_time=start + 5 * MS)
            child.end(end_time=end)
        root.end(end_time=BASE + 5 * MINUTE)

    return list(make_spans("reports", build))


def _noise_spans() -> list:
    def build(tracer: trace.Tracer) -> None:
        for i in range(3):
            with tracer.start_as_current_span(f"other-{i}", start_time=BASE + MINUTE + i * MS):
                pass

    return list(make_spans("others", build))


def _check(server: ServerProcess, trace_id: str, span_ids: dict[str, str]) -> None:
    body = server.api(f"/api/v1/traces/{trace_id}")
    assert body.status_code == 200, body.text
    got = body.json()
    assert got["span_count"] == 5
    # Depth first from the root, siblings by start time; the late child last.
    assert [s["name"] for s in got["spans"]] == [
        "GET /report",
        "load rows",
        "query db",
        "SELECT rows",
        "render",
    ]
    assert {s["name"]: s["span_id"] for s in got["spans"]} == span_ids
    assert got["spans"][0]["duration_nano"] == 5 * MINUTE

    jaeger = server.api(f"/api/traces/{trace_id}")
    assert jaeger.status_code == 200, jaeger.text
    [found] = jaeger.json()["data"]
    assert found["traceID"] == trace_id
    assert sorted(s["operationName"] for s in found["spans"]) == sorted(span_ids)
    parents = {
        s["operationName"]: [r["spanID"] for r in s["references"] if r["refType"] == "CHILD_OF"]
        for s in found["spans"]
    }
    assert parents["GET /report"] == []
    assert parents["render"] == [span_ids["GET /report"]]
    assert parents["SELECT rows"] == [span_ids["query db"]]


def test_trace_sent_in_two_batches_minutes_apart_is_whole_and_in_tree_order(
    tmp_path: Path,
) -> None:
    spans = _report_spans()
    by_name = {s.name: s for s in spans}
    trace_id = _hex(spans[0].context.trace_id, 32)
    span_ids = {s.name: _hex(s.context.span_id, 16) for s in spans}
    early = [by_name[n] for n in ("load rows", "SELECT rows", "query db")]
    late = [by_name["render"], by_name["GET /report"]]

    server = ServerProcess(tmp_path / "data").start()
    try:
        exporter = span_exporter(server, "http")
        assert exporter.export(early).name == "SUCCESS"
        assert exporter.export(_noise_spans()).name == "SUCCESS"
        time.sleep(2.5 * INDEX_INTERVAL)  # the first batch and the noise get indexed
        first = server.api(f"/api/v1/traces/{trace_id}").json()
        assert [s["name"] for s in first["spans"]] == ["load rows", "query db", "SELECT rows"]

        assert exporter.export(late).name == "SUCCESS"
        _check(server, trace_id, span_ids)  # the second batch is (likely) not indexed yet
        time.sleep(2.5 * INDEX_INTERVAL)
        _check(server, trace_id, span_ids)  # both batches indexed: two ranges of rows
        exporter.shutdown()
    finally:
        assert server.stop() == 0, "".join(server.output)
