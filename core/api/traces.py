"""``/api/v1/traces`` (one trace, its logs) and ``/api/v1/spans`` (span search)."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, MediaType, Request, Response, get
from litestar.exceptions import NotFoundException, ValidationException
from litestar.params import Parameter

from opstrata.api.convert import logs_from_arrow, spans_from_arrow
from opstrata.api.models import LogPageOut, SpanPageOut, TraceOut
from opstrata.api.params import (
    Cursor,
    Limit,
    TimeParam,
    attribute_filters,
    parse_duration,
    parse_time,
    parse_trace_id,
    window_bounds,
)
from opstrata.api.trace_render import read_traces, trace_body
from opstrata.storage.base import TelemetryQueries
from opstrata.storage.query_types import LogFilter, SpanFilter

__all__ = ["SpanController", "TraceController"]

TRACE_ID_PATTERN = "^[0-9a-fA-F]{32}$"
STATUSES = {"unset": "Unset", "ok": "Ok", "error": "Error"}
KINDS = {
    k.lower(): k for k in ("Unspecified", "Internal", "Server", "Client", "Producer", "Consumer")
}
Text = Annotated[str | None, Parameter(max_length=1024)]


def _choice(value: str | None, choices: dict[str, str], name: str) -> str | None:
    if value is None:
        return None
    found = choices.get(value.lower())
    if found is None:
        raise ValidationException(detail=f"{name}: one of {', '.join(choices.values())}")
    return found


class TraceController(Controller):
    path = "/api/v1/traces"

    @get("/{trace_id:str}", sync_to_thread=True)
    def get_trace(
        self,
        queries: TelemetryQueries,
        trace_id: str = Parameter(description="Trace id, 32 hex digits.", pattern=TRACE_ID_PATTERN),
    ) -> Response[TraceOut]:
        """All spans of one trace, in tree order (depth first, siblings by start time)."""
        trace_id = parse_trace_id(trace_id)
        table = read_traces(queries, [trace_id])
        if table.num_rows == 0:
            raise NotFoundException(detail=f"trace {trace_id} not found")
        # Encoded here, column by column (trace_render): the body is TraceOut's JSON.
        return Response(trace_body(trace_id, table), media_type=MediaType.JSON)

    @get("/{trace_id:str}/logs", sync_to_thread=True)
    def get_trace_logs(
        self,
        queries: TelemetryQueries,
        trace_id: str = Parameter(description="Trace id, 32 hex digits.", pattern=TRACE_ID_PATTERN),
        limit: Limit = 1000,
        cursor: Cursor = None,
    ) -> LogPageOut:
        """The log records of one trace, newest first."""
        trace_id = parse_trace_id(trace_id)
        try:
            page = queries.search_logs(LogFilter(trace_id=trace_id), limit, cursor)
        except ValueError as exc:
            raise ValidationException(detail=str(exc)) from None
        return LogPageOut(logs_from_arrow(page.logs), page.next_cursor)


class SpanController(Controller):
    path = "/api/v1/spans"

    @get("/", sync_to_thread=True)
    def search(
        self,
        request: Request,
        queries: TelemetryQueries,
        service: Text = None,
        name: Text = None,
        status: Annotated[str | None, Parameter(description="Unset, Ok or Error.")] = None,
        kind: Annotated[
            str | None,
            Parameter(description="Internal, Server, Client, Producer, Consumer, Unspecified."),
        ] = None,
        min_duration: Annotated[
            str | None, Parameter(description="Nanoseconds or e.g. `250ms`.", max_length=32)
        ] = None,
        max_duration: Annotated[
            str | None, Parameter(description="Nanoseconds or e.g. `2s`.", max_length=32)
        ] = None,
        start: TimeParam = None,
        end: TimeParam = None,
        limit: Limit = 100,
        cursor: Cursor = None,
    ) -> SpanPageOut:
        """Spans newest first. Attribute filters: `attr.KEY=VALUE` (span attributes) and
        `resource.KEY=VALUE` (resource attributes), each an equality, all combined with AND."""
        start_ns, end_ns = parse_time(start, "start"), parse_time(end, "end")
        window_bounds(start_ns, end_ns)
        span_filter = SpanFilter(
            service=service,
            span_name=name,
            status=_choice(status, STATUSES, "status"),
            kind=_choice(kind, KINDS, "kind"),
            min_duration=parse_duration(min_duration, "min_duration"),
            max_duration=parse_duration(max_duration, "max_duration"),
            attributes=attribute_filters(request, "attr."),
            resource=attribute_filters(request, "resource."),
            start=start_ns,
            end=end_ns,
        )
        try:
            page = queries.search_spans(span_filter, limit, cursor)
        except ValueError as exc:
            raise ValidationException(detail=str(exc)) from None
        return SpanPageOut(spans_from_arrow(page.spans), page.next_cursor)
