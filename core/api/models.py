"""Response models of the HTTP API (frozen msgspec Structs)."""

from __future__ import annotations

import msgspec

__all__ = [
    "ErrorBody",
    "LogOut",
    "LogPageOut",
    "SpanEvent",
    "SpanLink",
    "SpanOut",
    "SpanPageOut",
    "TraceOut",
]


class ErrorBody(msgspec.Struct, frozen=True):
    status_code: int
    detail: str


class SpanEvent(msgspec.Struct, frozen=True):
    timestamp: int
    name: str
    attributes: dict[str, str]


class SpanLink(msgspec.Struct, frozen=True):
    trace_id: str
    span_id: str
    trace_state: str
    attributes: dict[str, str]


class SpanOut(msgspec.Struct, frozen=True):
    """One span; times are Unix nanoseconds."""

    trace_id: str
    span_id: str
    parent_span_id: str
    trace_state: str
    name: str
    kind: str
    service_name: str
    start_time_unix_nano: int
    duration_nano: int
    status_code: str
    status_message: str
    resource_attributes: dict[str, str]
    scope_name: str
    scope_version: str
    scope_attributes: dict[str, str]
    attributes: dict[str, str]
    events: list[SpanEvent]
    links: list[SpanLink]
    trace_flags: int


class TraceOut(msgspec.Struct, frozen=True):
    """A trace; ``spans`` in tree order (depth first from the root, siblings by start time)."""

    trace_id: str
    span_count: int
    spans: list[SpanOut]


class SpanPageOut(msgspec.Struct, frozen=True):
    spans: list[SpanOut]
    next_cursor: str | None


class LogOut(msgspec.Struct, frozen=True):
    """One log record; times are Unix nanoseconds."""

    timestamp_unix_nano: int
    observed_timestamp_unix_nano: int
    trace_id: str
    span_id: str
    trace_flags: int
    severity_text: str
    severity_number: int
    service_name: str
    body: str
    attributes: dict[str, str]
    resource_attributes: dict[str, str]
    scope_name: str
    scope_version: str
    event_name: str


class LogPageOut(msgspec.Struct, frozen=True):
    logs: list[LogOut]
    next_cursor: str | None
