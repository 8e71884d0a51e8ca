"""The span decoder's side batch for the LLMOps plugin (``decode_traces.LLM_SPANS``): the C
decoder's against the Python reference built from the batch it stored, joined groups against
their concatenation, and the calls recognised from it against those of the long way round."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pyarrow as pa
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from opstrata.otlp import _wire, decoded
from opstrata.otlp import decode_traces as dt
from opstrata.otlp.anyvalue import AttributeRenderer
from opstrata.otlp.decoder import Encoding, decode_request
from opstrata.otlp.limits import DecodeLimits
from opstrata.plugins.llmops.conventions import FIELDS, MARKER_KEYS, MESSAGE_PREFIXES
from opstrata.plugins.llmops.pick import hinted_rows, pick_spans
from opstrata.plugins.llmops.privacy import ContentPolicy
from opstrata.plugins.llmops.recognise import SpanColumns, recognise
from opstrata.schema import Signal

_LLM: list[dict[str, object]] = [
    {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "user.id": "u1",
     "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 12, "http.route": "/x",
     "gen_ai.usage.output_tokens": 3, "session.id": "s", "error.type": "openai.APIError",
     "gen_ai.input.messages": '[{"role":"user","parts":[{"type":"text","content":"a@b.co"}]}]'},
    {"openinference.span.kind": "LLM", "llm.model_name": "gpt-4o-mini", "enduser.id": "e",
     "llm.token_count.prompt": 5, "llm.token_count.completion": 7, "thread.id": 3,
     "llm.input_messages.0.message.role": "user",
     "llm.input_messages.0.message.content": "call 555 123 4567"},
    {"llm.request.type": "chat", "gen_ai.system": "anthropic", "llm.usage.total_tokens": 9,
     "gen_ai.response.model": "claude-3", "traceloop.entity.name": "x", "event.name": "n",
     "gen_ai.prompt.0.role": "user", "gen_ai.prompt.0.content": "hi"},
    {"gen_ai.tool.name": "search", "user.id": "u2"},  # marked, not a call
    {"llm.something": "else"},  # marked, no marker key
]  # fmt: skip
_PLAIN = {"http.route": "/x", "user.id": "u3", "llmx.y": "z", "gen_ai": "not a prefix"}
_EVENTS = ["First Token Stream Event", "exception", "gen_ai.user.message", "log"]


def _kv(key: str, value: object) -> KeyValue:
    kind = "int_value" if isinstance(value, int) else "string_value"
    return KeyValue(key=key, value=AnyValue(**{kind: value}))


def _request(rnd: random.Random, share: float, resources: int = 2) -> bytes:
    """Spans of several resources, some LLM, some with events, some invalid (rejected), some
    with a repeated key."""
    req = ExportTraceServiceRequest()
    for r in range(resources):
        rs = req.resource_spans.add()
        rs.resource.attributes.extend([_kv("service.name", f"svc{r}"), _kv("host.name", "h")])
        ss = rs.scope_spans.add()
        for _ in range(rnd.randrange(0, 40)):
            valid = rnd.random() > 0.05
            span = ss.spans.add(
                trace_id=rnd.randbytes(16) if valid else b"\0" * 3, span_id=rnd.randbytes(8)
            )
            span.start_time_unix_nano = 1_760_000_000_000_000_000 + rnd.randrange(10**9)
            span.end_time_unix_nano = span.start_time_unix_nano + rnd.randrange(10**8)
            attrs = rnd.choice(_LLM) if rnd.random() < share else _PLAIN
            span.attributes.extend(_kv(k, v) for k, v in attrs.items())
            if rnd.random() < 0.2:  # a repeated key: the last value wins
                key = rnd.choice(list(attrs))
                span.attributes.append(_kv(key, "again"))
            for n in range(rnd.choice([0, 0, 1, 3])):
                event = span.events.add(
                    name=rnd.choice(_EVENTS), time_unix_nano=span.start_time_unix_nano + n
                )
                event.attributes.extend([_kv("exception.type", "ValueError"), _kv("n", n)])
            if rnd.random() < 0.1:
                span.status.CopyFrom(Status(code=Status.STATUS_CODE_ERROR, message="boom"))
    return req.SerializeToString()


@contextmanager
def _side_batches() -> Iterator[None]:
    dt.hand_over_llm_spans(True)
    try:
        yield
    finally:
        dt.hand_over_llm_spans(False)


def _decode(body: bytes) -> decoded.DecodedRequest:
    return decode_request(Signal.SPANS, body, Encoding.PROTOBUF, DecodeLimits())


@pytest.mark.parametrize("share", [0.0, 0.1, 0.5, 1.0])
def test_side_batch_is_the_marked_rows_llm_columns(share: float) -> None:
    rnd = random.Random(int(share * 10) + 1)
    with _side_batches():
        for _ in range(15):
            body = _request(rnd, share, rnd.randrange(1, 4))
            got = _decode(body)
            python = dt.decode_traces(
                ExportTraceServiceRequest.FromString(body), AttributeRenderer(DecodeLimits())
            )
            if not got.batches:
                assert got.batches.llm_spans is None
                continue
            batch = got.batches[0][1]
            ref = dt.llm_spans_of(batch, hinted_rows(batch))
            if ref is None:
                assert got.batches.llm_spans is None and python.batches.llm_spans is None
                continue
            side = dt.join_llm_spans([got.batches.llm_spans])
            assert side is not None and side.equals(pa.Table.from_batches([ref]))
            # The block holds the buffers (each padded to 8 bytes) and a header.
            size = got.batches.llm_spans_nbytes
            assert side.get_total_buffer_size() <= size <= side.get_total_buffer_size() + 1024
            assert python.batches.llm_spans.equals(ref)
            keys = {k for pairs in side.column("SpanAttributes").to_pylist() for k, _ in pairs}
            assert keys and all(
                k.startswith(dt.LLM_PREFIXES) or k in dt.LLM_SIDE_KEYS for k in keys
            )
    # Off (the plugin not running): no side batch, and the batch itself is the same.
    plain = _decode(body)
    assert plain.batches.llm_spans is None
    assert plain.batches[0][1].equals(got.batches[0][1])


def test_joined_side_batches_are_their_concatenation() -> None:
    rnd = random.Random(5)
    with _side_batches():
        sides = [_decode(_request(rnd, 0.3)).batches.llm_spans for _ in range(30)]
    sides = [s for s in sides if s is not None]
    # The Python walk's record batches join the C decoder's capsules.
    refs = [dt.join_llm_spans([s]).to_batches()[0] for s in sides]
    joined = dt.join_llm_spans(sides + refs[:2])
    assert joined.num_rows == sum(r.num_rows for r in refs + refs[:2])
    assert joined.equals(pa.Table.from_batches(refs + refs[:2]).combine_chunks())
    again = dt.join_llm_spans(sides)  # the capsules are left as they were
    assert again.combine_chunks().equals(pa.Table.from_batches(refs).combine_chunks())
    assert dt.join_llm_spans([]) is None
    with pytest.raises(TypeError):
        _wire.join_llm_spans([refs[0].__arrow_c_array__()[1]])


def test_side_keys_hold_every_key_recognition_reads() -> None:
    """What recognition reads is in the side batch: the fields' keys and the markers by prefix
    or name, the per-message keys by prefix; and the C decoder keeps exactly those names."""
    read = {k for keys in FIELDS.values() for k in keys} | MARKER_KEYS
    assert all(k.startswith(dt.LLM_PREFIXES) or k in dt.LLM_SIDE_KEYS for k in read)
    assert all(p.startswith(dt.LLM_PREFIXES) for p in MESSAGE_PREFIXES)
    assert read >= dt.LLM_SIDE_KEYS
    req = ExportTraceServiceRequest()
    span = (
        req.resource_spans.add().scope_spans.add().spans.add(trace_id=b"\1" * 16, span_id=b"\2" * 8)
    )
    names = [*sorted(dt.LLM_SIDE_KEYS), "gen_ai.system", "user.idx", "session", "x.user.id"]
    span.attributes.extend(_kv(k, "v") for k in names)
    with _side_batches():
        side = dt.join_llm_spans([_decode(req.SerializeToString()).batches.llm_spans])
    kept = [k for k, _ in side.column("SpanAttributes")[0].as_py()]
    assert kept == [*sorted(dt.LLM_SIDE_KEYS), "gen_ai.system"]


@pytest.mark.parametrize("policy", ["mask", "drop", "keep"])
def test_calls_from_side_batches_equal_those_of_the_batches(policy: str) -> None:
    rnd = random.Random(9)
    with _side_batches():
        requests = [_decode(_request(rnd, 0.4, 3)) for _ in range(20)]
    content = ContentPolicy(policy)
    side = dt.join_llm_spans([d.batches.llm_spans for d in requests if d.batches.llm_spans])
    found = recognise(SpanColumns.of_spans(side), content)
    batches = [d.batches[0][1] for d in requests if d.batches]
    picked = pick_spans([(b.replace_schema_metadata(None), None) for b in batches])
    want = recognise(SpanColumns.of_spans(picked.columns), content)
    assert found is not None and want is not None and found.calls.num_rows > 10
    assert found.calls.equals(want.calls)
    assert found.messages.equals(want.messages)
    assert np.array_equal(
        side.column("SpanId").take(pa.array(found.rows)).to_numpy(zero_copy_only=False),
        picked.columns.column("SpanId").take(pa.array(want.rows)).to_numpy(zero_copy_only=False),
    )


def test_blocks_of_calls_in_message_order_are_those_found_by_key(monkeypatch) -> None:
    """``pack`` skips the key lookup when the messages are the calls' rows in order; each
    call's block is the one the lookup finds (small blocks, so that there are several)."""
    from opstrata.plugins.llmops import blocks

    monkeypatch.setattr(blocks, "BLOCK_ROWS", 7)
    rnd = random.Random(4)
    with _side_batches():
        requests = [_decode(_request(rnd, 1.0, 2)) for _ in range(4)]
    side = dt.join_llm_spans([d.batches.llm_spans for d in requests if d.batches.llm_spans])
    found = recognise(SpanColumns.of_spans(side), ContentPolicy("keep"))
    calls, messages = found.calls, found.messages
    assert messages.num_rows == calls.num_rows > 20
    assert blocks._same_calls(messages, calls)
    _, fast = blocks.pack(messages, calls, 5)
    monkeypatch.setattr(blocks, "_same_calls", lambda *_: False)
    _, by_key = blocks.pack(messages, calls, 5)
    assert fast.equals(by_key) and len(set(fast.to_pylist())) > 3
    twice = pa.concat_tables([calls, calls.slice(0, 1)])  # a span sent twice: by key
    assert not blocks._same_calls(pa.concat_tables([messages, messages.slice(0, 1)]), twice)


def test_decode_workers_hand_the_side_batch_over_as_a_record_batch(tmp_path) -> None:
    """With ``decode_workers``, a worker process is told per request whether the server's
    process wants side batches (its own flag is never set), and hands the side batch back as a
    record batch (the C decoder's capsule does not pickle)."""
    import asyncio

    from opstrata.ingest import IngestPipeline
    from opstrata.selfmetrics import SelfMetrics
    from opstrata.settings import IngestSettings
    from opstrata.storage.duckdb_store import DuckDBStore

    rnd = random.Random(21)
    bodies = [_request(rnd, 0.5, 3) for _ in range(4)]
    with _side_batches():
        local = [_decode(b).batches.llm_spans for b in bodies]
    assert all(s is not None for s in local)

    async def run() -> tuple[list[decoded.DecodedRequest], list[decoded.DecodedRequest]]:
        store = DuckDBStore(tmp_path)
        store.start()
        pipeline = IngestPipeline(
            IngestSettings(decode_workers=1), store, SelfMetrics(), log_dir=tmp_path / "log"
        )
        pipeline.start()
        try:
            with _side_batches():
                wanted = [await pipeline.ingest(Signal.SPANS, b, Encoding.PROTOBUF) for b in bodies]
            unwanted = [await pipeline.ingest(Signal.SPANS, b, Encoding.PROTOBUF) for b in bodies]
            return wanted, unwanted
        finally:
            await pipeline.shutdown(timeout=5)
            store.shutdown()

    wanted, unwanted = asyncio.run(run())
    for got, side in zip(wanted, local, strict=True):
        batch = got.batches.llm_spans
        assert isinstance(batch, pa.RecordBatch)
        assert got.batches.llm_spans_nbytes == batch.get_total_buffer_size()
        assert pa.Table.from_batches([batch]).equals(dt.join_llm_spans([side]))
    assert all(got.batches.llm_spans is None for got in unwanted)
