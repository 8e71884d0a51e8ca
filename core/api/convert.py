"""Arrow rows of the store → API models."""

from __future__ import annotations

import pyarrow as pa

from opstrata.api.models import LogOut, SpanEvent, SpanLink, SpanOut

__all__ = ["logs_from_arrow", "rows_with_int_times", "spans_from_arrow", "tree_order"]


def _timestamps_as_int(arrow_type: pa.DataType) -> pa.DataType:
    """The same type with every timestamp (also nested) as int64 nanoseconds."""
    if pa.types.is_timestamp(arrow_type):
        return pa.int64()
    if pa.types.is_map(arrow_type):
        return arrow_type
    if pa.types.is_list(arrow_type):
        return pa.list_(_timestamps_as_int(arrow_type.value_type))
    if pa.types.is_struct(arrow_type):
        return pa.struct([f.with_type(_timestamps_as_int(f.type)) for f in arrow_type])
    return arrow_type


def rows_with_int_times(table: pa.Table) -> list[dict]:
    """Rows as dicts, maps as dicts, timestamps as integer nanoseconds (no precision lost)."""
    schema = pa.schema([f.with_type(_timestamps_as_int(f.type)) for f in table.schema])
    return table.cast(schema).to_pylist(maps_as_pydicts="lossy")


def spans_from_arrow(table: pa.Table) -> list[SpanOut]:
    """Spans of an ``otel_traces`` result."""
    rows = rows_with_int_times(table)
    out = []
    for row in rows:
        out.append(
            SpanOut(
                trace_id=row["TraceId"],
                span_id=row["SpanId"],
                parent_span_id=row["ParentSpanId"],
                trace_state=row["TraceState"],
                name=row["SpanName"],
                kind=row["SpanKind"],
                service_name=row["ServiceName"],
                start_time_unix_nano=row["Timestamp"],
                duration_nano=row["Duration"],
                status_code=row["StatusCode"],
                status_message=row["StatusMessage"],
                resource_attributes=row["ResourceAttributes"] or {},
                scope_name=row["ScopeName"],
                scope_version=row["ScopeVersion"],
                scope_attributes=row["ScopeAttributes"] or {},
                attributes=row["SpanAttributes"] or {},
                events=[
                    SpanEvent(
                        timestamp=e["Timestamp"],
                        name=e["Name"],
                        attributes=e["Attributes"] or {},
                    )
                    for e in row["Events"] or ()
                ],
                links=[
                    SpanLink(
                        trace_id=link["TraceId"],
                        span_id=link["SpanId"],
                        trace_state=link["TraceState"],
                        attributes=link["Attributes"] or {},
                    )
                    for link in row["Links"] or ()
                ],
                trace_flags=row["TraceFlags"],
            )
        )
    return out


def tree_order(spans: list[SpanOut]) -> list[SpanOut]:
    """Spans depth first from each root, siblings by start time; a span whose parent is not in
    the trace counts as a root."""
    ids = {span.span_id for span in spans}
    children: dict[str, list[SpanOut]] = {}
    roots = []
    for span in spans:  # already in start-time order
        if (
            span.parent_span_id
            and span.parent_span_id in ids
            and span.parent_span_id != span.span_id
        ):
            children.setdefault(span.parent_span_id, []).append(span)
        else:
            roots.append(span)
    out: list[SpanOut] = []
    seen: set[str] = set()
    stack = list(reversed(roots))
    while stack:
        span = stack.pop()
        if span.span_id in seen and span.parent_span_id:
            continue  # a cycle of parent ids: show each span once
        seen.add(span.span_id)
        out.append(span)
        stack.extend(reversed(children.get(span.span_id, ())))
    if len(out) < len(spans):  # spans only reachable through a cycle
        placed = {id(s) for s in out}
        out.extend(s for s in spans if id(s) not in placed)
    return out


def logs_from_arrow(table: pa.Table) -> list[LogOut]:
    """Log records of an ``otel_logs`` result."""
    return [
        LogOut(
            timestamp_unix_nano=row["Timestamp"],
            observed_timestamp_unix_nano=row["ObservedTimestamp"],
            trace_id=row["TraceId"],
            span_id=row["SpanId"],
            trace_flags=row["TraceFlags"],
            severity_text=row["SeverityText"],
            severity_number=row["SeverityNumber"],
            service_name=row["ServiceName"],
            body=row["Body"],
            attributes=row["LogAttributes"] or {},
            resource_attributes=row["ResourceAttributes"] or {},
            scope_name=row["ScopeName"],
            scope_version=row["ScopeVersion"],
            event_name=row["EventName"],
        )
        for row in rows_with_int_times(table)
    ]
