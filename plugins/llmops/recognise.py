"""From committed spans (or log records) to one normalised record per LLM call, column-wise.

The attribute maps of a whole batch are scanned once in Arrow: every key is looked up in the
set of keys any convention uses, and spans with none of the marker keys are dropped right there,
so ordinary spans cost one vectorised lookup. Fields are then filled key by key with numpy
scatters, best key last so it wins: a span carrying two conventions is one call. Only the
spans that are LLM calls reach Python, for the few fields that need parsing (JSON messages,
error class names) — their number, not the batch's, sets that cost.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from opstrata.plugins.llmops import columns as col
from opstrata.plugins.llmops.conventions import (
    CONVENTION_OF_PREFIX,
    FIELDS,
    MARKER_KEYS,
    NON_CALL_OPERATIONS,
    NUMBER_FIELDS,
    TOKEN_FIELDS,
)
from opstrata.plugins.llmops.privacy import ContentPolicy
from opstrata.plugins.llmops.span_parts import (
    MESSAGES,
    event_facts,
    indexed_messages,
    message_table,
    normalise_error,
)

__all__ = [
    "CALLS",
    "SPAN_COLUMNS",
    "Recognised",
    "SpanColumns",
    "candidate_rows",
    "candidates",
    "normalise_error",
    "recognise",
]
CALLS = pa.schema(
    [
        ("Timestamp", pa.timestamp("ns")),
        ("TraceId", pa.string()),
        ("SpanId", pa.string()),
        ("ServiceName", pa.string()),
        ("Provider", pa.string()),
        ("RequestModel", pa.string()),
        ("ResponseModel", pa.string()),
        ("Model", pa.string()),
        ("Operation", pa.string()),
        ("Source", pa.string()),
        ("Conventions", pa.string()),
        ("InputTokens", pa.int64()),
        ("OutputTokens", pa.int64()),
        ("CacheReadTokens", pa.int64()),
        ("CacheWriteTokens", pa.int64()),
        ("ReasoningTokens", pa.int64()),
        ("TotalTokens", pa.int64()),
        ("CostPicoUsd", pa.int64()),
        ("CostSource", pa.string()),
        ("Duration", pa.int64()),
        ("Ttft", pa.int64()),
        ("FinishReason", pa.string()),
        ("IsError", pa.bool_()),
        ("ErrorType", pa.string()),
        ("PromptName", pa.string()),
        ("PromptVersion", pa.string()),
        ("SessionId", pa.string()),
        ("UserId", pa.string()),
    ]
)
"""One row per LLM call (``llmops_calls``). Costs in pico-dollars; durations in ns; the cost is
NULL when the model has no price (counted as unpriced, never as 0)."""

_KEYS = sorted({k for keys in FIELDS.values() for k in keys} | MARKER_KEYS)
_KEY_ID = {k: i for i, k in enumerate(_KEYS)}
_KEY_SET = pa.array(_KEYS, pa.string())
_MARKER_SET = pa.array(sorted(MARKER_KEYS), pa.string())
_ENTRY_LISTS = pa.list_(pa.struct([("key", pa.string()), ("value", pa.string())]))
"""A map<string, string> column seen as what it is underneath (the cast copies nothing)."""
_IS_MARKER = np.zeros(len(_KEYS), dtype=bool)
_IS_MARKER[[_KEY_ID[k] for k in MARKER_KEYS]] = True
_FIELD_NAMES = list(FIELDS)
_FIELD_OF = np.full(len(_KEYS), -1, dtype=np.int64)
_PRIORITY_OF = np.zeros(len(_KEYS), dtype=np.int64)
for _index, (_field, _keys) in enumerate(FIELDS.items()):
    for _priority, _key in enumerate(_keys):
        assert _FIELD_OF[_KEY_ID[_key]] < 0, f"{_key} is in two fields"
        _FIELD_OF[_KEY_ID[_key]], _PRIORITY_OF[_KEY_ID[_key]] = _index, _priority
_FIELD_OF_ID = np.r_[-1, _FIELD_OF]
"""``_FIELD_OF`` by key id + 1, so that an unknown key (id -1) needs no mask first."""
_IS_NUMBER = np.array([name in NUMBER_FIELDS for name in _FIELD_NAMES], dtype=bool)
_BLANK_RANK = max(len(keys) for keys in FIELDS.values())
"""Added to a blank entry's priority: worse than any key with a value."""
_MESSAGE_FIELDS = ("system_instructions", "input_messages", "output_messages")
_FAMILIES = ("genai", "openinference", "traceloop", "vllm")
_CONVENTION_NAMES = pa.array(
    [",".join(f for b, f in enumerate(_FAMILIES) if bits >> b & 1) for bits in range(16)],
    pa.string(),
)
_FAMILY_BIT = np.zeros(len(_KEYS), dtype=np.int64)
_FAMILY_BITS = [1 << b for b in range(len(_FAMILIES))]
for _key, _id in _KEY_ID.items():
    for _prefix, _family in CONVENTION_OF_PREFIX:
        if _key.startswith(_prefix):
            _FAMILY_BIT[_id] = 1 << _FAMILIES.index(_family)
            break
_OPERATIONS = col.Mapping(
    {
        "completion": "text_completion",
        "embedding": "embeddings",
        "rerank": "rerank",
        "chat": "chat",
    }
)
_CALL_KINDS = pa.array(["LLM", "EMBEDDING"], pa.string())
# Kernel arguments as typed scalars made once: a bare Python value is converted on every call,
# and pyarrow's conversion tries ``import dateutil`` each time (a file-system search when it is
# not installed: ~70-150 µs per argument here, more than most kernels cost).
_EMPTY = pa.scalar("", pa.string())
_NO_TEXT = pa.scalar(None, pa.string())
_NO_INT = pa.scalar(None, pa.int64())
_SPAN = pa.scalar("span", pa.string())
_CHAT = pa.scalar("chat", pa.string())
_EMBEDDINGS = pa.scalar("embeddings", pa.string())
_EMBEDDING_KIND = pa.scalar("EMBEDDING", pa.string())
_ERROR_STATUS = pa.scalar("Error", pa.string())
_PICO_PER_USD = pa.scalar(1e12, pa.float64())
_NON_CALL = pa.array(sorted(NON_CALL_OPERATIONS), pa.string())


SPAN_COLUMNS = [
    "Timestamp", "TraceId", "SpanId", "ServiceName", "SpanAttributes", "Duration", "StatusCode",
    "StatusMessage", "Events",
]  # fmt: skip
"""The span columns recognition reads."""


@dataclass(frozen=True, slots=True)
class SpanColumns:
    """The columns recognition reads: spans' own, or log records' mapped onto them. Arrays or
    chunked arrays (a group of committed batches, one chunk each: never concatenated whole)."""

    time: pa.Array | pa.ChunkedArray
    trace_id: pa.Array | pa.ChunkedArray
    span_id: pa.Array | pa.ChunkedArray
    service: pa.Array | pa.ChunkedArray
    attributes: pa.Array | pa.ChunkedArray
    duration: pa.Array | pa.ChunkedArray | None = None
    status_code: pa.Array | pa.ChunkedArray | None = None
    status_message: pa.Array | pa.ChunkedArray | None = None
    events: pa.Array | pa.ChunkedArray | None = None

    @classmethod
    def of_spans(cls, batch: pa.RecordBatch | pa.Table) -> SpanColumns:
        """The columns of spans (those of :data:`SPAN_COLUMNS`)."""
        c = batch.column
        return cls(
            c("Timestamp"), c("TraceId"), c("SpanId"), c("ServiceName"), c("SpanAttributes"),
            c("Duration"), c("StatusCode"), c("StatusMessage"), c("Events"),
        )  # fmt: skip


def _one(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    return values


def _entries(
    attributes: pa.Array | pa.ChunkedArray,
) -> tuple[pa.ChunkedArray, pa.ChunkedArray, np.ndarray]:
    """Keys and values of every attribute map, and where each row's entries start (``n + 1``
    offsets into them); the maps' chunks are referenced (or sliced), not copied."""
    chunks = attributes.chunks if isinstance(attributes, pa.ChunkedArray) else [attributes]
    if not chunks:
        empty = pa.chunked_array([], pa.string())
        return empty, empty, np.zeros(1, dtype=np.int64)
    offsets = [c.offsets.to_numpy() for c in chunks]
    lengths = np.concatenate([np.diff(o) for o in offsets])
    owner = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=owner[1:])
    keys = pa.chunked_array([c.keys for c in chunks], pa.string())
    if len(keys) == owner[-1]:  # unsliced maps (the usual case): each chunk's entries whole
        return keys, pa.chunked_array([c.items for c in chunks], pa.string()), owner
    sliced_keys, sliced_items = [], []
    for chunk, bounds in zip(chunks, offsets, strict=True):
        start, end = int(bounds[0]), int(bounds[-1])
        sliced_keys.append(chunk.keys.slice(start, end - start))
        sliced_items.append(chunk.items.slice(start, end - start))
    return (
        pa.chunked_array(sliced_keys, pa.string()),
        pa.chunked_array(sliced_items, pa.string()),
        owner,
    )


@dataclass(frozen=True, slots=True)
class Recognised:
    """The calls found in a batch, their messages and the rows they came from."""

    calls: pa.Table
    messages: pa.Table
    rows: np.ndarray


def candidate_rows(table: pa.Table | pa.RecordBatch, attributes: str) -> np.ndarray | None:
    """Rows of ``table`` (a group of committed batches, one chunk each) whose ``attributes``
    map has a marker key — the only rows :func:`recognise` can find a call in — or ``None``.
    A fixed handful of Arrow calls over the whole group, whatever its number of batches (a
    Python step per batch cost more than the lookup itself): the maps are viewed as lists of
    entries (no copy), their keys looked up in one set, and the owners of the hits kept."""
    if table.num_rows == 0:
        return None
    lists = table.column(attributes).cast(_ENTRY_LISTS)
    hits = pc.is_in(pc.struct_field(pc.list_flatten(lists), "key"), value_set=_MARKER_SET)
    if not pc.any(hits).as_py():
        return None
    owners = pc.filter(pc.list_parent_indices(lists), hits)
    return pc.unique(owners).to_numpy()


def candidates(
    table: pa.Table, attributes: str, columns: list[str]
) -> tuple[np.ndarray, pa.Table] | None:
    """:func:`candidate_rows` and those rows' ``columns`` as one chunk (the rest of recognition
    then works on a few hundred rows instead of the group's every batch)."""
    rows = candidate_rows(table, attributes)
    if rows is None:
        return None
    at = pa.array(rows)
    # Column by column: Table.take over many chunks costs about twice the sum of its columns'.
    return rows, pa.table([_one(table.column(c).take(at)) for c in columns], names=columns)


def _best_entries(key_ids: np.ndarray, owner: np.ndarray, n: int, items: pa.Array) -> np.ndarray:
    """Per field and row, the position of the entry with the field's best key (-1: none), as a
    (fields, rows) array. Where a row has several keys of one field, a key with a value beats
    a better key without one (:func:`_blank`), then the better key wins. A field whose every
    key is blank keeps its best blank entry (as before: ``""`` or null, never a guess)."""
    fields = _FIELD_OF_ID[key_ids + 1]  # one gather over the entries (unknown keys: -1)
    positions = np.flatnonzero(fields >= 0)
    slot = fields[positions] * n + owner[positions]
    index = np.full(len(_FIELD_NAMES) * n, -1, dtype=np.int64)
    index[slot] = positions
    lost = index[slot] != positions  # entries overwritten by another of their slot
    if lost.any():  # rows with two keys of one field (two conventions): rank only those slots
        contested = np.zeros(len(index), dtype=bool)
        contested[slot[lost]] = True
        shared = np.flatnonzero(contested[slot])
        at = positions[shared]
        rank = _PRIORITY_OF[key_ids[at]] + _blank(items, at, fields[at]) * _BLANK_RANK
        # By slot, then best rank, then the later entry (a repeated key: the last one, as
        # the plain scatter above gives); the first of each slot wins. Sorted, not scattered
        # worst first: numpy does not promise which of repeated indices an assignment keeps.
        order = np.lexsort((-at, rank, slot[shared]))
        ranked = slot[shared][order]
        first = np.r_[True, ranked[1:] != ranked[:-1]]
        index[ranked[first]] = at[order][first]
    return index.reshape(len(_FIELD_NAMES), n)


def _blank(items: pa.Array, at: np.ndarray, fields: np.ndarray) -> np.ndarray:
    """Which entries ``at`` (of fields ``fields``) hold nothing usable: null or ``""`` (an
    instrumentation's unset field), or, for a number field, text that is not a finite number.
    Such an entry must not hide another convention's key with a value."""
    values = items.take(pa.array(at, pa.int64()))
    blank = pc.fill_null(pc.equal(values, _EMPTY), True).to_numpy(zero_copy_only=False)
    numbers = np.flatnonzero(_IS_NUMBER[fields] & ~blank)
    if len(numbers):
        parsed = col.floats(values.take(pa.array(numbers, pa.int64())))
        blank[numbers] = ~pc.fill_null(pc.is_finite(parsed), False).to_numpy(zero_copy_only=False)
    return blank


def _take(items: pa.Array, index: np.ndarray, names: list[str]) -> dict[str, pa.Array]:
    """The fields ``names`` (rows of ``index``) in one take; fields no row has are nulls."""
    width = index.shape[1]
    given = np.flatnonzero((index >= 0).any(axis=1))
    flat = index[given].ravel()
    values = items.take(pa.array(flat, pa.int64(), mask=flat < 0))
    out = dict.fromkeys(names, pa.nulls(width, pa.string()))
    for slot, row in enumerate(given):
        out[names[row]] = values.slice(slot * width, width)
    return out


def _template_names(templates: pa.Array) -> pa.Array:
    """``template:<8 hex of SHA-1>`` per template text: hashed once per distinct text."""
    encoded = pc.dictionary_encode(templates)
    names = [
        "template:" + hashlib.sha1(t.encode()).hexdigest()[:8]
        for t in encoded.dictionary.to_pylist()
    ]
    return pa.array(names, pa.string()).take(encoded.indices)


def recognise(
    cols: SpanColumns, policy: ContentPolicy, source: str = "span", with_calls: bool = True
) -> Recognised | None:
    """The LLM calls among the rows of ``cols``; ``None`` when there are none. One key lookup
    over every attribute of every row; everything after it touches the marked rows only."""
    if len(cols.attributes) == 0:
        return None
    all_keys, all_items, starts = _entries(cols.attributes)
    all_ids = pc.index_in(all_keys, value_set=_KEY_SET).fill_null(-1).to_numpy()
    known = np.flatnonzero(all_ids >= 0)
    marked = known[_IS_MARKER[all_ids[known]]]
    if len(marked) == 0:  # the common case: a group without LLM spans ends here
        return None
    # Candidate rows (from here on numbered 0..n-1) and their entries, found from the few
    # marked entries: nothing more is computed per entry of the whole group.
    # ``marked`` is sorted, so are its rows: their distinct values without np.unique's sort.
    owners = np.searchsorted(starts, marked, side="right") - 1
    cand = owners[np.r_[True, owners[1:] != owners[:-1]]]
    n = len(cand)
    counts = starts[cand + 1] - starts[cand]
    owner = np.repeat(np.arange(n), counts)
    first = np.repeat(starts[cand] - np.r_[0, np.cumsum(counts)[:-1]], counts)
    mine = first + np.arange(len(owner))
    if len(mine) == len(all_ids):  # every row is a candidate (an LLM-only service)
        keys, items = _one(all_keys), _one(all_items)
    else:
        at = pa.array(mine)
        keys, items = _one(all_keys.take(at)), _one(all_items.take(at))
    key_ids = all_ids[mine]
    known = key_ids >= 0
    families = np.zeros(n, dtype=np.int64)
    bits, known_owner = _FAMILY_BIT[key_ids[known]], owner[known]
    for bit in _FAMILY_BITS:  # a scatter per family: ``np.bitwise_or.at`` costs ~1 µs an entry
        families[known_owner[(bits & bit) != 0]] |= bit
    best = _best_entries(key_ids, owner, n, items)

    # Which rows are calls, from the few fields that decide it.
    f = _take(items, best, _FIELD_NAMES)
    has_model = pc.or_(pc.is_valid(f["request_model"]), pc.is_valid(f["response_model"]))
    tokens = {name: col.ints(f[name]) for name in TOKEN_FIELDS}
    has_tokens = pc.or_(pc.is_valid(tokens["input_tokens"]), pc.is_valid(tokens["output_tokens"]))
    oi_llm = pc.is_in(f["oi_kind"], value_set=_CALL_KINDS)
    oi_ok = pc.or_(oi_llm, pc.is_null(f["oi_kind"]))
    op_ok = pc.invert(pc.is_in(f["operation"], value_set=_NON_CALL))
    # An OpenInference LLM span is a call even when it failed before the model was known.
    is_call = pc.and_(pc.and_(pc.or_(pc.or_(has_model, has_tokens), oi_llm), oi_ok), op_ok)
    is_call = is_call.to_numpy(zero_copy_only=False)
    if not is_call.any():
        return None
    if not is_call.all():  # agent and tool spans among the candidates
        keep = pa.array(is_call)
        f = {name: values.filter(keep) for name, values in f.items()}
        tokens = {name: values.filter(keep) for name, values in tokens.items()}
    rows = cand[is_call]  # rows of ``cols``
    k = len(rows)
    # Every row a call (the decoder's marks leave only candidates, and most are calls): the
    # columns as they are, not taken (a take costs ~30-70 µs a call here whatever its size).
    every = k == len(cols.attributes)
    at = pa.array(rows)

    def take(values: pa.Array | pa.ChunkedArray) -> pa.Array:
        return _one(values) if every else _one(values.take(at))

    times = pc.cast(take(cols.time), pa.int64())
    trace_ids, span_ids = take(cols.trace_id), take(cols.span_id)

    inp, out = tokens["input_tokens"], tokens["output_tokens"]
    either = pc.or_(pc.is_valid(inp), pc.is_valid(out))
    total = pc.if_else(either, pc.add(pc.fill_null(inp, 0), pc.fill_null(out, 0)), _NO_INT)
    total = pc.coalesce(pc.max_element_wise(total, tokens["total_tokens"]), total)

    provider = col.text(pc.utf8_lower(f["provider"]))
    # OpenInference has the requested model only in the invocation parameters.
    request_model = col.text(
        pc.coalesce(f["request_model"], col.model_of_invocation(f["oi_invocation"]))
    )
    response_model = col.text(f["response_model"])
    model = pc.if_else(pc.equal(response_model, _EMPTY), request_model, response_model)
    operation = col.text(col.mapped(f["operation"], _OPERATIONS))
    embedding = pc.fill_null(pc.equal(f["oi_kind"], _EMBEDDING_KIND), False)
    operation = pc.if_else(
        pc.equal(operation, _EMPTY), pc.if_else(embedding, _EMBEDDINGS, _CHAT), operation
    )

    # A cost the span carries (OpenInference llm.cost.*), in pico-dollars.
    carried = pc.coalesce(
        col.floats(f["cost"]), pc.add(col.floats(f["cost_input"]), col.floats(f["cost_output"]))
    )
    cost = pc.cast(pc.round(pc.multiply(carried, _PICO_PER_USD)), pa.int64(), safe=False)

    duration = (
        take(cols.duration).to_numpy(zero_copy_only=False).astype(np.int64)
        if cols.duration is not None
        else np.zeros(k, dtype=np.int64)
    )
    e2e = col.floats(f["e2e_seconds"]).to_numpy(zero_copy_only=False)
    duration = np.where((duration <= 0) & ~np.isnan(e2e), np.round(e2e * 1e9), duration)
    ttft = col.floats(f["ttft_seconds"]).to_numpy(zero_copy_only=False)
    ttft_ns = np.where(np.isnan(ttft), -1, np.round(ttft * 1e9)).astype(np.int64)
    events = event_facts(take(cols.events) if cols.events is not None else None, k)
    from_events = (ttft_ns < 0) & (events.first_token >= 0)
    start_ns = times.to_numpy(zero_copy_only=False)
    ttft_ns[from_events] = np.maximum(events.first_token - start_ns, 0)[from_events]

    error_type = col.error_class(f["error_type"])
    no_type = pc.equal(error_type, _EMPTY)
    error_type = pc.if_else(
        pc.and_(no_type, pa.array(events.has_exception)), events.exception_type, error_type
    )
    is_error = pc.or_(pc.not_equal(error_type, _EMPTY), pa.array(events.has_exception))
    if cols.status_code is not None:
        is_error = pc.or_(
            is_error,
            pc.fill_null(pc.equal(take(cols.status_code), _ERROR_STATUS), False),
        )
        unnamed = pc.and_(is_error, pc.equal(error_type, _EMPTY))
        if pc.any(unnamed).as_py():
            by_status = col.status_error_class(take(cols.status_message))
            error_type = pc.if_else(unnamed, by_status, error_type)

    prompt_name = f["prompt_name"]
    unnamed = pc.and_(pc.is_null(prompt_name), pc.is_valid(f["prompt_template"]))
    if pc.any(unnamed).as_py():  # a template without a name is named after its text
        prompt_name = pc.coalesce(prompt_name, _template_names(f["prompt_template"]))

    messages = None
    if policy.keeps_content:
        slow = events.message_events
        call_of = np.full(n, -1, dtype=np.int64)
        call_of[is_call] = np.arange(k)
        indexed_messages(call_of[owner], keys, items, key_ids < 0, slow)
        raw = {
            "System": f["system_instructions"],
            "Input": f["input_messages"],
            "Output": f["output_messages"],
        }
        messages = message_table(raw, slow, pa.array(start_ns, pa.timestamp("ns")),
                                 trace_ids, span_ids, source, policy)  # fmt: skip

    def opt(values: np.ndarray) -> pa.Array:
        return pa.array(values, pa.int64(), mask=values < 0)

    calls = pa.table(
        {
            "Timestamp": pa.array(start_ns, pa.timestamp("ns")),
            "TraceId": trace_ids,
            "SpanId": span_ids,
            "ServiceName": take(cols.service),
            "Provider": provider,
            "RequestModel": request_model,
            "ResponseModel": response_model,
            "Model": model,
            "Operation": operation,
            "Source": pa.repeat(pa.scalar(source, pa.string()), k),  # not per call
            "Conventions": _CONVENTION_NAMES.take(pa.array(families[is_call])),
            "InputTokens": inp,
            "OutputTokens": out,
            "CacheReadTokens": tokens["cache_read_tokens"],
            "CacheWriteTokens": tokens["cache_write_tokens"],
            "ReasoningTokens": tokens["reasoning_tokens"],
            "TotalTokens": total,
            "CostPicoUsd": cost,
            "CostSource": pc.if_else(pc.is_valid(carried), _SPAN, _NO_TEXT),
            "Duration": pa.array(duration.astype(np.int64), pa.int64()),
            "Ttft": opt(ttft_ns),
            "FinishReason": col.finish_reasons(f["finish_reasons"], f["output_messages"]),
            "IsError": is_error,
            "ErrorType": error_type,
            "PromptName": col.text(prompt_name),
            "PromptVersion": col.text(f["prompt_version"]),
            "SessionId": col.text(f["session_id"]),
            "UserId": col.text(f["user_id"]),
        },
        schema=CALLS,
    )  # fmt: skip
    if messages is None:
        messages = MESSAGES.empty_table()
    if not with_calls:
        calls = calls.slice(0, 0)
    return Recognised(calls, messages, rows)
