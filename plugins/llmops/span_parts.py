"""What else a call's span carries, read for the LLM rows only: events (first streamed token,
exception, per-message events) and message attributes; and the stored form of messages.

Messages in the GenAI JSON attributes (``gen_ai.input.messages`` …) are stored as the JSON text
they came in, masked column-wise (:meth:`ContentPolicy.apply_json`), and parsed when read. Only
the forms that need it go through Python per call: per-message attributes (OpenInference's
``llm.input_messages.N.*``, Traceloop's older ``gen_ai.prompt.N.*``), the deprecated
per-message events, and texts the column-wise masking cannot do exactly (see ``apply_json``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from opstrata.plugins.llmops.columns import error_class
from opstrata.plugins.llmops.conventions import (
    ERROR_EVENT,
    MESSAGE_EVENTS,
    MESSAGE_PREFIXES,
    TTFT_EVENTS,
)
from opstrata.plugins.llmops.messages import CallMessages
from opstrata.plugins.llmops.privacy import ContentPolicy

__all__ = [
    "MESSAGES",
    "EventFacts",
    "event_facts",
    "indexed_messages",
    "message_table",
    "normalise_error",
]

MESSAGES = pa.schema(
    [
        ("Timestamp", pa.timestamp("ns")),
        ("TraceId", pa.string()),
        ("SpanId", pa.string()),
        ("Source", pa.string()),
        ("Messages", pa.string()),
        ("System", pa.string()),
        ("Input", pa.string()),
        ("Output", pa.string()),
    ]
)
"""Stored messages (``llmops_messages``), one row per call and source: ``System`` / ``Input`` /
``Output`` are the (masked) GenAI JSON attributes as sent; ``Messages`` the other forms,
normalised to ``{"input": [{"role", "content"}], "output": [...]}``."""

_TTFT = pa.array(sorted(TTFT_EVENTS), pa.string())
_PER_MESSAGE = pa.array(sorted(MESSAGE_EVENTS), pa.string())
# Typed scalars made once: a bare Python value costs pyarrow a failed ``import dateutil``.
_EMPTY, _NO_TEXT = pa.scalar("", pa.string()), pa.scalar(None, pa.string())
_OTHER, _EXCEPTION_TYPE = pa.scalar("_OTHER", pa.string()), pa.scalar("exception.type", pa.string())
_CLASS_REPR = re.compile(r"<class '([^']+)'>")
_IDENTIFIER = re.compile(r"^[A-Za-z_][\w.]*$")


def normalise_error(text: str | None) -> str:
    """The error's class name (one value; :func:`columns.error_class` does a column)."""
    if not text:
        return ""
    value = text.strip().strip("'\"")
    match = _CLASS_REPR.search(value)
    if match:
        value = match.group(1)
    if _IDENTIFIER.match(value):
        return value.rsplit(".", 1)[-1]
    return value


@dataclass(frozen=True, slots=True)
class EventFacts:
    """What the span events of ``k`` calls say, column-wise."""

    first_token: np.ndarray  # ns timestamp of the first streamed-chunk event, -1: none
    exception_type: pa.Array  # class of the first ``exception`` event (null: none)
    has_exception: np.ndarray
    message_events: dict[int, CallMessages]  # the deprecated per-message events, by call


def event_facts(events: pa.Array | None, k: int) -> EventFacts:
    none = EventFacts(
        np.full(k, -1, dtype=np.int64), pa.nulls(k, pa.string()), np.zeros(k, bool), {}
    )
    if events is None or k == 0:
        return none
    offsets = events.offsets.to_numpy()
    if offsets[-1] == offsets[0]:
        return none
    owner = np.repeat(np.arange(k), np.diff(offsets))
    flat = events.flatten()
    names = flat.field("Name")
    first_token = np.full(k, -1, dtype=np.int64)
    ttft = pc.is_in(names, value_set=_TTFT).to_numpy(zero_copy_only=False)
    if ttft.any():
        stamps = pc.cast(flat.field("Timestamp"), pa.int64()).to_numpy(zero_copy_only=False)
        earliest = np.full(k, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(earliest, owner[ttft], stamps[ttft])
        seen = earliest != np.iinfo(np.int64).max
        first_token[seen] = earliest[seen]
    exception_type, has_exception = none.exception_type, np.zeros(k, bool)
    failed = np.flatnonzero(pc.equal(names, ERROR_EVENT).to_numpy(zero_copy_only=False))
    if len(failed):
        rows, first = np.unique(owner[failed], return_index=True)
        has_exception[rows] = True
        attributes = flat.field("Attributes").take(pa.array(failed[first]))
        a_offsets = attributes.offsets.to_numpy()
        a_owner = np.repeat(rows, np.diff(a_offsets))
        start, end = int(a_offsets[0]), int(a_offsets[-1])
        is_type = pc.equal(attributes.keys.slice(start, end - start), _EXCEPTION_TYPE)
        hits = np.flatnonzero(is_type.to_numpy(zero_copy_only=False))
        index = np.full(k, -1, dtype=np.int64)
        index[a_owner[hits][::-1]] = hits[::-1]  # the first such key of each event wins
        values = attributes.items.slice(start, end - start).take(pa.array(index, mask=index < 0))
        exception_type = pc.if_else(
            pa.array(has_exception), pc.fill_null(error_class(values), ""), _NO_TEXT
        )
        exception_type = pc.if_else(pc.equal(exception_type, _EMPTY), _OTHER, exception_type)
    message_events: dict[int, CallMessages] = {}
    wanted = np.flatnonzero(pc.is_in(names, value_set=_PER_MESSAGE).to_numpy(zero_copy_only=False))
    if len(wanted):  # deprecated form, rare: one Python step per such event
        picked = names.take(pa.array(wanted)).to_pylist()
        attrs = flat.field("Attributes").take(pa.array(wanted)).to_pylist()
        for position, name, pairs in zip(wanted, picked, attrs, strict=True):
            row = int(owner[position])
            message_events.setdefault(row, CallMessages()).add_event(name, None, dict(pairs or ()))
    return EventFacts(first_token, exception_type, has_exception, message_events)


def indexed_messages(
    owner: np.ndarray,
    keys: pa.Array,
    items: pa.Array,
    unknown: np.ndarray,
    into: dict[int, CallMessages],
) -> None:
    """Per-message attributes (``llm.input_messages.N.message.role`` …) of the calls, into
    ``into`` by call index; ``owner`` is the call index of each key (-1: not a call);
    ``unknown``: the keys no field names (only those can be per-message keys)."""
    others = np.flatnonzero(unknown & (owner >= 0))
    if len(others) == 0:
        return
    some = keys.take(pa.array(others))
    indexed = pc.starts_with(some, MESSAGE_PREFIXES[0])
    for prefix in MESSAGE_PREFIXES[1:]:
        indexed = pc.or_(indexed, pc.starts_with(some, prefix))
    hits = others[indexed.to_numpy(zero_copy_only=False)]
    if len(hits) == 0:
        return
    positions = pa.array(hits)
    rows = owner[hits].tolist()
    for row, key, value in zip(
        rows, keys.take(positions).to_pylist(), items.take(positions).to_pylist(), strict=True
    ):
        into.setdefault(row, CallMessages()).add_indexed(key, value or "")


def _plain(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks()
    return values


def message_table(
    raw: dict[str, pa.Array],
    slow: dict[int, CallMessages],
    times: pa.Array,
    trace_ids: pa.Array,
    span_ids: pa.Array,
    source: str,
    policy: ContentPolicy,
) -> pa.Table:
    """The ``llmops_messages`` rows of ``k`` calls: ``raw`` holds their GenAI JSON attributes
    (``System`` / ``Input`` / ``Output``); ``slow`` the calls whose messages were collected one
    by one (their raw columns are then left out: they are in ``Messages``)."""
    k = len(times)
    if not policy.keeps_content or k == 0:
        return MESSAGES.empty_table()
    # The three columns masked as one (each pass costs per call *and* per kernel call).
    names = list(raw)
    joined, inexact = policy.apply_json(pa.concat_arrays([_plain(raw[c]) for c in names]))
    masked = {c: joined.slice(i * k, k) for i, c in enumerate(names)}
    exact = inexact.reshape(len(names), k).any(axis=0)
    slow_rows = np.zeros(k, dtype=bool)
    slow_rows[list(slow)] = True
    # Texts the column-wise masking cannot do exactly are parsed and masked message by message.
    for row in np.flatnonzero(exact & ~slow_rows):
        slow[int(row)] = CallMessages()
    slow_rows |= exact
    if slow_rows.any():
        for row in np.flatnonzero(slow_rows):
            collected = slow[int(row)]
            for column in ("System", "Input", "Output"):
                value = raw[column][int(row)].as_py()
                if value is not None:
                    collected.add_json(column.lower(), value)
        drop = pa.array(slow_rows)
        masked = {c: pc.if_else(drop, pa.scalar(None, pa.string()), v) for c, v in masked.items()}
    order = sorted(slow)
    if order:
        normalised = np.full(k, None, dtype=object)
        normalised[order] = [slow[i].to_json(policy) for i in order]
        messages = pa.array(normalised, pa.string())
    else:  # the usual case: JSON attributes only (an object array costs ~0.2 µs a call)
        messages = pa.nulls(k, pa.string())
    has = pc.is_valid(messages)
    for values in masked.values():
        has = pc.or_(has, pc.is_valid(values))
    table = pa.table(
        {
            "Timestamp": times,
            "TraceId": trace_ids,
            "SpanId": span_ids,
            "Source": pa.repeat(pa.scalar(source, pa.string()), k),  # not per call
            "Messages": messages,
            **masked,
        },
        schema=MESSAGES,
    )
    if pc.all(has).as_py():  # the usual case: a filter would copy every text (~0.4 ms a MB)
        return table
    return table.filter(has)
