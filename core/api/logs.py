"""``/api/v1/logs``: log search."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, Request, get
from litestar.exceptions import ValidationException
from litestar.params import Parameter

from opstrata.api.convert import logs_from_arrow
from opstrata.api.models import LogPageOut
from opstrata.api.params import (
    Cursor,
    Limit,
    TimeParam,
    attribute_filters,
    parse_time,
    parse_trace_id,
    window_bounds,
)
from opstrata.storage.base import TelemetryQueries
from opstrata.storage.query_types import LogFilter

__all__ = ["LogController"]

SEVERITIES = {
    "trace": 1,
    "debug": 5,
    "info": 9,
    "warn": 13,
    "warning": 13,
    "error": 17,
    "fatal": 21,
}


def parse_severity(text: str | None) -> int | None:
    """A severity number 1-24, or a name (``TRACE`` … ``FATAL``) meaning its lowest number."""
    if text is None or text == "":
        return None
    if text.isdigit() and 1 <= int(text) <= 24:
        return int(text)
    found = SEVERITIES.get(text.lower())
    if found is None:
        raise ValidationException(
            detail="severity: a number 1-24 or TRACE, DEBUG, INFO, WARN, ERROR, FATAL"
        )
    return found


class LogController(Controller):
    path = "/api/v1/logs"

    @get("/", sync_to_thread=True)
    def search(
        self,
        request: Request,
        queries: TelemetryQueries,
        service: Annotated[str | None, Parameter(max_length=1024)] = None,
        severity: Annotated[
            str | None,
            Parameter(
                description="At least this severity: 1-24 or TRACE/DEBUG/INFO/WARN/ERROR/FATAL.",
                max_length=16,
            ),
        ] = None,
        contains: Annotated[
            str | None,
            Parameter(description="Body contains this text (case-insensitive).", max_length=1024),
        ] = None,
        trace_id: Annotated[str | None, Parameter(description="32 hex digits.")] = None,
        start: TimeParam = None,
        end: TimeParam = None,
        limit: Limit = 100,
        cursor: Cursor = None,
    ) -> LogPageOut:
        """Log records newest first. Attribute filters: `attr.KEY=VALUE` (log attributes) and
        `resource.KEY=VALUE`, equalities combined with AND."""
        start_ns, end_ns = parse_time(start, "start"), parse_time(end, "end")
        window_bounds(start_ns, end_ns)
        log_filter = LogFilter(
            service=service,
            min_severity=parse_severity(severity),
            contains=contains or None,
            trace_id=parse_trace_id(trace_id) if trace_id else None,
            attributes=attribute_filters(request, "attr."),
            resource=attribute_filters(request, "resource."),
            start=start_ns,
            end=end_ns,
        )
        try:
            page = queries.search_logs(log_filter, limit, cursor)
        except ValueError as exc:
            raise ValidationException(detail=str(exc)) from None
        return LogPageOut(logs_from_arrow(page.logs), page.next_cursor)
