"""Admission charges a request's expected decoded size before decoding (issue 2 review).

Requests being decoded were counted at their protobuf size and charged the decoded extra only
afterwards, so from an empty queue many requests could be admitted at once and expand 4-13 times
past the bound. Here several concurrent requests reach admission before any is decoded.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from opstrata.consumers import CommittedBatch
from opstrata.errors import Overloaded
from opstrata.ingest import IngestPipeline, decoded_sizes
from opstrata.otlp.decode_traces import hand_over_llm_spans
from opstrata.otlp.decoder import Encoding, decode_request
from opstrata.otlp.limits import DecodeLimits
from opstrata.schema import Signal
from opstrata.selfmetrics import SelfMetrics
from opstrata.settings import IngestSettings
from opstrata.storage.duckdb_store import DuckDBStore


def _metrics_request(service: str, points: int) -> bytes:
    request = ExportMetricsServiceRequest()
    resource_metrics = request.resource_metrics.add()
    attr = resource_metrics.resource.attributes.add()
    attr.key, attr.value.string_value = "service.name", service
    metric = resource_metrics.scope_metrics.add().metrics.add()
    metric.name = "queue.depth"
    for i in range(points):
        point = metric.gauge.data_points.add()
        point.time_unix_nano = 1_700_000_000_000_000_000 + i * 1_000_000_000
        point.as_double = float(i)
        kv = point.attributes.add()
        kv.key, kv.value.string_value = "shard", f"s{i % 7}"
    return request.SerializeToString()


def test_requests_being_decoded_are_charged_their_decoded_size(tmp_path: Path) -> None:
    body = _metrics_request("admit", 2000)
    pipeline_probe = IngestPipeline(
        IngestSettings(), DuckDBStore(tmp_path / "unused"), SelfMetrics()
    )
    decoded_size = decode_request(
        Signal.METRIC_POINTS, body, Encoding.PROTOBUF, pipeline_probe.limits
    ).nbytes
    ratio = decoded_size / len(body)
    assert ratio > 3, "metric points expand several times when decoded"
    # Room for three decoded requests, but for 3 * ratio protobuf bodies.
    capacity = 3 * decoded_size

    async def run() -> None:
        store = DuckDBStore(tmp_path / "data")
        store.start()
        # No wait for room: what is refused at once shows what was charged.
        settings = IngestSettings(
            queue_bytes=capacity, max_request_bytes=len(body), admission_wait_seconds=0
        )
        pipeline = IngestPipeline(settings, store, SelfMetrics(), log_dir=tmp_path / "data" / "log")
        pipeline.start()
        try:
            outcomes = await asyncio.gather(
                *[
                    pipeline.ingest(Signal.METRIC_POINTS, body, Encoding.PROTOBUF)
                    for _ in range(12)
                ],
                return_exceptions=True,
            )
            admitted = [o for o in outcomes if not isinstance(o, BaseException)]
            refused = [o for o in outcomes if isinstance(o, Overloaded)]
            assert len(admitted) + len(refused) == 12, outcomes
            # At body size all 12 would fit (12 < 3 * ratio); charged as decoded, at most 3.
            assert 1 <= len(admitted) <= 3, len(admitted)
            learnt = pipeline.expansion[Signal.METRIC_POINTS, Encoding.PROTOBUF]
            assert learnt >= ratio * 0.99, (learnt, ratio)
            assert await pipeline.wait_loaded(10)
            await asyncio.sleep(0.1)
            assert pipeline.admission.in_flight_bytes == 0
            assert pipeline.admission.in_flight_requests == 0
        finally:
            await pipeline.shutdown(timeout=5)
            store.shutdown()

    asyncio.run(run())


def test_a_span_request_is_charged_its_llmops_side_batch_too() -> None:
    """The span decoder copies LLM spans into a side batch for the llmops plugin; admission
    (``decoded_sizes``) and the consumers' inbox bounds (``CommittedBatch.nbytes``) must count
    it as ``DecodedRequest.nbytes`` does, or they undercharge LLM-heavy requests."""
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    for i in range(50):
        span = scope.spans.add()
        span.trace_id, span.span_id = random.randbytes(16), random.randbytes(8)
        span.name, span.start_time_unix_nano = "chat", 1_700_000_000_000_000_000 + i
        for key, value in [
            ("gen_ai.operation.name", "chat"),
            ("gen_ai.request.model", "gpt-4o"),
            ("gen_ai.input.messages", "m" * 2000),
        ]:
            kv = span.attributes.add()
            kv.key, kv.value.string_value = key, value
    body = request.SerializeToString()
    hand_over_llm_spans(True)
    try:
        decoded = decode_request(Signal.SPANS, body, Encoding.PROTOBUF, DecodeLimits())
    finally:
        hand_over_llm_spans(False)
    side = decoded.batches.llm_spans_nbytes  # type: ignore[attr-defined]
    assert side > 50 * 2000, "the side batch holds the messages"
    held, buffers = decoded_sizes(decoded)
    assert held == decoded.nbytes
    committed = CommittedBatch.of(1, decoded.batches, buffers)
    assert committed.nbytes == buffers + side
