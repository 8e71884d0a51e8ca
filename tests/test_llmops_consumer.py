"""The LLMOps consumer's kept batches: when a group of them is looked at, and in what order,
against a real DuckDB store (the consumer's own threads, no server)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from opstrata.consumers import CommittedBatch, ConsumerContext
from opstrata.otlp import decode_traces as dt
from opstrata.otlp.decoded import DecodedRequest
from opstrata.otlp.decoder import Encoding, decode_request
from opstrata.otlp.limits import DecodeLimits
from opstrata.plugins.llmops import consumer as llm_consumer
from opstrata.plugins.llmops.config import LLMOpsConfig
from opstrata.plugins.llmops.consumer import GROUP_ROWS, LLMCalls
from opstrata.schema import Signal
from opstrata.storage.duckdb_store import DuckDBStore


def _kv(key: str, value: object) -> KeyValue:
    kind = "int_value" if isinstance(value, int) else "string_value"
    return KeyValue(key=key, value=AnyValue(**{kind: value}))


def _request(rnd: random.Random, spans: int, host: str = "h", message_chars: int = 200) -> bytes:
    """``spans`` chat calls of service ``svc`` on resource ``host.name`` = ``host``."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.extend([_kv("service.name", "svc"), _kv("host.name", host)])
    ss = rs.scope_spans.add()
    for _ in range(spans):
        span = ss.spans.add(trace_id=rnd.randbytes(16), span_id=rnd.randbytes(8), name="chat")
        span.start_time_unix_nano = 1_760_000_000_000_000_000 + rnd.randrange(10**9)
        span.end_time_unix_nano = span.start_time_unix_nano + rnd.randrange(10**8)
        text = "".join(rnd.choice("abcdefgh ") for _ in range(message_chars))
        span.attributes.extend(
            [
                _kv("gen_ai.operation.name", "chat"),
                _kv("gen_ai.provider.name", "openai"),
                _kv("gen_ai.request.model", "gpt-4o"),
                _kv("gen_ai.usage.input_tokens", 12),
                _kv("gen_ai.usage.output_tokens", 3),
                _kv("gen_ai.input.messages", f'[{{"role":"user","content":"{text}"}}]'),
            ]
        )
    return req.SerializeToString()


def _decode(body: bytes, side: bool) -> DecodedRequest:
    """Decoded with the side batch (as with the plugin running) or without (as before it
    started, or read back from the store)."""
    if side:
        dt.hand_over_llm_spans(True)
    try:
        return decode_request(Signal.SPANS, body, Encoding.PROTOBUF, DecodeLimits())
    finally:
        if side:
            dt.hand_over_llm_spans(False)


@contextmanager
def _consumer(tmp_path: Path) -> Iterator[tuple[LLMCalls, ConsumerContext, DuckDBStore]]:
    store = DuckDBStore(tmp_path)
    store.start()
    consumer = LLMCalls(LLMOpsConfig())
    ctx = ConsumerContext("llmops", "calls", tmp_path, lambda *_: None, store, {})
    try:
        consumer.start(ctx)
        yield consumer, ctx, store
    finally:
        consumer.stop(ctx)
        store.shutdown()


def _committed(store: DuckDBStore, decoded: DecodedRequest) -> CommittedBatch:
    return CommittedBatch.of(asyncio.run(store.write(decoded.batches)), decoded.batches)


def test_half_the_held_bytes_start_a_look_on_the_writers_thread(tmp_path, monkeypatch) -> None:
    """Kept batches past ``HELD_BYTES // 2`` are looked at by the writer's thread at once (not
    after ``GROUP_SECONDS``), well before the consumer's thread has to look itself at
    ``HELD_BYTES``."""
    monkeypatch.setattr(llm_consumer, "GROUP_SECONDS", 3600.0)  # only the bytes can make it due
    monkeypatch.setattr(llm_consumer, "HELD_BYTES", 2 * 1024 * 1024)
    rnd = random.Random(5)
    with _consumer(tmp_path) as (consumer, ctx, store):
        kept = 0
        while consumer._pending_bytes < llm_consumer.HELD_BYTES // 2:
            batch = _committed(store, _decode(_request(rnd, 100, message_chars=1000), True))
            assert batch.llm_spans is not None
            consumer.consume(batch, ctx)
            kept += 100
        # The consumer's thread did not look (it only does at HELD_BYTES) ...
        assert consumer._pending_bytes < llm_consumer.HELD_BYTES
        assert consumer._pending_rows < GROUP_ROWS
        assert consumer.writer is not None
        # ... the writer's thread does, within a tick or so of its 0.5-s wait.
        deadline = time.monotonic() + 10
        while consumer.writer.stored_seq != batch.seq and time.monotonic() < deadline:
            time.sleep(0.05)
        assert consumer.writer.stored_seq == batch.seq
        assert consumer._pending_bytes == 0
        stored = store.reader().execute("SELECT count(*) FROM llmops_calls").fetchall()[0][0]
        assert stored == kept


def test_each_consumer_asks_for_side_batches_until_it_stops(tmp_path) -> None:
    """Two servers in one process (two consumers): the first to stop leaves the other's side
    batches on; a consumer whose start failed asks for none and takes none back."""
    assert not dt.llm_spans_wanted()
    with _consumer(tmp_path / "a"):
        with _consumer(tmp_path / "b"):
            assert dt.llm_spans_wanted()
        assert dt.llm_spans_wanted()
        assert _decode_with_flag(_request(random.Random(1), 3)).batches.llm_spans is not None
    assert not dt.llm_spans_wanted()
    assert _decode_with_flag(_request(random.Random(1), 3)).batches.llm_spans is None
    store = DuckDBStore(tmp_path / "c")
    store.start()
    store.shutdown()
    consumer = LLMCalls(LLMOpsConfig())
    ctx = ConsumerContext("llmops", "calls", tmp_path / "c", lambda *_: None, store, {})
    with pytest.raises(duckdb.ConnectionException):
        consumer.start(ctx)
    assert not dt.llm_spans_wanted()
    consumer.stop(ctx)
    assert not dt.llm_spans_wanted()
    with pytest.raises(RuntimeError):
        dt.hand_over_llm_spans(False)


def _decode_with_flag(body: bytes) -> DecodedRequest:
    """Decoded as the server's decoders do: with the side batch while anyone asks for it."""
    return decode_request(Signal.SPANS, body, Encoding.PROTOBUF, DecodeLimits())


def test_a_look_finds_calls_in_the_order_their_batches_came(tmp_path, monkeypatch) -> None:
    """A look over side batches and whole batches (without one: decoded before the plugin
    started, or read back from the store) finds the calls in sequence order: the first
    resource of a service is the first one that came, and calls are written in order."""
    monkeypatch.setattr(llm_consumer, "GROUP_SECONDS", 3600.0)  # one look, at stop
    rnd = random.Random(8)
    whole = [_decode(_request(rnd, 4, host=f"old{n}"), False) for n in range(2)]
    side = _decode(_request(rnd, 4, host="new"), True)
    assert side.batches.llm_spans is not None
    order = [whole[0], side, whole[1]]
    with _consumer(tmp_path) as (consumer, ctx, store):
        committed = [_committed(store, d) for d in order]
        assert [c.llm_spans is not None for c in committed] == [False, True, False]
        consumer.consume_many(committed, ctx)
        consumer.flush_pending()
        assert consumer.resources["svc"]["host.name"] == "old0"
        stored = store.reader().execute('SELECT "SpanId" FROM llmops_call_rows ORDER BY rowid')
        spans = [row[0] for row in stored.fetchall()]
    assert spans == [s for d in order for s in d.batches[0][1].column("SpanId").to_pylist()]
