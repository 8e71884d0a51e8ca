"""The Jaeger query service's HTTP API (the one the Jaeger UI and Grafana's Jaeger data source
call), answered from our tables.

Shapes follow ``jaeger-query``'s ``/api`` (its ``structuredResponse`` and the UI model): times in
microseconds, ``processes`` keyed ``p1``, ``p2``…, ``references`` for the parent (``CHILD_OF``)
and links (``FOLLOWS_FROM``). Attributes are stored as strings, so every tag is a ``string``
tag, except ``error`` (a ``bool``), as Jaeger's own OTLP translation sets it.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import msgspec
from litestar import Controller, MediaType, Request, Response, get
from litestar.exceptions import HTTPException, ValidationException
from litestar.params import Parameter

from opstrata.api.models import SpanOut
from opstrata.api.params import MAX_LIMIT, parse_duration, parse_trace_id
from opstrata.api.trace_render import encode_json, read_traces, spans_from_columns
from opstrata.api.traces import KINDS, TRACE_ID_PATTERN
from opstrata.schema import Table
from opstrata.storage.base import TelemetryQueries
from opstrata.storage.query_types import SpanFilter, TimeWindow

__all__ = ["JaegerController"]

_MS = 10**6
_US = 10**3
_DEFAULT_LOOKBACK = 3600 * 10**9


class JaegerTag(msgspec.Struct, frozen=True):
    key: str
    type: str
    value: Any


class JaegerLog(msgspec.Struct, frozen=True):
    timestamp: int
    fields: list[JaegerTag]


class JaegerReference(msgspec.Struct, frozen=True):
    refType: str
    traceID: str
    spanID: str


class JaegerSpan(msgspec.Struct, frozen=True):
    traceID: str
    spanID: str
    operationName: str
    references: list[JaegerReference]
    startTime: int
    duration: int
    tags: list[JaegerTag]
    logs: list[JaegerLog]
    processID: str
    warnings: list[str] | None
    flags: int


class JaegerProcess(msgspec.Struct, frozen=True):
    serviceName: str
    tags: list[JaegerTag]


class JaegerTrace(msgspec.Struct, frozen=True):
    traceID: str
    spans: list[JaegerSpan]
    processes: dict[str, JaegerProcess]
    warnings: list[str] | None


class JaegerOperation(msgspec.Struct, frozen=True):
    name: str
    spanKind: str


class JaegerDependency(msgspec.Struct, frozen=True):
    parent: str
    child: str
    callCount: int


class JaegerError(msgspec.Struct, frozen=True):
    code: int
    msg: str


class JaegerResponse(msgspec.Struct, frozen=True):
    data: Any
    total: int
    limit: int
    offset: int
    errors: list[JaegerError] | None


def _ok(data: list) -> JaegerResponse:
    return JaegerResponse(data=data, total=len(data), limit=0, offset=0, errors=None)


def _ok_body(data: list) -> Response[JaegerResponse]:
    """:func:`_ok` encoded here with one msgspec encoder (traces are the big answers)."""
    return Response(encode_json(_ok(data)), media_type=MediaType.JSON)


def _jaeger_error(_: Request, exc: HTTPException) -> Response[JaegerResponse]:
    body = JaegerResponse(None, 0, 0, 0, [JaegerError(exc.status_code, str(exc.detail))])
    return Response(body, status_code=exc.status_code, headers=exc.headers)


def _tags(pairs: dict[str, str]) -> list[JaegerTag]:
    return [JaegerTag(k, "string", v) for k, v in sorted(pairs.items())]


def to_jaeger(trace_id: str, spans: list[SpanOut]) -> JaegerTrace:
    processes: dict[str, JaegerProcess] = {}
    process_ids: dict[tuple, str] = {}
    out = []
    for span in spans:
        resource = {k: v for k, v in span.resource_attributes.items() if k != "service.name"}
        key = (span.service_name, tuple(sorted(resource.items())))
        pid = process_ids.get(key)
        if pid is None:
            pid = process_ids[key] = f"p{len(process_ids) + 1}"
            processes[pid] = JaegerProcess(span.service_name, _tags(resource))
        refs = []
        if span.parent_span_id:
            refs.append(JaegerReference("CHILD_OF", span.trace_id, span.parent_span_id))
        refs += [
            JaegerReference("FOLLOWS_FROM", link.trace_id, link.span_id) for link in span.links
        ]
        tags = _tags(span.attributes)
        if span.kind not in ("Unspecified", ""):
            tags.append(JaegerTag("span.kind", "string", span.kind.lower()))
        if span.status_code in ("Ok", "Error"):
            tags.append(JaegerTag("otel.status_code", "string", span.status_code.upper()))
        if span.status_code == "Error":
            tags.append(JaegerTag("error", "bool", True))
        if span.status_message:
            tags.append(JaegerTag("otel.status_description", "string", span.status_message))
        if span.scope_name:
            tags.append(JaegerTag("otel.scope.name", "string", span.scope_name))
        if span.scope_version:
            tags.append(JaegerTag("otel.scope.version", "string", span.scope_version))
        logs = [
            JaegerLog(
                event.timestamp // _US,
                [JaegerTag("event", "string", event.name), *_tags(event.attributes)],
            )
            for event in span.events
        ]
        out.append(
            JaegerSpan(
                traceID=span.trace_id,
                spanID=span.span_id,
                operationName=span.name,
                references=refs,
                startTime=span.start_time_unix_nano // _US,
                duration=span.duration_nano // _US,
                tags=tags,
                logs=logs,
                processID=pid,
                warnings=None,
                flags=span.trace_flags & 0xFF,
            )
        )
    return JaegerTrace(trace_id, out, processes, None)


def _traces(queries: TelemetryQueries, trace_ids: list[str]) -> list[JaegerTrace]:
    spans = spans_from_columns(read_traces(queries, trace_ids))
    by_trace: dict[str, list[SpanOut]] = {}
    for span in spans:
        by_trace.setdefault(span.trace_id, []).append(span)
    return [to_jaeger(t, by_trace[t]) for t in trace_ids if t in by_trace]


def _parse_tags(text: str | None) -> dict[str, str]:
    """``tags``: a JSON object (what the UI and Grafana send) or logfmt ``k=v k2="v 2"``."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if isinstance(value, dict):
        return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in value.items()}
    out = {}
    for part in _logfmt(text):
        key, sep, val = part.partition("=")
        if not sep or not key:
            raise ValidationException(detail="tags: a JSON object or key=value pairs")
        out[key] = val
    return out


def _logfmt(text: str) -> list[str]:
    parts, current, quoted = [], [], False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        elif ch == " " and not quoted:
            if current:
                parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if current:
        parts.append("".join(current))
    return parts


def _micros(text: str | None, name: str) -> int | None:
    if text is None or text == "":
        return None
    if not text.isdigit() or len(text) > 16:
        raise ValidationException(detail=f"{name}: Unix microseconds expected")
    return int(text) * _US


def _span_filter(
    service: str,
    operation: str | None,
    tags: dict[str, str],
    window: TimeWindow,
    min_duration: int | None,
    max_duration: int | None,
) -> SpanFilter:
    status = kind = None
    attributes = dict(tags)
    if attributes.get("error") in ("true", "True", "1"):
        attributes.pop("error")
        status = "Error"
    if "otel.status_code" in attributes:
        status = attributes.pop("otel.status_code").capitalize()
    if "span.kind" in attributes:
        kind = KINDS.get(attributes.pop("span.kind").lower(), "?")
    return SpanFilter(
        service=service,
        span_name=operation,
        status=status,
        kind=kind,
        min_duration=min_duration,
        max_duration=max_duration,
        attributes=attributes,
        start=window.start,
        end=window.end,
    )


Q = Annotated[str | None, Parameter(max_length=1024)]


class JaegerController(Controller):
    path = "/api"
    exception_handlers = {HTTPException: _jaeger_error}

    @get("/services", sync_to_thread=True)
    def services(self, queries: TelemetryQueries) -> JaegerResponse:
        """Jaeger: every service name."""
        return _ok(queries.service_names())

    @get("/services/{service:str}/operations", sync_to_thread=True)
    def service_operations(self, queries: TelemetryQueries, service: str) -> JaegerResponse:
        """Jaeger: the operation (span) names of a service."""
        names = sorted({op.name for op in queries.operations(service, None)})
        return _ok(names)

    @get("/operations", sync_to_thread=True)
    def operations(
        self,
        queries: TelemetryQueries,
        service: Annotated[str, Parameter(max_length=1024)],
        span_kind: Annotated[str | None, Parameter(query="spanKind", max_length=32)] = None,
    ) -> JaegerResponse:
        """Jaeger: operations of a service with their span kind."""
        kind = KINDS.get(span_kind.lower(), "?") if span_kind else None
        ops = queries.operations(service, None, kind)
        return _ok([JaegerOperation(op.name, op.kind.lower()) for op in ops])

    @get("/traces", sync_to_thread=True)
    def search(
        self,
        queries: TelemetryQueries,
        service: Q = None,
        operation: Q = None,
        tags: Annotated[str | None, Parameter(max_length=4096)] = None,
        start: Annotated[str | None, Parameter(description="Unix µs.", max_length=20)] = None,
        end: Annotated[str | None, Parameter(description="Unix µs.", max_length=20)] = None,
        lookback: Annotated[str | None, Parameter(max_length=32)] = None,
        min_duration: Annotated[str | None, Parameter(query="minDuration", max_length=32)] = None,
        max_duration: Annotated[str | None, Parameter(query="maxDuration", max_length=32)] = None,
        limit: Annotated[str | None, Parameter(max_length=12)] = None,
        trace_id: Annotated[list[str] | None, Parameter(query="traceID")] = None,
    ) -> Response[JaegerResponse]:
        """Jaeger: traces with a span matching the query, most recent first (limit capped)."""
        if trace_id:
            return _ok_body(_traces(queries, [parse_trace_id(t) for t in trace_id[:MAX_LIMIT]]))
        if not service:
            raise ValidationException(detail="parameter 'service' is required")
        if limit is not None and not limit.isdigit():
            raise ValidationException(detail="limit: a whole number")
        count = min(int(limit or 20) or 20, MAX_LIMIT)
        start_ns, end_ns = _micros(start, "start"), _micros(end, "end")
        if end_ns is None:
            latest = queries.latest(Table.TRACES)
            end_ns = (latest + 1) if latest is not None else 0
        if start_ns is None:
            back = _DEFAULT_LOOKBACK
            if lookback and lookback != "custom":
                back = parse_duration(lookback, "lookback") or back
            start_ns = max(0, end_ns - back)
        if end_ns <= start_ns:
            raise ValidationException(detail="end must be after start")
        span_filter = _span_filter(
            service,
            operation or None,
            _parse_tags(tags),
            TimeWindow(start_ns, end_ns),
            parse_duration(min_duration, "minDuration"),
            parse_duration(max_duration, "maxDuration"),
        )
        ids = queries.search_trace_ids(span_filter, count)
        return _ok_body(_traces(queries, ids))

    @get("/traces/{trace_id:str}", sync_to_thread=True)
    def trace(
        self,
        queries: TelemetryQueries,
        trace_id: Annotated[str, Parameter(pattern=TRACE_ID_PATTERN)],
    ) -> Response[JaegerResponse]:
        """Jaeger: one trace."""
        found = _traces(queries, [parse_trace_id(trace_id)])
        if not found:
            raise HTTPException(status_code=404, detail="trace not found")
        return _ok_body(found)

    @get("/dependencies", sync_to_thread=True)
    def jaeger_dependencies(
        self,
        queries: TelemetryQueries,
        end_ts: Annotated[str | None, Parameter(query="endTs", max_length=16)] = None,
        lookback: Annotated[
            str | None, Parameter(description="Milliseconds.", max_length=16)
        ] = None,
    ) -> JaegerResponse:
        """Jaeger: calls between services (from the service map), over ``lookback`` ms before
        ``endTs`` (Unix ms; default: the newest span)."""
        for name, value in (("endTs", end_ts), ("lookback", lookback)):
            if value is not None and not value.isdigit():
                raise ValidationException(detail=f"{name}: Unix milliseconds expected")
        if end_ts is None:
            latest = queries.latest(Table.TRACES)
            end_ns = (latest + 1) if latest is not None else 0
        else:
            end_ns = int(end_ts) * _MS
        back = int(lookback) * _MS if lookback else 24 * 3600 * 10**9
        window = TimeWindow(max(0, end_ns - back), max(end_ns, 1))
        edges = queries.service_map(window).edges
        return _ok([JaegerDependency(e.source, e.target, e.calls) for e in edges])
