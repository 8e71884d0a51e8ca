"""From committed spans (or log records) to one normalised record per LLM call, column-wise.

The attribute maps of a whole batch are scanned once in Arrow: every key is looked up in the
set of keys any convention uses, and spans with none of the marker keys are dropped right there,
so ordinary spans cost one vectorised lookup. Fields are then filled key by key with numpy
scatters, best key last so it wins: a span carrying two conventions is one call. Only the
spans that are LLM calls reach Python, for the few fields that need parsing (JSON messages,
error class names) — their number, not the batch's, sets that cost.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from opstrata.plugins.llmops.conventions import (
    CONVENTION_OF_PREFIX,
    FIELDS,
    MARKER_KEYS,
    NON_CALL_OPERATIONS,
)
from opstrata.plugins.llmops.messages import CallMessages
from opstrata.plugins.llmops.privacy import ContentPolicy
from opstrata.plugins.llmops.span_parts import (
    message_table,
    normalise_error,
    read_events,
    read_messages,
)

__all__ = ["CALLS", "Recognised", "SpanColumns", "candidate_rows", "normalise_error", "recognise"]

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
_IS_MARKER = np.zeros(len(_KEYS), dtype=bool)
_IS_MARKER[[_KEY_ID[k] for k in MARKER_KEYS]] = True
_FIELD_NAMES = list(FIELDS)
_FIELD_OF = np.full(len(_KEYS), -1, dtype=np.int64)
_PRIORITY_OF = np.zeros(len(_KEYS), dtype=np.int64)
for _index, (_field, _keys) in enumerate(FIELDS.items()):
    for _priority, _key in enumerate(_keys):
        assert _FIELD_OF[_KEY_ID[_key]] < 0, f"{_key} is in two fields"
        _FIELD_OF[_KEY_ID[_key]], _PRIORITY_OF[_KEY_ID[_key]] = _index, _priority
_MESSAGE_FIELDS = ("system_instructions", "input_messages", "output_messages")
_FAMILIES = ("genai", "openinference", "traceloop", "vllm")
_CONVENTION_NAMES = np.array(
    [",".join(f for b, f in enumerate(_FAMILIES) if bits >> b & 1) for bits in range(16)],
    dtype=object,
)
_FAMILY_BIT = np.zeros(len(_KEYS), dtype=np.int64)
for _key, _id in _KEY_ID.items():
    for _prefix, _family in CONVENTION_OF_PREFIX:
        if _key.startswith(_prefix):
            _FAMILY_BIT[_id] = 1 << _FAMILIES.index(_family)
            break
_TOKEN_FIELDS = (
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)
_OPERATIONS = {
    "completion": "text_completion",
    "embedding": "embeddings",
    "rerank": "rerank",
    "chat": "chat",
}
_STATUS_PREFIX = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Timeout|Exceeded))\b")


@dataclass(frozen=True, slots=True)
class SpanColumns:
    """The columns recognition reads: spans' own, or log records' mapped onto them."""

    time: pa.Array
    trace_id: pa.Array
    span_id: pa.Array
    service: pa.Array
    attributes: pa.Array
    duration: pa.Array | None = None
    status_code: pa.Array | None = None
    status_message: pa.Array | None = None
    events: pa.Array | None = None

    @classmethod
    def of_spans(cls, batch: pa.RecordBatch) -> SpanColumns:
        col = batch.column
        return cls(
            col("Timestamp"), col("TraceId"), col("SpanId"), col("ServiceName"),
            col("SpanAttributes"), col("Duration"), col("StatusCode"), col("StatusMessage"),
            col("Events"),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Recognised:
    """The calls found in a batch, their messages and the rows they came from."""

    calls: pa.Table
    messages: pa.Table
    rows: np.ndarray


def _ints(values: np.ndarray) -> np.ndarray:
    """Attribute strings as int64, -1 where absent or not a number. A Python loop: the values
    are those of LLM rows only, and few, where an Arrow kernel call costs more than the loop."""
    out = np.full(len(values), -1, dtype=np.int64)
    for i, value in enumerate(values):
        if value is not None:
            try:
                out[i] = int(value)
            except ValueError:
                with contextlib.suppress(ValueError, OverflowError):
                    out[i] = round(float(value))
    return out


def _floats(values: np.ndarray) -> np.ndarray:
    out = np.full(len(values), np.nan)
    for i, value in enumerate(values):
        if value is not None:
            with contextlib.suppress(ValueError):
                out[i] = float(value)
    return out


def _first_reason(value: str | None) -> str:
    if not value:
        return ""
    if value.startswith("["):
        try:
            reasons = json.loads(value)
            return ",".join(str(r) for r in reasons) if isinstance(reasons, list) else value
        except ValueError:
            return value
    return value


def _mapped(values: np.ndarray, fn: Any) -> np.ndarray:
    """``fn`` of each value, computed once per distinct value; None stays ``""``."""
    done: dict[Any, Any] = {None: ""}
    out = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        result = done.get(value)
        if result is None:
            result = done[value] = fn(value)
        out[i] = result
    return out


def _finish_reasons(reasons: np.ndarray, outputs: np.ndarray) -> np.ndarray:
    """Finish reasons as given, else those inside ``gen_ai.output.messages`` (openai-v2 puts
    them only there for streamed calls)."""
    out = np.empty(len(reasons), dtype=object)
    for i, (given, messages) in enumerate(zip(reasons, outputs, strict=True)):
        reason = _first_reason(given)
        if not reason and messages:
            try:
                parsed = json.loads(messages)
            except ValueError:
                parsed = None
            if isinstance(parsed, list):
                reason = ",".join(
                    str(m["finish_reason"])
                    for m in parsed
                    if isinstance(m, dict) and m.get("finish_reason")
                )
        out[i] = reason
    return out


def _request_model_of(invocation: str | None) -> str:
    if not invocation:
        return ""
    try:
        params = json.loads(invocation)
    except ValueError:
        return ""
    return str(params.get("model") or "") if isinstance(params, dict) else ""


def candidate_rows(attributes: pa.Array) -> np.ndarray | None:
    """Rows whose attribute map has a marker key (the only rows :func:`recognise` can find a
    call in), or ``None``: one set lookup over the batch's keys."""
    offsets = attributes.offsets.to_numpy()
    start, end = int(offsets[0]), int(offsets[-1])
    hits = pc.is_in(attributes.keys.slice(start, end - start), value_set=_MARKER_SET)
    if not pc.any(hits).as_py():
        return None
    owners = np.repeat(np.arange(len(attributes)), np.diff(offsets))
    return np.unique(owners[hits.to_numpy(zero_copy_only=False)])


def recognise(
    cols: SpanColumns, policy: ContentPolicy, source: str = "span", with_calls: bool = True
) -> Recognised | None:
    """The LLM calls among the rows of ``cols``; ``None`` when there are none."""
    n = len(cols.attributes)
    if n == 0:
        return None
    offsets = cols.attributes.offsets.to_numpy()
    start, end = int(offsets[0]), int(offsets[-1])
    keys = cols.attributes.keys.slice(start, end - start)
    # The common case, a batch without LLM spans, ends after this one set lookup.
    if not pc.any(pc.is_in(keys, value_set=_MARKER_SET)).as_py():
        return None
    items = cols.attributes.items.slice(start, end - start)
    rows_all = np.repeat(np.arange(n), np.diff(offsets))
    key_ids = pc.index_in(keys, value_set=_KEY_SET).fill_null(-1).to_numpy(zero_copy_only=False)
    known = key_ids >= 0
    rows_k, ids_k = rows_all[known], key_ids[known]
    candidate = np.zeros(n, dtype=bool)
    candidate[rows_k[_IS_MARKER[ids_k]]] = True
    # From here on only candidate rows: ``local`` numbers them 0..m-1.
    cand = np.flatnonzero(candidate)
    m = len(cand)
    local_of = np.full(n, -1, dtype=np.int64)
    local_of[cand] = np.arange(m)
    keep = candidate[rows_k]
    local_k, ids_k = local_of[rows_k[keep]], ids_k[keep]
    known_positions = np.flatnonzero(known)[keep]
    vals_k = items.take(pa.array(known_positions)).to_numpy(zero_copy_only=False)
    families = np.zeros(m, dtype=np.int64)
    np.bitwise_or.at(families, local_k, _FAMILY_BIT[ids_k])

    # Every field at once: per (field, row) the entry with the best key (lowest priority).
    fields_k = _FIELD_OF[ids_k]
    useful = fields_k >= 0
    local_k, fields_k, prio_k, vals_k = (
        local_k[useful],
        fields_k[useful],
        _PRIORITY_OF[ids_k[useful]],
        vals_k[useful],
    )
    slot = fields_k * m + local_k
    order = np.lexsort((prio_k, slot))
    slot_sorted = slot[order]
    best = order[np.r_[True, slot_sorted[1:] != slot_sorted[:-1]]] if len(order) else order
    table = np.full((len(_FIELD_NAMES), m), None, dtype=object)
    table[fields_k[best], local_k[best]] = vals_k[best]
    field = {name: table[i] for i, name in enumerate(_FIELD_NAMES)}

    tokens = {name: _ints(field[name]) for name in _TOKEN_FIELDS}
    has_model = (field["request_model"] != None) | (field["response_model"] != None)  # noqa: E711
    has_tokens = (tokens["input_tokens"] >= 0) | (tokens["output_tokens"] >= 0)
    oi_kind = field["oi_kind"]
    oi_llm = np.array([k in ("LLM", "EMBEDDING") for k in oi_kind], dtype=bool)
    oi_ok = oi_llm | (oi_kind == None)  # noqa: E711
    op_ok = np.array([o not in NON_CALL_OPERATIONS for o in field["operation"]], dtype=bool)
    # An OpenInference LLM span is a call even when it failed before the model was known.
    is_call = (has_model | has_tokens | oi_llm) & oi_ok & op_ok
    if not is_call.any():
        return None
    rows = cand[is_call]
    take = pa.array(rows)
    k = len(rows)

    def pick(name: str) -> np.ndarray:
        return field[name][is_call]

    times = pc.cast(cols.time.take(take), pa.int64()).to_numpy(zero_copy_only=False)
    trace_ids = cols.trace_id.take(take)
    span_ids = cols.span_id.take(take)

    provider = _mapped(pick("provider"), lambda p: p.lower())
    request_model = pick("request_model")
    missing_request = request_model == None  # noqa: E711
    if missing_request.any():  # OpenInference: only in the invocation parameters
        request_model[missing_request] = _mapped(
            pick("oi_invocation")[missing_request], _request_model_of
        )
    response_model = _mapped(pick("response_model"), str)
    model = np.where(response_model != "", response_model, _mapped(request_model, str))
    operation = _mapped(pick("operation"), lambda op: _OPERATIONS.get(op, op))
    unnamed = operation == ""
    if unnamed.any():
        embedding = oi_kind[is_call] == "EMBEDDING"
        operation[unnamed] = np.where(embedding[unnamed], "embeddings", "chat")
    conventions = _CONVENTION_NAMES[families[is_call]]

    tok = {name: values[is_call] for name, values in tokens.items()}
    inp, out = tok["input_tokens"], tok["output_tokens"]
    total = np.where((inp >= 0) | (out >= 0), np.maximum(inp, 0) + np.maximum(out, 0), -1)
    total = np.where(tok["total_tokens"] >= 0, np.maximum(total, tok["total_tokens"]), total)

    # Cost the span carries (OpenInference llm.cost.*), in pico-dollars.
    carried = _floats(pick("cost"))
    parts = _floats(pick("cost_input")) + _floats(pick("cost_output"))
    carried = np.where(np.isnan(carried), parts, carried)

    duration = (
        cols.duration.take(take).to_numpy(zero_copy_only=False).astype(np.int64)
        if cols.duration is not None
        else np.zeros(k, dtype=np.int64)
    )
    e2e = _floats(pick("e2e_seconds"))
    duration = np.where((duration <= 0) & ~np.isnan(e2e), np.round(e2e * 1e9), duration)
    ttft = _floats(pick("ttft_seconds"))
    ttft_ns = np.where(np.isnan(ttft), -1, np.round(ttft * 1e9)).astype(np.int64)

    error_type = _mapped(pick("error_type"), normalise_error)
    is_error = error_type != ""
    if cols.status_code is not None:
        status = cols.status_code.take(take).to_numpy(zero_copy_only=False)
        is_error |= status == "Error"

    message_rows: dict[int, CallMessages] = {}
    if cols.events is not None:
        read_events(cols.events.take(take), times, ttft_ns, error_type, is_error, message_rows)
    if cols.status_message is not None:
        missing = np.flatnonzero(is_error & (error_type == ""))
        if len(missing):
            texts = cols.status_message.take(pa.array(rows[missing])).to_pylist()
            for i, text in zip(missing, texts, strict=True):
                match = _STATUS_PREFIX.match(text or "")
                error_type[i] = normalise_error(match.group(1)) if match else "_OTHER"

    prompt_name = _mapped(pick("prompt_name"), str)
    unnamed = prompt_name == ""
    if unnamed.any():  # a template without a name is named after its text
        prompt_name[unnamed] = _mapped(
            pick("prompt_template")[unnamed],
            lambda t: "template:" + hashlib.sha1(t.encode()).hexdigest()[:8],
        )
    if policy.keeps_content:
        read_messages(
            rows, rows_all, keys, items, {n: pick(n) for n in _MESSAGE_FIELDS}, message_rows
        )

    def text(values: np.ndarray) -> pa.Array:
        return pa.array([v if v is not None else "" for v in values], pa.string())

    def opt(values: np.ndarray) -> pa.Array:
        return pa.array(values, pa.int64(), mask=values < 0)

    calls = pa.table(
        {
            "Timestamp": pa.array(times, pa.timestamp("ns")),
            "TraceId": trace_ids,
            "SpanId": span_ids,
            "ServiceName": cols.service.take(take),
            "Provider": text(provider),
            "RequestModel": text(request_model),
            "ResponseModel": text(response_model),
            "Model": text(model),
            "Operation": text(operation),
            "Source": pa.array([source] * k, pa.string()),
            "Conventions": text(conventions),
            "InputTokens": opt(inp),
            "OutputTokens": opt(out),
            "CacheReadTokens": opt(tok["cache_read_tokens"]),
            "CacheWriteTokens": opt(tok["cache_write_tokens"]),
            "ReasoningTokens": opt(tok["reasoning_tokens"]),
            "TotalTokens": opt(total),
            "CostPicoUsd": pa.array(
                np.where(np.isnan(carried), 0, np.round(carried * 1e12)).astype(np.int64),
                pa.int64(),
                mask=np.isnan(carried),
            ),
            "CostSource": pa.array(np.where(np.isnan(carried), None, "span"), pa.string()),
            "Duration": pa.array(duration.astype(np.int64), pa.int64()),
            "Ttft": opt(ttft_ns),
            "FinishReason": text(_finish_reasons(pick("finish_reasons"), pick("output_messages"))),
            "IsError": pa.array(is_error, pa.bool_()),
            "ErrorType": text(error_type),
            "PromptName": text(prompt_name),
            "PromptVersion": text(pick("prompt_version")),
            "SessionId": text(pick("session_id")),
            "UserId": text(pick("user_id")),
        },
        schema=CALLS,
    )  # fmt: skip
    messages = message_table(message_rows, times, trace_ids, span_ids, source, policy)
    if not with_calls:
        calls = calls.slice(0, 0)
    return Recognised(calls, messages, rows)
