"""A full admission queue answers "retry later" in each protocol's terms and loses nothing."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.sdk.trace.export import SpanExportResult

from tests.otelsdk import make_spans, span_exporter
from tests.serverproc import ServerProcess
from tests.storeread import read_table
from tests.test_bad_input import TRACE_EXPORT, _spans

LIMITS = {
    "OPSTRATA_INGEST__MAX_REQUEST_BYTES": "200000",
    "OPSTRATA_INGEST__QUEUE_BYTES": "200000",
}


def _big_request() -> bytes:
    return _spans(300, attrs={"payload": "p" * 400})  # ~150 KB: one fits in the queue at a time


def test_full_queue_is_503_and_unavailable_with_retry_hints(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", env=LIMITS).start()
    try:
        body = _big_request()

        def post(_: int) -> httpx.Response:
            return httpx.post(
                server.http_base + "/v1/traces",
                content=body,
                headers={"content-type": "application/x-protobuf"},
                timeout=60,
            )

        with ThreadPoolExecutor(16) as pool:
            replies = list(pool.map(post, range(48)))
        throttled = [r for r in replies if r.status_code == 503]
        assert throttled, "a queue of one request's size must refuse concurrent requests"
        assert {r.status_code for r in replies} <= {200, 503}
        assert throttled[0].headers["retry-after"] == "1"
        status = status_pb2.Status.FromString(throttled[0].content)
        assert status.code == 14  # UNAVAILABLE

        def call(_: int) -> grpc.StatusCode:
            with grpc.insecure_channel(server.grpc_endpoint) as channel:
                export = channel.unary_unary(TRACE_EXPORT, lambda b: b, lambda b: b)
                try:
                    export(body, timeout=60)
                except grpc.RpcError as exc:
                    if exc.code() is grpc.StatusCode.UNAVAILABLE:
                        trailers = dict(exc.trailing_metadata() or ())
                        details = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
                        retry = error_details_pb2.RetryInfo()
                        assert details.details[0].Unpack(retry)
                        assert retry.retry_delay.seconds == 1
                    return exc.code()
                return grpc.StatusCode.OK

        with ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(call, range(48)))
        assert grpc.StatusCode.UNAVAILABLE in codes
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}

        metrics = server.api("/metrics").text
        throttled_line = next(
            line
            for line in metrics.splitlines()
            if line.startswith('opstrata_throttled_requests_total{signal="spans"}')
        )
        assert float(throttled_line.split()[-1]) >= len(throttled)
    finally:
        assert server.stop() == 0


def test_retrying_sdk_clients_lose_nothing_under_backpressure(tmp_path: Path) -> None:
    # A queue of a few of these requests (decoded, ~4 times their ~80 KB), and a waiting room
    # (a quarter of it) of about three bodies: twelve at once overflow both.
    limits = {**LIMITS, "OPSTRATA_INGEST__QUEUE_BYTES": "1000000"}
    server = ServerProcess(tmp_path / "data", env=limits).start()
    batches = []
    for i in range(12):

        def build(tracer, i=i) -> None:
            for j in range(200):
                with tracer.start_as_current_span(f"op-{i}-{j}") as span:
                    span.set_attribute("payload", "q" * 300)

        batches.append(make_spans(f"pressure-{random.randrange(1 << 30)}", build))

    def export(index: int) -> SpanExportResult:
        transport = "grpc" if index % 2 else "http"
        exporter = span_exporter(server, transport)
        try:
            return exporter.export(batches[index])
        finally:
            exporter.shutdown()

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(export, range(12)))
    assert results == [SpanExportResult.SUCCESS] * 12
    throttled = [
        line
        for line in server.api("/metrics").text.splitlines()
        if line.startswith("opstrata_throttled_requests_total")
    ]
    assert server.stop() == 0
    names = {row["SpanName"] for row in read_table(tmp_path / "data", "otel_traces")}
    assert len(names) == 12 * 200
    assert throttled and float(throttled[0].split()[-1]) > 0, "the bound must have been reached"
