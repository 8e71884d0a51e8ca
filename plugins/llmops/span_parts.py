"""What else a call's span carries, read for the LLM rows only: events (first streamed token,
exception, per-message events) and message attributes; and the stored form of messages."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from opstrata.plugins.llmops.conventions import (
    ERROR_EVENT,
    MESSAGE_EVENTS,
    MESSAGE_PREFIXES,
    TTFT_EVENTS,
)
from opstrata.plugins.llmops.messages import CallMessages
from opstrata.plugins.llmops.privacy import ContentPolicy

__all__ = ["MESSAGES", "message_table", "normalise_error", "read_events", "read_messages"]

MESSAGES = pa.schema(
    [
        ("Timestamp", pa.timestamp("ns")),
        ("TraceId", pa.string()),
        ("SpanId", pa.string()),
        ("Source", pa.string()),
        ("Messages", pa.string()),
    ]
)
"""Stored messages (``llmops_messages``): one JSON document per call and source."""


_CLASS_REPR = re.compile(r"<class '([^']+)'>")
_IDENTIFIER = re.compile(r"^[A-Za-z_][\w.]*$")


def normalise_error(text: str | None) -> str:
    """The error's class name: ``<class 'openai.BadRequestError'>``, ``openai.BadRequestError``
    and ``BadRequestError`` are all ``BadRequestError``; other text is kept as is."""
    if not text:
        return ""
    value = text.strip().strip("'\"")
    match = _CLASS_REPR.search(value)
    if match:
        value = match.group(1)
    if _IDENTIFIER.match(value):
        return value.rsplit(".", 1)[-1]
    return value


def read_events(
    events: pa.Array,
    times: np.ndarray,
    ttft_ns: np.ndarray,
    error_type: np.ndarray,
    is_error: np.ndarray,
    message_rows: dict[int, CallMessages],
) -> None:
    """TTFT from the first streamed-chunk event, the error class from an exception event, and
    the deprecated per-message span events."""
    offsets = events.offsets.to_numpy()
    start, end = int(offsets[0]), int(offsets[-1])
    if end == start:
        return
    owner = np.repeat(np.arange(len(events)), np.diff(offsets))
    flat = events.values.slice(start, end - start)
    names = flat.field("Name").to_numpy(zero_copy_only=False)
    stamps = pc.cast(flat.field("Timestamp"), pa.int64()).to_numpy(zero_copy_only=False)
    first = np.isin(names, list(TTFT_EVENTS))
    if first.any():
        earliest = np.full(len(events), np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(earliest, owner[first], stamps[first])
        seen = (earliest != np.iinfo(np.int64).max) & (ttft_ns < 0)
        ttft_ns[seen] = np.maximum(earliest[seen] - times[seen], 0)
    wanted = np.flatnonzero((names == ERROR_EVENT) | np.isin(names, list(MESSAGE_EVENTS)))
    if len(wanted) == 0:
        return
    attrs = flat.field("Attributes").take(pa.array(wanted)).to_pylist()
    for position, pairs in zip(wanted, attrs, strict=True):
        row, name, attributes = owner[position], names[position], dict(pairs or ())
        if name == ERROR_EVENT:
            is_error[row] = True
            if not error_type[row]:
                error_type[row] = normalise_error(attributes.get("exception.type")) or "_OTHER"
        else:
            message_rows.setdefault(row, CallMessages()).add_event(name, None, attributes)


def read_messages(
    rows: np.ndarray,
    rows_all: np.ndarray,
    keys: pa.Array,
    items: pa.Array,
    field: dict[str, np.ndarray],
    message_rows: dict[int, CallMessages],
) -> None:
    """Messages of the calls (``rows`` of the batch; ``field`` holds their message attributes
    in the same order), into ``message_rows`` by call index."""
    position = np.full(int(rows.max()) + 1 if len(rows) else 0, -1, dtype=np.int64)
    position[rows] = np.arange(len(rows))
    for i in range(len(rows)):
        system, inp, out = (
            field["system_instructions"][i],
            field["input_messages"][i],
            field["output_messages"][i],
        )
        if system is not None or inp is not None or out is not None:
            collected = message_rows.setdefault(i, CallMessages())
            if system is not None:
                collected.add_json("system", system)
            if inp is not None:
                collected.add_json("input", inp)
            if out is not None:
                collected.add_json("output", out)
    of_calls = np.zeros(len(rows_all), dtype=bool)
    in_range = rows_all < len(position)
    of_calls[in_range] = position[rows_all[in_range]] >= 0
    if not of_calls.any():
        return
    mask = pa.array(of_calls)
    call_keys = keys.filter(mask)
    indexed = pc.starts_with(call_keys, MESSAGE_PREFIXES[0])
    for prefix in MESSAGE_PREFIXES[1:]:
        indexed = pc.or_(indexed, pc.starts_with(call_keys, prefix))
    hits = np.flatnonzero(indexed.to_numpy(zero_copy_only=False))
    if len(hits) == 0:
        return
    owners = rows_all[of_calls][hits]
    hit_keys = call_keys.take(pa.array(hits)).to_pylist()
    hit_values = items.filter(mask).take(pa.array(hits)).to_pylist()
    for owner, key, value in zip(owners, hit_keys, hit_values, strict=True):
        i = int(position[owner])
        collected = message_rows.setdefault(i, CallMessages())
        collected.add_indexed(key, value or "")


def message_table(
    message_rows: dict[int, CallMessages],
    times: np.ndarray,
    trace_ids: pa.Array,
    span_ids: pa.Array,
    source: str,
    policy: ContentPolicy,
) -> pa.Table:
    order = sorted(i for i, m in message_rows.items() if m)
    stored: list[Any] = [message_rows[i].to_json(policy) for i in order]
    keep = [i for i, s in zip(order, stored, strict=True) if s is not None]
    stored = [s for s in stored if s is not None]
    index = pa.array(keep, pa.int64())
    return pa.table(
        {
            "Timestamp": pa.array(times[keep] if keep else [], pa.timestamp("ns")),
            "TraceId": trace_ids.take(index),
            "SpanId": span_ids.take(index),
            "Source": pa.array([source] * len(keep), pa.string()),
            "Messages": pa.array(stored, pa.string()),
        },
        schema=MESSAGES,
    )
