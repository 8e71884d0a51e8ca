"""The trace index beside the DuckDB store: spans of one trace sent in several requests, read
before and after the index caught up, and after row ids moved (a deletion plus checkpoint)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from opstrata.otlp.anyvalue import AttributeRenderer
from opstrata.otlp.decode_traces import decode_trace_bytes
from opstrata.otlp.limits import DecodeLimits
from opstrata.schema import Table
from opstrata.storage.duckdb_queries import DuckDBQueries
from opstrata.storage.duckdb_store import DuckDBStore
from opstrata.storage.duckdb_trace_index import TraceIndex
from tests.otelsdk import make_spans


def _write(store: DuckDBStore, spans) -> None:
    """Encode like the SDK's OTLP exporter, decode like the server, commit like the server."""
    decoded = decode_trace_bytes(
        encode_spans(spans).SerializeToString(), AttributeRenderer(DecodeLimits())
    )
    asyncio.run(store.write(decoded.batches))


def test_index_finds_every_span_of_a_trace_sent_in_pieces(tmp_path: Path) -> None:
    def build(tracer: trace.Tracer) -> None:
        with tracer.start_as_current_span("root"):
            for i in range(5):
                with tracer.start_as_current_span(f"child-{i}"):
                    pass

    spans = list(make_spans("pieces", build))
    other = list(make_spans("other", build))
    trace_id = format(spans[0].context.trace_id, "032x")
    store = DuckDBStore(tmp_path / "data")
    store.start()
    try:
        queries = DuckDBQueries(store)
        _write(store, spans[:2])
        _write(store, other)
        _write(store, spans[2:4])
        # Not indexed yet: found from the unindexed tail.
        assert queries.trace(trace_id).num_rows == 4
        queries.index.catch_up()
        where = queries.index.locate(Table.TRACES, [trace_id])
        assert where.expected_rows == 4 and where.tail == 4
        _write(store, spans[4:])  # after the index: in the tail again
        found = queries.trace(trace_id)
        assert sorted(found.column("SpanId").to_pylist()) == sorted(
            format(s.context.span_id, "016x") for s in spans
        )
        times = found.column("Timestamp").cast("int64").to_pylist()
        assert times == sorted(times)
        queries.index.catch_up()
        assert queries.index.locate(Table.TRACES, [trace_id]).expected_rows == 6
        # Fewer rows than the index counted (one deleted): read again by _Seq, no row lost.
        gone = format(spans[0].context.span_id, "016x")
        # otel_traces is a view (resources stored once): delete from its physical table.
        store.reader().execute('DELETE FROM otel_traces_rows WHERE "SpanId" = ?', [gone])
        store.reader().execute("CHECKPOINT")
        after = queries.trace(trace_id).column("SpanId").to_pylist()
        assert len(after) == 5 and gone not in after
        assert queries.trace(format(other[0].context.trace_id, "032x")).num_rows == 6
        assert queries.trace("0" * 32).num_rows == 0
    finally:
        store.shutdown()


def test_spans_indexed_after_the_lookup_read_its_high_water_mark_come_once(
    tmp_path: Path,
) -> None:
    """A catch-up that commits between reading how far the index goes and looking a trace up
    (here: another TraceIndex on the same store) must not return its spans twice — once from
    the index, once from the tail."""

    def build(tracer: trace.Tracer) -> None:
        with tracer.start_as_current_span("root"):
            for i in range(3):
                with tracer.start_as_current_span(f"child-{i}"):
                    pass

    spans = list(make_spans("twice", build))
    trace_id = format(spans[0].context.trace_id, "032x")
    store = DuckDBStore(tmp_path / "data")
    store.start()
    try:
        queries = DuckDBQueries(store)
        _write(store, spans[:2])
        queries.index.catch_up()  # this index knows it went up to sequence 1
        _write(store, spans[2:])
        TraceIndex(store).catch_up()  # ...while another indexes sequence 2 behind its back
        assert queries.index.indexed_upto(Table.TRACES) == 1
        found = queries.trace(trace_id).column("SpanId").to_pylist()
        assert sorted(found) == sorted(format(s.context.span_id, "016x") for s in spans)
        queries.index.catch_up()  # takes sequence 2 as indexed, does not index it again
        where = queries.index.locate(Table.TRACES, [trace_id])
        assert where.tail_empty and where.expected_rows == 4
        assert queries.trace(trace_id).num_rows == 4
    finally:
        store.shutdown()
