"""Memory held by ingest: the gauges that place it, and the bounds on the holders."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace.export import SpanExportResult

from opstrata.consumers import CommittedBatch, Consumer, ConsumerContext
from opstrata.fanout import ConsumerRunner
from opstrata.memstats import HeapTrimmer, malloc_bytes
from opstrata.otlp.decoder import Encoding, decode_request
from opstrata.otlp.limits import DecodeLimits
from opstrata.schema import Signal
from opstrata.storage.duckdb_store import DuckDBStore
from tests.otelsdk import make_spans, span_exporter
from tests.pluginsupport import wait_for
from tests.serverproc import ServerProcess

LIMITS = DecodeLimits(max_attributes=128, max_value_chars=16384, max_depth=16)


def _span_request(service: str, count: int) -> bytes:
    def build(tracer) -> None:
        for i in range(count):
            with tracer.start_as_current_span(f"op-{i}") as span:
                span.set_attribute("http.route", f"/orders/{i}")
                span.set_attribute("payload", "x" * 200)

    return encode_spans(make_spans(service, build)).SerializeToString()


def _gauges(server: ServerProcess) -> dict[str, float]:
    text = server.api("/metrics").text
    found = {}
    for name, labels, value in re.findall(r"^(opstrata_[a-z_]+)(\{[^}]*\})? (\S+)$", text, re.M):
        found[name + labels] = float(value)
    return found


def test_memory_gauges_appear_and_follow_ingest(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data").start()
    try:
        before = _gauges(server)
        for name in (
            "opstrata_resident_memory_bytes",
            "opstrata_arrow_allocated_bytes",
            "opstrata_ingest_backlog_bytes",
            "opstrata_ingest_backlog_requests",
            "opstrata_consumer_inbox_batches",
            "opstrata_consumer_inbox_bytes",
        ):
            assert name in before, name
        assert before["opstrata_resident_memory_bytes"] > 20 * 2**20
        if malloc_bytes() is not None:  # glibc
            assert before["opstrata_malloc_used_bytes"] > 0
        table_before = before.get('opstrata_duckdb_memory_bytes{tag="in_memory_table"}', 0.0)

        exporter = span_exporter(server, "http")
        for round_ in range(20):

            def build(tracer, round_=round_) -> None:
                for i in range(200):
                    with tracer.start_as_current_span(f"op-{round_}-{i}") as span:
                        span.set_attribute("payload", "y" * 300)

            assert exporter.export(make_spans("memory-gauges", build)) == SpanExportResult.SUCCESS
        exporter.shutdown()
        # A query waits for the load of everything acknowledged: then nothing is backlogged.
        assert server.api("/api/v1/traces/" + "0" * 32).status_code in (200, 404)
        after = wait_for(
            lambda: (g := _gauges(server))["opstrata_ingest_backlog_requests"] == 0 and g,
            what="the backlog to drain",
        )
        assert after["opstrata_ingest_backlog_bytes"] == 0
        # 4,000 spans of ~400 bytes are in DuckDB's memory now (not yet checkpointed).
        table_after = after['opstrata_duckdb_memory_bytes{tag="in_memory_table"}']
        assert table_after > table_before + 1_000_000
    finally:
        assert server.stop() == 0


def test_admission_counts_what_a_decoded_request_holds_in_the_heap() -> None:
    """Admission bounds memory only if a held request counts what it really takes: its
    buffers plus the decoder's slack and the arrays' C++ objects (glibc's own count)."""
    if malloc_bytes() is None:
        pytest.skip("needs glibc's mallinfo2")
    bodies = [_span_request(f"heap-{i}", 100) for i in range(20)]
    used_before = malloc_bytes()[0]  # type: ignore[index]
    held = [decode_request(Signal.SPANS, body, Encoding.PROTOBUF, LIMITS) for body in bodies * 10]
    grown = malloc_bytes()[0] - used_before  # type: ignore[index]
    counted = sum(decoded.nbytes for decoded in held)
    buffers_only = sum(
        batch.get_total_buffer_size() for decoded in held for _, batch in decoded.batches
    )
    assert buffers_only < 0.85 * grown, "the buffers alone undercount (why the overhead exists)"
    assert 0.8 * grown <= counted <= 1.6 * grown, (counted, grown)


class _Recorder(Consumer):
    name = "recorder"
    signals = frozenset({Signal.SPANS})
    inbox_size = 10_000
    inbox_bytes = 1  # no batch fits: every one is read back from the store

    def __init__(self) -> None:
        self.seen: list[int] = []
        self.rows = 0

    def consume(self, batch: CommittedBatch, ctx: ConsumerContext) -> None:
        self.seen.append(batch.seq)
        self.rows += batch.rows


def test_consumer_inbox_bounded_in_bytes_reads_the_rest_from_the_store(tmp_path: Path) -> None:
    store = DuckDBStore(tmp_path / "data")
    store.start()
    consumer = _Recorder()
    ctx = ConsumerContext("test", consumer.name, tmp_path, lambda *_: None, store, {})
    runner = ConsumerRunner("test", consumer, store, ctx, tmp_path / "offsets")
    runner.start()
    try:
        bodies = [_span_request(f"inbox-{i}", 50) for i in range(12)]

        async def ingest() -> None:
            for body in bodies:
                decoded = decode_request(Signal.SPANS, body, Encoding.PROTOBUF, LIMITS)
                seq = await store.write(decoded.batches)
                committed = CommittedBatch.of(seq, decoded.batches)
                assert committed.nbytes > 1
                runner.publish(committed)

        asyncio.run(ingest())
        wait_for(lambda: len(consumer.seen) == 12, what="every batch to be consumed")
        assert consumer.seen == list(range(1, 13))
        assert consumer.rows == 12 * 50
        assert runner.catch_up_batches == 12
        assert runner.inbox_snapshot() == []
    finally:
        runner.stop()
        store.shutdown()


def test_heap_trimmer_trims_only_a_large_free_heap_when_ingest_is_quiet() -> None:
    """``malloc_trim`` stalls every allocating thread: it is due only with at least the
    threshold free in the C heap and the backlog drained; 0 turns it off."""
    if malloc_bytes() is None:
        pytest.skip("needs glibc's mallinfo2")
    free = malloc_bytes()[1]  # type: ignore[index]
    quiet = True
    trimmer = HeapTrimmer(lambda: quiet, threshold_bytes=max(1, free // 2))
    assert trimmer.due()
    quiet = False
    assert not trimmer.due(), "a backlog being loaded is not the time"
    quiet = True
    assert not HeapTrimmer(lambda: True, threshold_bytes=free + (1 << 40)).due()
    off = HeapTrimmer(lambda: True, threshold_bytes=0)
    off.start()
    assert off._thread is None, "0 turns the trimmer off"
