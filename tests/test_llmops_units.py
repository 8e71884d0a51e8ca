"""LLMOps pieces checked against a plain reference: column-wise masking of message JSON against
masking each decoded message, column conversions against Python's, the rollup's sums against
the same question asked of the calls, and sketch percentiles against exact ones."""

from __future__ import annotations

import json
import math

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from opstrata.plugins.llmops import columns
from opstrata.plugins.llmops.messages import CallMessages
from opstrata.plugins.llmops.privacy import ContentPolicy
from opstrata.plugins.llmops.queries import Filters, _usage_from_calls
from opstrata.plugins.llmops.recognise import CALLS, SpanColumns, recognise
from opstrata.plugins.llmops.rollup import (
    DAY_NS,
    ROLLUP_TABLE,
    SKETCH_TABLE,
    compact,
    roll_up,
    rollup_ddl,
    sketch_ddl,
)
from opstrata.plugins.llmops.rollup_queries import sketch_percentiles, usage_rows
from opstrata.plugins.llmops.span_parts import message_table, normalise_error
from opstrata.schema import EVENT_TYPE

TEXTS = [
    "mail jane@example.com now",
    "key sk-abcdefghijklmnopqrstuvwx here",
    "\nsk-abcdefghijklmnopqrstuvwx",
    "Bearer\tabcdefghijklmnopqrstuvwxyz",
    "\nbob@x.com\tand\u00e9ve@example.org",
    "call +1 415-555-0132 or (020) 7946 0958",
    "josé@example.com",
    "card 4111 1111 1111 1111, not 4111 1111 1111 1112",
    "on 2024-01-02 at 10:30, order 123456",
    'quote "x@y.io" and back\\slash a@b.co',
    "AKIAABCDEFGHIJKLMNOP and ghp_" + "a" * 36,
    "plain text, nothing to hide",
    "x" * 9000 + " tail@example.com",
]


def _stored(policy: ContentPolicy, text_json: str) -> list[dict[str, str]]:
    """What is read back for one call whose input messages attribute is ``text_json``."""
    k = 1
    table = message_table(
        {
            "System": pa.nulls(k, pa.string()),
            "Input": pa.array([text_json], pa.string()),
            "Output": pa.nulls(k, pa.string()),
        },
        {},
        pa.array([1], pa.timestamp("ns")),
        pa.array(["t"]),
        pa.array(["s"]),
        "span",
        policy,
    )
    row = table.drop_columns(["Timestamp"]).to_pylist()[0]
    parsed = CallMessages()
    if row["Input"] is not None:
        parsed.add_json("input", row["Input"])
    out = parsed.input
    if row["Messages"]:
        out += json.loads(row["Messages"])["input"]
    return out


@pytest.mark.parametrize("mode", ["mask", "keep"])
@pytest.mark.parametrize("text", TEXTS)
def test_column_masking_stores_what_masking_each_message_stores(mode: str, text: str) -> None:
    policy = ContentPolicy(mode, ["ORD-\\d{6}"], max_chars=8192)
    attribute = json.dumps(
        [
            {"role": "system", "parts": [{"type": "text", "content": "Be terse."}]},
            {"role": "user", "parts": [{"type": "text", "content": text + " ORD-123456"}]},
        ]
    )
    reference = CallMessages()
    reference.add_json("input", attribute)
    expected = [{"role": m["role"], "content": policy.apply(m["content"])} for m in reference.input]
    assert _stored(policy, attribute) == expected


def test_conversions_match_python() -> None:
    values = ["12", " 7 ", "12.5", "13.5", "x", None, "1e3", "-4", "", "nan", "inf", "-inf", "1e30"]

    def py_int(v: str | None) -> int | None:
        if v is None:
            return None
        try:
            return int(v)
        except ValueError:
            try:
                number = round(float(v))
            except (ValueError, OverflowError):  # nan, infinities: not a count
                return None
            return number if -(2**63) < number < 2**63 else None

    assert columns.ints(pa.array(values, pa.string())).to_pylist() == [py_int(v) for v in values]
    errors = [
        "<class 'openai.BadRequestError'>", "openai.BadRequestError", "BadRequestError",
        "'x.y.Z'", "some text", "a..b", "foo.", None, " <class 'a.B'> ",
    ]  # fmt: skip
    assert columns.error_class(pa.array(errors, pa.string())).to_pylist() == [
        normalise_error(e) for e in errors
    ]


def _recognised(attributes: list[list[tuple[str, str | None]]]) -> list[dict]:
    """The calls the real recognition finds in spans with these attribute maps (in order)."""
    n = len(attributes)
    spans = pa.table(
        {
            "Timestamp": pa.array(
                [1_700_000_000_000_000_000 + 1000 * i for i in range(n)], pa.timestamp("ns")
            ),
            "TraceId": ["a" * 32] * n,
            "SpanId": [f"{i:016x}" for i in range(n)],
            "ServiceName": ["svc"] * n,
            "SpanAttributes": pa.array(attributes, pa.map_(pa.string(), pa.string())),
            "Duration": pa.array([5] * n, pa.int64()),
            "StatusCode": ["Ok"] * n,
            "StatusMessage": [""] * n,
            "Events": pa.array([[]] * n, pa.list_(EVENT_TYPE)),
        }
    )
    found = recognise(SpanColumns.of_spans(spans), ContentPolicy("full"))
    assert found is not None
    assert found.rows.tolist() == list(range(n)), "every span here is a call"
    return found.calls.to_pylist()


def test_an_empty_preferred_key_does_not_hide_another_conventions_value() -> None:
    system = ("gen_ai.system", "openai")
    calls = _recognised(
        [
            # The GenAI names written empty (unset) beside OpenInference / Traceloop values.
            [system, ("gen_ai.request.model", ""), ("llm.request.model", "gpt-4o"),
             ("gen_ai.usage.input_tokens", ""), ("llm.token_count.prompt", "12"),
             ("gen_ai.usage.output_tokens", "n/a"), ("llm.usage.completion_tokens", "7")],
            # Both empty: empty text and null counts, as before; still a call (a model key).
            [system, ("gen_ai.request.model", ""), ("llm.request.model", ""),
             ("gen_ai.usage.input_tokens", ""), ("llm.token_count.prompt", "")],
            # Both valued: the preferred key wins, as before.
            [system, ("gen_ai.request.model", "a"), ("llm.request.model", "b"),
             ("gen_ai.usage.input_tokens", "3"), ("llm.token_count.prompt", "4")],
            # A repeated key: the last value, unless it is empty.
            [system, ("gen_ai.request.model", "a"), ("gen_ai.request.model", "b")],
            [system, ("gen_ai.request.model", "a"), ("gen_ai.request.model", "")],
            # The fallback given first in the map, the empty preferred key after it.
            [system, ("llm.model_name", "resp"), ("gen_ai.response.model", ""),
             ("gen_ai.usage.total_tokens", None), ("llm.token_count.total", "30")],
        ]
    )  # fmt: skip
    got = [(c["RequestModel"], c["Model"], c["InputTokens"], c["OutputTokens"]) for c in calls]
    assert got == [
        ("gpt-4o", "gpt-4o", 12, 7),
        ("", "", None, None),
        ("a", "a", 3, None),
        ("b", "b", None, None),
        ("a", "a", None, None),
        ("", "resp", None, None),
    ]
    assert calls[5]["ResponseModel"] == "resp"
    assert calls[5]["TotalTokens"] == 30


def test_best_key_picking_matches_a_python_reference() -> None:
    """Random maps with several keys of two fields (and empty, null, non-number values) against
    the rule written plainly: among a field's keys, one with a value beats one without, then the
    better key, then the later entry."""
    rng = np.random.default_rng(7)
    model_keys = ["gen_ai.request.model", "llm.request.model"]
    input_keys = [
        "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens",
        "llm.token_count.prompt", "llm.usage.prompt_tokens",
    ]  # fmt: skip
    models = ["", None, "gpt-4o", "claude"]
    counts = ["", None, "12", "7", "x", "3.0", "nan"]

    def number(v: str | None) -> int | None:
        try:
            f = float(v)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None
        return round(f) if math.isfinite(f) else None

    def pick(entries: list[tuple[str, str | None]], keys: list[str], usable) -> str | None:
        mine = [(i, k, v) for i, (k, v) in enumerate(entries) if k in keys]
        if not mine:
            return None
        best = min(mine, key=lambda e: (not usable(e[2]), keys.index(e[1]), -e[0]))
        return best[2]

    rows, want = [], []
    for _ in range(400):
        entries: list[tuple[str, str | None]] = [("gen_ai.response.model", "r")]
        for _ in range(rng.integers(0, 4)):
            entries.append((str(rng.choice(model_keys)), models[rng.integers(len(models))]))
        for _ in range(rng.integers(0, 5)):
            entries.append((str(rng.choice(input_keys)), counts[rng.integers(len(counts))]))
        entries = [entries[i] for i in rng.permutation(len(entries))]
        rows.append(entries)
        model = pick(entries, model_keys, lambda v: bool(v))
        tokens = pick(entries, input_keys, lambda v: number(v) is not None)
        want.append((model or "", number(tokens)))
    calls = _recognised(rows)
    assert [(c["RequestModel"], c["InputTokens"]) for c in calls] == want
    assert any(w[0] == "" for w in want) and any(w[1] is None for w in want)


def _calls(rng: np.random.Generator, n: int) -> pa.Table:
    t0 = 1_760_000_000 * 10**9 // DAY_NS * DAY_NS
    times = t0 + np.sort(rng.integers(0, 3 * DAY_NS, n))
    models = np.array(["m-a", "m-b", "m-c"], dtype=object)[rng.integers(0, 3, n)]
    services = np.array(["s-1", "s-2"], dtype=object)[rng.integers(0, 2, n)]
    inp, out = rng.integers(1, 5000, n), rng.integers(1, 900, n)
    unpriced = models == "m-c"
    ttft = rng.lognormal(19, 1, n).astype(np.int64)
    data = {name: pa.nulls(n, field.type) for name, field in zip(CALLS.names, CALLS, strict=True)}
    data.update(
        Timestamp=pa.array(times, pa.timestamp("ns")),
        ServiceName=pa.array(services, pa.string()),
        Provider=pa.array(np.full(n, "openai", dtype=object), pa.string()),
        Model=pa.array(models, pa.string()),
        Operation=pa.array(np.full(n, "chat", dtype=object), pa.string()),
        InputTokens=pa.array(inp),
        OutputTokens=pa.array(out),
        TotalTokens=pa.array(inp + out),
        CostPicoUsd=pa.array(inp * 150_000 + out * 600_000, mask=unpriced),
        Duration=pa.array(rng.lognormal(21, 1.2, n).astype(np.int64)),
        Ttft=pa.array(ttft, mask=rng.random(n) < 0.3),
        IsError=pa.array(rng.random(n) < 0.05),
    )
    return pa.table(data, schema=CALLS)


def test_rollup_answers_equal_the_calls_and_sketches_are_within_five_percent() -> None:
    rng = np.random.default_rng(3)
    calls = _calls(rng, 30_000)
    con = duckdb.connect()
    con.execute(rollup_ddl())
    con.execute(sketch_ddl())
    con.register("batch", calls)
    con.execute("CREATE TABLE llmops_calls AS SELECT * FROM batch")
    for first in range(0, calls.num_rows, 7_000):  # written in parts, as the writer does
        roll_up(con, calls.slice(first, 7_000))
    for group_by, bucket in ((["model"], DAY_NS), (["service", "model"], DAY_NS // 24), ([], None)):
        pairs = [(g, {"model": "Model", "service": "ServiceName"}[g]) for g in group_by]
        from_rollup = usage_rows(con, None, None, {}, pairs, bucket, 100_000)
        from_calls = _usage_from_calls(con, Filters(), group_by, bucket, False, 100_000)
        assert from_rollup is not None
        assert [{k: (int(v) if isinstance(v, (int, float)) else v) for k, v in r.items()}
                for r in from_rollup] == [
            {k: (int(v) if isinstance(v, (int, float)) else v) for k, v in r.items()}
            for r in from_calls
        ]  # fmt: skip
    sketches = sketch_percentiles(con, None, None, {}, True, None)
    assert sketches is not None and set(sketches) == {(None, "m-a"), (None, "m-b"), (None, "m-c")}
    for (_, model), (latency, ttft) in sketches.items():
        mine = calls.filter(pa.compute.equal(calls.column("Model"), model))
        for values, got in (
            (mine.column("Duration").to_numpy() / 1e6, latency),
            (mine.column("Ttft").drop_null().to_numpy() / 1e6, ttft),
        ):
            ordered = np.sort(values)
            for q, estimate in zip((0.5, 0.95, 0.99), got, strict=True):
                exact = ordered[max(1, math.ceil(q * len(ordered))) - 1]
                assert estimate is not None
                assert abs(estimate - exact) <= 0.045 * exact, (model, q, estimate, exact)


def test_partial_rollup_rows_merge_into_one_row_per_key_with_the_same_answers() -> None:
    calls = _calls(np.random.default_rng(5), 6_000)
    con = duckdb.connect()
    con.execute(rollup_ddl())
    con.execute(sketch_ddl())
    for first in range(0, calls.num_rows, 250):  # many small writes: many partial rows per key
        roll_up(con, calls.slice(first, 250))
    pairs = [("service", "ServiceName"), ("model", "Model")]
    before = usage_rows(con, None, None, {}, pairs, DAY_NS // 24, 100_000)
    sketches = sketch_percentiles(con, None, None, {}, True, DAY_NS)
    keys = '"Grain", "Start", "ServiceName", "Provider", "Model", "Operation"'
    count = f"SELECT count(*), count(DISTINCT ({keys})) FROM {ROLLUP_TABLE}"
    rows, distinct = con.execute(count).fetchall()[0]
    assert rows > distinct
    sketch_rows = con.execute(f"SELECT count(*) FROM {SKETCH_TABLE}").fetchall()[0][0]
    # Only the hours and days from the last call's day on are merged when asked so.
    last_day = int(calls.column("Timestamp").cast(pa.int64()).to_numpy().max()) // DAY_NS * DAY_NS
    removed = compact(con, last_day)
    assert 0 < removed < rows - distinct
    removed += compact(con)
    assert removed == rows - distinct + sketch_rows - len(sketches)
    assert con.execute(count).fetchall()[0] == (distinct, distinct)
    assert con.execute(f"SELECT count(*) FROM {SKETCH_TABLE}").fetchall()[0][0] == len(sketches)
    assert usage_rows(con, None, None, {}, pairs, DAY_NS // 24, 100_000) == before
    assert sketch_percentiles(con, None, None, {}, True, DAY_NS) == sketches
    assert compact(con) == 0


def test_keyed_rollup_tables_of_an_older_release_become_appendable() -> None:
    from opstrata.plugins.llmops.store import ensure_tables

    con = duckdb.connect()
    dims = '"ServiceName" VARCHAR, "Provider" VARCHAR, "Model" VARCHAR, "Operation" VARCHAR'
    measures = ", ".join(
        f'"{m}" BIGINT'
        for m in ("Calls", "Errors", "InputTokens", "OutputTokens", "CacheReadTokens",
                  "CacheWriteTokens", "ReasoningTokens", "TotalTokens", "CostPicoUsd",
                  "UnpricedCalls", "FirstSeen", "LastSeen")
    )  # fmt: skip
    con.execute(
        f'CREATE TABLE {ROLLUP_TABLE} ("Grain" BIGINT, "Start" BIGINT, {dims}, {measures}, '
        'PRIMARY KEY ("Grain", "Start", "ServiceName", "Provider", "Model", "Operation"))'
    )
    con.execute(
        f'CREATE TABLE {SKETCH_TABLE} ("Start" BIGINT, "Model" VARCHAR, "DurationBins" BIGINT[], '
        '"TtftBins" BIGINT[], PRIMARY KEY ("Start", "Model"))'
    )
    old = _calls(np.random.default_rng(6), 500)
    con.register("old", old)
    con.execute("CREATE TABLE llmops_calls AS SELECT * FROM old")
    con.unregister("old")
    roll_up(con, old)  # the rows as the older release upserted them: one per key
    expected = usage_rows(con, None, None, {}, [("model", "Model")], DAY_NS, 1000)

    class Store:  # ensure_tables only remembers which stores it has seen
        pass

    ensure_tables(Store(), con)
    keyed = (
        "SELECT count(*) FROM duckdb_constraints() WHERE constraint_type = 'PRIMARY KEY' "
        f"AND table_name IN ('{ROLLUP_TABLE}', '{SKETCH_TABLE}')"
    )
    assert con.execute(keyed).fetchall()[0][0] == 0
    roll_up(con, old)  # a second partial row per key is accepted now
    doubled = usage_rows(con, None, None, {}, [("model", "Model")], DAY_NS, 1000)
    assert doubled is not None and expected is not None
    assert [r["calls"] for r in doubled] == [2 * r["calls"] for r in expected]


def test_metric_histogram_percentiles_interpolate_within_buckets() -> None:
    from opstrata.plugins.llmops.metrics import _histogram_percentiles

    bounds = np.array([0.5, 1.0, 2.0, 4.0])  # seconds, as gen_ai.client.operation.duration
    assert _histogram_percentiles(bounds, np.array([0, 0, 10, 0, 0])) == [1500.0, 1950.0, 1990.0]
    # The last bucket has no upper bound: its lower bound is the answer.
    assert _histogram_percentiles(bounds, np.array([0, 0, 0, 0, 4])) == [4000.0] * 3
    assert _histogram_percentiles(bounds, np.zeros(5, dtype=np.int64)) == [None] * 3


def test_message_blocks_give_back_each_calls_rows() -> None:
    """Span messages packed into blocks of ``BLOCK_ROWS`` (here three of them), stored in a
    real DuckDB table: each call notes the block that holds its rows, calls without messages
    note none, and reading a call's block gives back exactly its rows."""
    from opstrata.plugins.llmops import blocks
    from opstrata.plugins.llmops.span_parts import MESSAGES

    rng = np.random.default_rng(3)
    n = 3 * blocks.BLOCK_ROWS + 500
    trace_ids = [f"{i:032x}" for i in rng.permutation(10**6)[:n]]
    span_ids = [f"{i:016x}" for i in range(n)]
    with_messages = rng.random(n) < 0.8
    rows = np.flatnonzero(with_messages)
    messages = pa.table(
        {
            "Timestamp": pa.array(rows * 1000, pa.timestamp("ns")),
            "TraceId": [trace_ids[i] for i in rows],
            "SpanId": [span_ids[i] for i in rows],
            "Source": ["span"] * len(rows),
            "Messages": pa.nulls(len(rows), pa.string()),
            "System": pa.nulls(len(rows), pa.string()),
            "Input": [json.dumps([{"role": "user", "content": f"question {i}"}]) for i in rows],
            "Output": [f'[{{"role": "assistant", "content": "answer {i}"}}]' for i in rows],
        },
        schema=MESSAGES,
    )
    calls = pa.table({"TraceId": trace_ids, "SpanId": span_ids})
    first = 41
    packed, block_of = blocks.pack(messages, calls, first)
    count = -(-len(rows) // blocks.BLOCK_ROWS)
    assert count == 3
    assert packed.column("Block").to_pylist() == [41, 42, 43]
    assert sum(packed.column("Rows").to_pylist()) == len(rows)
    cursor = duckdb.connect()
    cursor.execute(blocks.blocks_ddl())
    cursor.execute(f"INSERT INTO {blocks.BLOCKS_TABLE} SELECT * FROM packed")
    block_of = block_of.to_pylist()
    assert [b is None for b in block_of] == (~with_messages).tolist()
    position = {int(call): k for k, call in enumerate(rows)}
    for call in rng.choice(n, 40, replace=False).tolist():
        if not with_messages[call]:
            continue
        assert block_of[call] == first + position[call] // blocks.BLOCK_ROWS
        got = blocks.read_rows(cursor, block_of[call], trace_ids[call], span_ids[call])
        assert got == [
            (
                "span",
                None,
                None,
                json.dumps([{"role": "user", "content": f"question {call}"}]),
                f'[{{"role": "assistant", "content": "answer {call}"}}]',
            )
        ]
    assert blocks.read_rows(cursor, first, "0" * 32, "0" * 16) == []


def test_long_messages_make_small_blocks_and_each_call_reads_back_its_own() -> None:
    """Blocks are bounded by their text too: opening one call never unpacks more than about
    ``BLOCK_BYTES`` of other calls' messages (a row longer than that is a block of its own)."""
    from opstrata.plugins.llmops import blocks
    from opstrata.plugins.llmops.span_parts import MESSAGES

    rng = np.random.default_rng(5)
    n = 120
    sizes = rng.integers(10_000, 300_000, n)
    sizes[7] = 3 * blocks.BLOCK_BYTES  # one message longer than a whole block
    trace_ids = [f"{i:032x}" for i in range(n)]
    span_ids = [f"{i:016x}" for i in range(n)]
    inputs = ["x" * int(size - 20) + f"{i:020d}" for i, size in enumerate(sizes)]
    messages = pa.table(
        {
            "Timestamp": pa.array(np.arange(n) * 1000, pa.timestamp("ns")),
            "TraceId": trace_ids,
            "SpanId": span_ids,
            "Source": ["span"] * n,
            "Messages": pa.nulls(n, pa.string()),
            "System": pa.nulls(n, pa.string()),
            "Input": inputs,
            "Output": pa.nulls(n, pa.string()),
        },
        schema=MESSAGES,
    )
    calls = pa.table({"TraceId": trace_ids, "SpanId": span_ids})
    packed, block_of = blocks.pack(messages, calls, 0)
    per_block = packed.column("Rows").to_pylist()
    assert sum(per_block) == n
    assert len(per_block) >= sizes.sum() // blocks.BLOCK_BYTES
    block_of = block_of.to_pylist()
    assert block_of == sorted(block_of)  # rows keep their order, blocks their numbers
    start = 0
    for block, rows in enumerate(per_block):
        text = int(sizes[start : start + rows].sum())
        assert rows == 1 or text <= blocks.BLOCK_BYTES, (block, rows, text)
        assert block_of[start : start + rows] == [block] * rows
        start += rows
    cursor = duckdb.connect()
    cursor.execute(blocks.blocks_ddl())
    cursor.execute(f"INSERT INTO {blocks.BLOCKS_TABLE} SELECT * FROM packed")
    for call in [0, 7, 8, n - 1, *rng.choice(n, 10, replace=False).tolist()]:
        got = blocks.read_rows(cursor, block_of[call], trace_ids[call], span_ids[call])
        assert got == [("span", None, None, inputs[call], None)]


def test_a_page_of_calls_chosen_from_the_rows_is_the_page_of_the_view() -> None:
    """``calls()`` picks its page from ``llmops_call_rows`` (a filter on text through the ids
    of its combinations) and joins only that page with ``llmops_dims``: the same rows, in the
    same order, as the query over the ``llmops_calls`` view, for every kind of filter and for
    the next page after a cursor."""
    from opstrata.plugins.llmops import queries
    from opstrata.plugins.llmops.dims import Dims, insert_calls
    from opstrata.plugins.llmops.store import _calls_tables

    rng = np.random.default_rng(11)
    n = 3_000
    calls = _calls(rng, n)
    # Equal times for some neighbours: the page's order then rests on the span id.
    times = 1_760_000_000 * 10**9 + np.sort(rng.integers(0, 2 * DAY_NS, n)) // 1000 * 1000
    times[1::7] = times[::7][: len(times[1::7])]
    users = np.array([f"user-{i}" for i in range(20)], dtype=object)[rng.integers(0, 20, n)]
    calls = calls.set_column(0, "Timestamp", pa.array(times, pa.timestamp("ns")))
    for name, values in (
        ("SpanId", pa.array([f"{i:016x}" for i in rng.permutation(n)])),
        ("TraceId", pa.array([f"{i % 97:032x}" for i in range(n)])),
        ("UserId", pa.array(users, pa.string())),
        ("ErrorType", pa.array(np.where(calls.column("IsError").to_numpy(), "RateLimitError", ""))),
    ):
        calls = calls.set_column(calls.schema.get_field_index(name), name, values)
    con = duckdb.connect()
    _calls_tables(con)
    dims = Dims()
    for first in range(0, n, 700):
        con.execute("BEGIN TRANSACTION")
        assigned = insert_calls(con, dims, calls.slice(first, 700))
        con.execute("COMMIT")
        dims.remember(assigned.pending)
    middle = int(np.median(times))
    cases = [
        Filters(),
        Filters(equals={"model": "m-b"}),
        Filters(equals={"user": "user-3"}),
        Filters(equals={"model": "m-a", "service": "s-1", "user": "user-7"}),
        Filters(equals={"model": "no such model"}),
        Filters(errors_only=True),
        Filters(start=middle, end=middle + DAY_NS // 2, equals={"error_type": "RateLimitError"}),
        Filters(trace_id=f"{5:032x}"),
    ]
    order = 'ORDER BY "Timestamp" DESC, "SpanId" DESC'
    for filters in cases:
        before = None
        for _ in range(3):  # three pages, each after the last row of the one before
            clauses, params = list(filters.clauses), list(filters.params)
            if before is not None:
                clauses.append('(epoch_ns("Timestamp"), "SpanId") < (?, ?)')
                params += list(before)
            where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
            view = con.execute(
                f"SELECT {queries._CALL_COLUMNS} FROM llmops_calls {where} {order} LIMIT ?",
                [*params, 40],
            )
            want = [queries._call(row) for row in queries._fetch_dicts(view)]
            got = queries.calls(con, filters, 40, before)
            assert got == want, filters.clauses
            if len(got) < 40:
                break
            before = (got[-1]["time_unix_nano"], got[-1]["span_id"])
    assert any(len(queries.calls(con, f, 40, None)) == 40 for f in cases[1:4])


def test_sketch_rows_of_a_null_model_merge_only_within_their_day() -> None:
    """Merging sketch rows keeps (day, model) apart when the model is NULL (an older or foreign
    row): NULL-model rows of two days stay two rows, each with its own counts."""
    from opstrata.plugins.llmops.rollup import SKETCH_BINS, _histograms

    starts = np.array([0, 0, DAY_NS, DAY_NS, DAY_NS], np.int64)
    models = pa.array([None, "m", None, "m", None], pa.string())
    bins = np.zeros((5, SKETCH_BINS), np.int64)
    bins[:, 0] = [1, 10, 100, 1000, 10000]
    merged = _histograms(starts, models, {"DurationBins": bins, "TtftBins": bins}).to_pylist()
    got = sorted(((r["Start"], r["Model"] or ""), r["DurationBins"][0]) for r in merged)
    assert got == [((0, ""), 1), ((0, "m"), 10), ((DAY_NS, ""), 10100), ((DAY_NS, "m"), 1000)]
