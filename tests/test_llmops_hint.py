"""The shortcuts of the LLMOps ingest path against the long way round: the decoder's LLM-span hint
against scanning every attribute key, and the byte-level pre-filter of masking against running
every pattern over every text."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from opstrata.otlp.decode_traces import LLM_ROWS
from opstrata.otlp.decoder import Encoding, decode_request
from opstrata.otlp.limits import DecodeLimits
from opstrata.plugins.llmops import privacy, textscan
from opstrata.plugins.llmops.pick import hinted_rows, pick_spans
from opstrata.plugins.llmops.privacy import ContentPolicy
from opstrata.plugins.llmops.recognise import SpanColumns, recognise
from opstrata.schema import Signal

_CONVENTIONS: list[dict[str, object]] = [
    {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
     "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 12,
     "gen_ai.usage.output_tokens": 3,
     "gen_ai.input.messages": '[{"role":"user","parts":[{"type":"text","content":"a@b.co"}]}]'},
    {"openinference.span.kind": "LLM", "llm.model_name": "gpt-4o-mini",
     "llm.token_count.prompt": 5, "llm.token_count.completion": 7},
    {"llm.request.type": "chat", "gen_ai.system": "anthropic", "llm.usage.total_tokens": 9,
     "gen_ai.response.model": "claude-3", "traceloop.entity.name": "x"},
    {"gen_ai.tool.name": "search"},  # marked, but not a call
    {"llm.something": "else"},  # marked, but no marker key
    {"http.route": "/x", "llmx.y": "z", "gen_ai": "not a prefix"},
]  # fmt: skip


def _request(rnd: random.Random, share: float, spans: int) -> bytes:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key="service.name", value=AnyValue(string_value="svc"))
    ss = rs.scope_spans.add()
    for _ in range(spans):
        span = ss.spans.add(trace_id=rnd.randbytes(16), span_id=rnd.randbytes(8))
        span.start_time_unix_nano = 1_760_000_000_000_000_000 + rnd.randrange(10**9)
        span.end_time_unix_nano = span.start_time_unix_nano + rnd.randrange(10**8)
        attrs = rnd.choice(_CONVENTIONS) if rnd.random() < share else _CONVENTIONS[-1]
        for key, value in attrs.items():
            kind = "int_value" if isinstance(value, int) else "string_value"
            span.attributes.append(KeyValue(key=key, value=AnyValue(**{kind: value})))
        if rnd.random() < 0.1:
            span.status.CopyFrom(Status(code=Status.STATUS_CODE_ERROR, message="boom"))
    return req.SerializeToString()


@pytest.mark.parametrize("share", [0.0, 0.05, 0.5, 1.0])
def test_decoder_hint_finds_the_calls_a_key_scan_finds(share: float) -> None:
    rnd = random.Random(int(share * 100))
    batches = [
        decode_request(
            Signal.SPANS, _request(rnd, share, rnd.randrange(1, 60)), Encoding.PROTOBUF,
            DecodeLimits(),
        ).batches[0][1]
        for _ in range(12)
    ]  # fmt: skip
    hinted = [(b, hinted_rows(b)) for b in batches]
    assert all(rows is not None for _, rows in hinted), "the decoder marks every batch"
    plain = [b.replace_schema_metadata(None) for b in batches]
    scanned = [(b, hinted_rows(b)) for b in plain]
    assert all(rows is None for _, rows in scanned)
    policy = ContentPolicy("mask")
    picked, by_scan = pick_spans(hinted), pick_spans(scanned)
    if share == 0.0:
        assert picked is None and by_scan is None
        assert all(b.schema.metadata[LLM_ROWS] == b"" for b in batches)
        return
    assert picked is not None and by_scan is not None

    # The hint may mark more rows (any key of the conventions' prefixes), never fewer.
    def rows_of(picked, group: list[pa.RecordBatch]) -> set[tuple[int, int]]:
        position = {id(b): i for i, b in enumerate(group)}
        return {
            (position[id(picked.batches[b])], int(r))
            for b, r in zip(picked.batch, picked.row, strict=True)
        }

    assert rows_of(by_scan, plain) <= rows_of(picked, batches)
    found = recognise(SpanColumns.of_spans(picked.columns), policy)
    want = recognise(SpanColumns.of_spans(by_scan.columns), policy)
    assert found is not None and want is not None
    assert found.calls.num_rows > 0
    assert found.calls.equals(want.calls)
    assert found.messages.equals(want.messages)


# Every pattern over every text that one regex flags: masking before the byte-level pre-filter.
_ATTENTION = r"@|sk-|AKIA|AIza|gh[pousr]_|xox|hf_|(?i:bearer)|\d(?:[ ().+-]{0,3}\d){6}"


def _reference(policy: ContentPolicy, texts: pa.Array) -> tuple[list, list]:
    def flags(values: pa.Array, pattern: str) -> np.ndarray:
        found = pc.fill_null(pc.match_substring_regex(values, pattern), False)
        return found.to_numpy(zero_copy_only=False)

    exact = pc.fill_null(pc.greater(pc.utf8_length(texts), policy.max_chars), False)
    exact = exact.to_numpy(zero_copy_only=False).copy()
    attention = (
        pc.is_valid(texts) if policy._re2_extra else pc.match_substring_regex(texts, _ATTENTION)
    )
    attention = pc.fill_null(attention, False).to_numpy(zero_copy_only=False)
    masked = pc.replace_substring_regex(texts, privacy._RE2_API_KEY, r"\1[API_KEY]")
    masked = pc.replace_substring_regex(masked, privacy._RE2_EMAIL, "[EMAIL]")
    for pattern in policy._re2_extra:
        masked = pc.replace_substring_regex(masked, pattern, "[MASKED]")
    masked = pc.if_else(pa.array(attention), masked, texts)
    exact |= attention & (flags(texts, privacy._RE2_DIGITS) | flags(masked, privacy._RE2_BROKEN))
    return masked.to_pylist(), exact.tolist()


_BITS = [
    "hello", "jane@example.com", "a@b", "@", "sk-" + "a" * 20, "sk-short", "AKIA" + "A" * 16,
    "Bearer abcdefghijklmnopqrstuvwxyz", "bearer\\n" + "x" * 20, "ghp_" + "a" * 32, "gh",
    "xoxb-1234567890ab", "hf_" + "b" * 31, "123", "1234567", "12 34 56 7", "+1 (555) 123-4567",
    "4111 1111 1111 1111", "2024-01-02", "\\n", "\\\\", "\\u00e9", "é", "日本", "🙂", " ",
    "\\nbob@example.com", "\\\\nbob@example.com", "x\\[EMAIL]", "[EMAIL]", "9" * 20, "(", "-",
]  # fmt: skip


@pytest.mark.parametrize(("extra", "max_chars"), [((), 8192), ((), 40), ((r"secret\d+",), 8192)])
def test_masking_prefilter_changes_nothing(extra: tuple[str, ...], max_chars: int) -> None:
    rnd = random.Random(len(extra) * 1000 + max_chars)
    policy = ContentPolicy("mask", extra, max_chars)
    for _ in range(150):
        values = [
            None if rnd.random() < 0.1
            else "".join(rnd.choice(_BITS) + rnd.choice(["", " ", "\\t"])
                         for _ in range(rnd.randrange(0, 12)))
            for _ in range(rnd.randrange(0, 40))
        ]  # fmt: skip
        texts = pa.array(values, pa.string())
        if len(texts) > 2 and rnd.random() < 0.3:
            texts = texts.slice(1, len(texts) - 2)  # an offset into shared buffers
        flags, reference = textscan.scan(texts), textscan.scan_numpy(texts)
        for name in ("at", "keys", "digits"):
            assert np.array_equal(getattr(flags, name), getattr(reference, name)), name
        masked, exact = policy.apply_json(texts)
        want_masked, want_exact = _reference(policy, texts)
        assert masked.to_pylist() == want_masked
        assert np.asarray(exact).tolist() == want_exact


def test_byte_scan_in_pieces_flags_what_a_scan_of_the_whole_column_flags(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The masking pre-filter's numpy scan searches the column's bytes a piece at a time: key
    prefixes and digit runs that cross a piece's end, and digit runs that cross from one text
    into the next, are flagged as when the column is searched as one piece (and by the text's
    own digits only); and the C scan flags the same texts."""
    rnd = random.Random(5)
    alphabet = "ab-_AKIzskhfgxoreB 0123456789@().+\\["
    extras = ["sk-abc", "AKIA", "AIza", "ghp_", "xoxb-", "hf_", "Bearer", "bEaReR", "1234567",
              "12 34 56 7", "123", "4567"]  # fmt: skip
    texts = []
    for _ in range(400):
        if rnd.random() < 0.05:
            texts.append(None)
            continue
        text = "".join(rnd.choice(alphabet) for _ in range(rnd.randrange(0, 40)))
        texts.append(text + rnd.choice(extras) if rnd.random() < 0.4 else text)
    column = pa.array(texts, pa.string())
    whole = [textscan.scan(column.slice(1)), textscan.scan(column)]
    for piece in (5, 16, 61):
        monkeypatch.setattr(textscan, "_PIECE", piece)
        for expected, texts_ in zip(whole, (column.slice(1), column), strict=True):
            got = textscan.scan_numpy(texts_)
            for name in ("at", "keys", "digits"):
                assert np.array_equal(getattr(got, name), getattr(expected, name)), (piece, name)
    # Digits split across two texts are two short runs, not one of 7.
    for scan in (textscan.scan, textscan.scan_numpy):
        split = scan(pa.array(["abc 1234", "567 def", "x 1234567"]))
        assert split.digits.tolist() == [2]
        # A key prefix found across the end of its text, as the block search does.
        assert scan(pa.array(["a s", "k-x", "gh", "p_", "AKI", "A"])).keys.tolist() == [0, 2, 4]
    assert len(whole[1].keys) and len(whole[1].digits) and len(whole[1].at)


def test_c_scan_flags_what_the_numpy_scan_flags_wherever_blocks_and_texts_end() -> None:
    """The C scan reads 16 bytes at a time and looks for rarer bytes of each key prefix ("-",
    "_", "A", "b"), then checks the prefix before them: texts of every length up to a few
    blocks, at every alignment (slices of one column), with prefixes, digits and "@" placed
    across block ends, text ends and the column's end, give the numpy scan's rows; and the C
    search for a backslash before "[" gives the numpy one's."""
    rnd = random.Random(17)
    pieces = ["sk-", "xoxb-", "xox", "hf_", "ghp_", "gh", "AKIA", "AIza", "bearer", "BEARER"]
    pieces += ["@", "1234567", "12 34", "-", "_", "A", "b", "s", "k", "x", "é", " ", "\\", "["]
    for _ in range(60):
        # One long text cut at random places: prefixes, digit runs and "@" straddle text ends.
        whole = ""
        while len(whole) < rnd.randrange(0, 2000):
            whole += rnd.choice(pieces) if rnd.random() < 0.4 else rnd.choice("aeiou yz.,")
        cuts = sorted(rnd.sample(range(len(whole) + 1), min(len(whole) + 1, rnd.randrange(1, 60))))
        texts = [whole[a:b] for a, b in itertools.pairwise([0, *cuts, len(whole)])]
        texts = [None if rnd.random() < 0.05 else t for t in texts]
        column = pa.array(texts, pa.string())
        for start in range(min(len(column), 17)):
            part = column.slice(start)
            got, want = textscan.scan(part), textscan.scan_numpy(part)
            for name in ("at", "keys", "digits"):
                assert np.array_equal(getattr(got, name), getattr(want, name)), (texts, name)
            assert np.array_equal(
                textscan.escaped_brackets(part), textscan.escaped_brackets_numpy(part)
            ), texts


def test_a_failing_batch_does_not_cost_the_others_of_its_hand_over(tmp_path) -> None:
    """``consume_many`` gets every waiting batch at once; one that raises (here a corrupt LLM
    mark) is reported, and the calls of the batches after it in the hand-over are still stored
    (the fan-out moves the consumer's offset past all of them)."""
    import asyncio
    from pathlib import Path

    from opstrata.consumers import CommittedBatch, ConsumerContext
    from opstrata.plugins.llmops.config import LLMOpsConfig
    from opstrata.plugins.llmops.consumer import LLMCalls
    from opstrata.storage.duckdb_store import DuckDBStore

    rnd = random.Random(11)
    decoded = [
        decode_request(Signal.SPANS, _request(rnd, 1.0, 50), Encoding.PROTOBUF, DecodeLimits())
        for _ in range(4)
    ]
    store = DuckDBStore(Path(tmp_path))
    store.start()
    try:
        seqs = [asyncio.run(store.write(d.batches)) for d in decoded]
        batches = [CommittedBatch.of(s, d.batches) for s, d in zip(seqs, decoded, strict=True)]
        table, spans = decoded[1].batches[0]
        corrupt = spans.replace_schema_metadata({LLM_ROWS: b"abc"})  # not whole int32s
        batches[1] = CommittedBatch.of(batches[1].seq, [(table, corrupt)])
        consumer = LLMCalls(LLMOpsConfig())
        ctx = ConsumerContext("llmops", "calls", Path(tmp_path), lambda *_: None, store, {})
        consumer.start(ctx)
        with pytest.raises(ValueError):
            consumer.consume_many(batches, ctx)
        consumer.stop(ctx)
        stored = store.reader().execute("SELECT count(*) FROM llmops_calls").fetchall()[0][0]
        expected = 0
        for i in (0, 2, 3):
            rows = hinted_rows(decoded[i].batches[0][1])
            picked = pick_spans([(decoded[i].batches[0][1], rows)])
            found = recognise(SpanColumns.of_spans(picked.columns), consumer.policy)
            expected += 0 if found is None else found.calls.num_rows
        assert expected > 0
        assert stored == expected
    finally:
        store.shutdown()


_EMAIL_BITS = ["a", "Z", "0", ".", "-", "_", "%", "+", "@", "@", " ", "\\", '"', "é", "co", "x.y"]


def test_email_replacement_around_each_at_is_the_replacement_of_whole_texts() -> None:
    """RE2's e-mail replacement run on the windows around each "@" and spliced back equals it
    run over the whole texts: on texts dense in "@" and in local-part and domain bytes, where
    windows overlap, touch and hold several addresses."""
    rnd = random.Random(17)
    for _ in range(2000):
        values = [
            "".join(rnd.choice(_EMAIL_BITS) for _ in range(rnd.randrange(0, 40)))
            for _ in range(rnd.randrange(1, 20))
        ]
        texts = pa.array(values, pa.string())
        want = pc.replace_substring_regex(texts, privacy._RE2_EMAIL, "[EMAIL]")
        assert privacy._mask_emails(texts).equals(want), values
    texts = pa.array(["x@a.com@b.org", "a@b.co@c.de@e.fg", "a@.com", "é@x.com", "", "a@b"])
    assert privacy._mask_emails(texts).to_pylist() == [
        "[EMAIL]@b.org", "[EMAIL]@[EMAIL]", "a@.com", "é@x.com", "", "a@b",
    ]  # fmt: skip
    with_nulls = pa.array(["a@b.co", None, "c@d.ef"]).slice(1)  # the whole texts' way
    assert privacy._mask_emails(with_nulls).to_pylist() == [None, "[EMAIL]"]
    # Other layouts than the windows read (int32 offsets, one array) take that way too.
    large = pa.array(["a@b.co", "xx c@d.ef"], pa.large_string())
    assert privacy._mask_emails(large).to_pylist() == ["[EMAIL]", "xx [EMAIL]"]
    chunked = pa.chunked_array([["a@b.co"], ["xx c@d.ef"]])
    assert privacy._mask_emails(chunked).to_pylist() == ["[EMAIL]", "xx [EMAIL]"]
