"""The spans of a trace read, column by column, into response models and encoded to JSON once.

``convert.spans_from_arrow`` casts the whole table and builds a dict per row before each span;
for one trace that cost more than reading it. Here each column becomes one Python list (times
cast to int64 in Arrow), attribute maps are cut from their flattened keys and values by the
list offsets, and the spans are built from those lists. Attribute columns may be MAPs (as
``TelemetryQueries.traces`` returns them) or lists of ``{key, value}`` structs (as the DuckDB
store keeps them, ``trace_rows``): both are lists of two-field structs underneath.

The body is encoded here with one msgspec encoder, and handed to Litestar as bytes.
"""

from __future__ import annotations

import msgspec
import numpy as np
import pyarrow as pa

from opstrata.api.convert import tree_order
from opstrata.api.models import SpanEvent, SpanLink, SpanOut, TraceOut
from opstrata.storage.base import TelemetryQueries

__all__ = ["encode_json", "read_traces", "spans_from_columns", "trace_body"]

_ENCODER = msgspec.json.Encoder()


def encode_json(value: object) -> bytes:
    """``value`` (msgspec Structs, lists, dicts) as JSON bytes."""
    return _ENCODER.encode(value)


def read_traces(queries: TelemetryQueries, trace_ids: list[str]) -> pa.Table:
    """The spans of the traces, in the stored layout when the store offers it (``trace_rows``,
    cheaper than MAPs), else as ``TelemetryQueries.traces`` returns them."""
    stored = getattr(queries, "trace_rows", None)
    return stored(trace_ids) if callable(stored) else queries.traces(trace_ids)


def _array(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        return column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    return column


def _values(array: pa.Array) -> list:
    """Plain Python values; timestamps as integer nanoseconds."""
    if pa.types.is_timestamp(array.type):
        array = array.cast(pa.int64())
    return array.to_pylist()


def _bounds(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) of each row's items in ``array.values``; empty for nulls."""
    offsets = array.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
    starts, ends = offsets[:-1], offsets[1:]
    if array.null_count:
        valid = array.is_valid().to_numpy(zero_copy_only=False)
        ends = np.where(valid, ends, starts)
    return starts, ends


def _maps(array: pa.Array) -> list[dict[str, str]]:
    """A MAP or ``list<struct<key, value>>`` column as one dict per row."""
    starts, ends = _bounds(array)
    entries = array.values.flatten()  # StructArray.flatten honours the struct's own offset
    keys, values = entries[0].to_pylist(), entries[1].to_pylist()
    return [
        dict(zip(keys[a:b], values[a:b], strict=True)) if b > a else {}
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True)
    ]


def _nested(array: pa.Array) -> tuple[list[tuple[int, int]], dict[str, list]]:
    """A ``list<struct<...>>`` column: per row the (start, end) of its items, and the items'
    fields as lists (attribute maps as dicts)."""
    starts, ends = _bounds(array)
    items = array.values
    fields = {}
    for field, child in zip(items.type, items.flatten(), strict=True):
        is_map = pa.types.is_map(field.type) or (
            pa.types.is_list(field.type) and pa.types.is_struct(field.type.value_type)
        )
        fields[field.name] = _maps(child) if is_map else _values(child)
    return list(zip(starts.tolist(), ends.tolist(), strict=True)), fields


def spans_from_columns(table: pa.Table) -> list[SpanOut]:
    """The spans of an ``otel_traces`` result (either layout of the attribute columns), in the
    table's order."""
    col = {name: _array(table.column(name)) for name in table.column_names}
    plain = {
        name: _values(col[name])
        for name in (
            "TraceId",
            "SpanId",
            "ParentSpanId",
            "TraceState",
            "SpanName",
            "SpanKind",
            "ServiceName",
            "Timestamp",
            "Duration",
            "StatusCode",
            "StatusMessage",
            "ScopeName",
            "ScopeVersion",
            "TraceFlags",
        )
    }
    resource = _maps(col["ResourceAttributes"])
    scope = _maps(col["ScopeAttributes"])
    attributes = _maps(col["SpanAttributes"])
    event_rows, event = _nested(col["Events"])
    link_rows, link = _nested(col["Links"])
    events = [
        [
            SpanEvent(event["Timestamp"][i], event["Name"][i], event["Attributes"][i])
            for i in range(a, b)
        ]
        for a, b in event_rows
    ]
    links = [
        [
            SpanLink(
                link["TraceId"][i], link["SpanId"][i], link["TraceState"][i], link["Attributes"][i]
            )
            for i in range(a, b)
        ]
        for a, b in link_rows
    ]
    return [
        SpanOut(
            trace_id=plain["TraceId"][i],
            span_id=plain["SpanId"][i],
            parent_span_id=plain["ParentSpanId"][i],
            trace_state=plain["TraceState"][i],
            name=plain["SpanName"][i],
            kind=plain["SpanKind"][i],
            service_name=plain["ServiceName"][i],
            start_time_unix_nano=plain["Timestamp"][i],
            duration_nano=plain["Duration"][i],
            status_code=plain["StatusCode"][i],
            status_message=plain["StatusMessage"][i],
            resource_attributes=resource[i],
            scope_name=plain["ScopeName"][i],
            scope_version=plain["ScopeVersion"][i],
            scope_attributes=scope[i],
            attributes=attributes[i],
            events=events[i],
            links=links[i],
            trace_flags=plain["TraceFlags"][i],
        )
        for i in range(table.num_rows)
    ]


def trace_body(trace_id: str, table: pa.Table) -> bytes:
    """``TraceOut`` JSON of one trace's rows: spans in tree order."""
    spans = tree_order(spans_from_columns(table))
    return encode_json(TraceOut(trace_id=trace_id, span_count=len(spans), spans=spans))
