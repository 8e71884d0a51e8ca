"""What the read side asks a store and what it gets back, independent of the store.

Times are Unix nanoseconds (event time). Lists come newest first with an opaque ``next_cursor``
(``None`` when the page was not full). Filters are plain values: a store binds them as query
parameters, never pastes them into a query.
"""

from __future__ import annotations

import msgspec
import pyarrow as pa

__all__ = [
    "Exemplar",
    "LogFilter",
    "LogPage",
    "MapEdge",
    "MapNode",
    "MetricInfo",
    "MetricRange",
    "MetricSeries",
    "Operation",
    "REDPoint",
    "RangeSeries",
    "ServiceMap",
    "ServiceRED",
    "SpanFilter",
    "SpanPage",
    "TimeWindow",
]


class TimeWindow(msgspec.Struct, frozen=True):
    start: int
    end: int
    """Exclusive."""

    @property
    def seconds(self) -> float:
        return max(1e-9, (self.end - self.start) / 1e9)


class SpanFilter(msgspec.Struct, frozen=True, kw_only=True):
    service: str | None = None
    span_name: str | None = None
    status: str | None = None
    """``Unset``, ``Ok`` or ``Error``."""
    kind: str | None = None
    """``Internal``, ``Server``, ``Client``, ``Producer``, ``Consumer`` or ``Unspecified``."""
    min_duration: int | None = None
    max_duration: int | None = None
    attributes: dict[str, str] = msgspec.field(default_factory=dict)
    resource: dict[str, str] = msgspec.field(default_factory=dict)
    start: int | None = None
    end: int | None = None


class SpanPage(msgspec.Struct, frozen=True):
    spans: pa.Table
    next_cursor: str | None


class LogFilter(msgspec.Struct, frozen=True, kw_only=True):
    service: str | None = None
    min_severity: int | None = None
    contains: str | None = None
    trace_id: str | None = None
    attributes: dict[str, str] = msgspec.field(default_factory=dict)
    resource: dict[str, str] = msgspec.field(default_factory=dict)
    start: int | None = None
    end: int | None = None


class LogPage(msgspec.Struct, frozen=True):
    logs: pa.Table
    next_cursor: str | None


class REDPoint(msgspec.Struct, frozen=True):
    time_unix_nano: int
    requests: int
    errors: int
    p50_nano: float | None
    p95_nano: float | None
    p99_nano: float | None


class ServiceRED(msgspec.Struct, frozen=True):
    """Rate, errors and duration of a service's requests (its server, consumer and root spans)."""

    name: str
    requests: int
    errors: int
    request_rate: float
    """Requests per second over the window."""
    error_rate: float
    """Errors / requests (0 without requests)."""
    p50_nano: float | None
    p95_nano: float | None
    p99_nano: float | None
    series: list[REDPoint]


class Operation(msgspec.Struct, frozen=True):
    name: str
    kind: str
    spans: int
    errors: int
    error_rate: float
    p50_nano: float | None
    p95_nano: float | None
    p99_nano: float | None


class MapNode(msgspec.Struct, frozen=True):
    name: str
    kind: str
    """``service`` (sends telemetry), ``database`` or ``external`` (only seen as a peer)."""
    requests: int
    errors: int


class MapEdge(msgspec.Struct, frozen=True):
    source: str
    target: str
    calls: int
    errors: int
    error_rate: float
    p99_nano: float | None
    via: str
    """``span`` (a child span in another service), ``peer.service``, ``db.system`` or
    ``server.address`` (a client span whose callee sends no telemetry)."""


class ServiceMap(msgspec.Struct, frozen=True):
    start_unix_nano: int
    end_unix_nano: int
    nodes: list[MapNode]
    edges: list[MapEdge]


class MetricInfo(msgspec.Struct, frozen=True):
    name: str
    type: str
    """``gauge``, ``sum``, ``histogram``, ``exponential_histogram`` or ``summary``."""
    unit: str
    description: str
    series: int
    points: int
    temporality: str | None
    """``cumulative`` or ``delta`` for sums and histograms."""
    monotonic: bool | None


class MetricSeries(msgspec.Struct, frozen=True):
    service_name: str
    attributes: dict[str, str]
    resource_attributes: dict[str, str]
    points: int
    first_unix_nano: int
    last_unix_nano: int


class RangeSeries(msgspec.Struct, frozen=True):
    labels: dict[str, str]
    points: list[tuple[int, float]]
    """``[time_unix_nano, value]``; the time is the start of the step; empty steps left out."""


class MetricRange(msgspec.Struct, frozen=True):
    metric: str
    type: str
    aggregation: str
    step_seconds: float
    start_unix_nano: int
    end_unix_nano: int
    series: list[RangeSeries]


class Exemplar(msgspec.Struct, frozen=True):
    time_unix_nano: int
    value: float
    trace_id: str
    span_id: str
    filtered_attributes: dict[str, str]
    service_name: str
    attributes: dict[str, str]
    trace_url: str | None
    """``/api/v1/traces/<trace_id>`` when the exemplar has a trace id."""
