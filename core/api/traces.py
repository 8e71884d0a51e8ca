"""``/api/v1/traces``."""

from __future__ import annotations

import re

from litestar import Controller, get
from litestar.exceptions import NotFoundException, ValidationException
from litestar.params import Parameter

from opstrata.api.convert import spans_from_arrow
from opstrata.api.models import TraceOut
from opstrata.runtime import Runtime

__all__ = ["TraceController"]

_TRACE_ID = re.compile(r"^[0-9a-fA-F]{32}$")


class TraceController(Controller):
    path = "/api/v1/traces"

    @get("/{trace_id:str}", sync_to_thread=True)
    def get_trace(
        self,
        runtime: Runtime,
        trace_id: str = Parameter(description="Trace id, 32 hex digits."),
    ) -> TraceOut:
        """All spans of one trace, in start-time order."""
        if not _TRACE_ID.match(trace_id):
            raise ValidationException(detail="trace_id must be 32 hexadecimal digits")
        table = runtime.store.trace(trace_id.lower())
        if table.num_rows == 0:
            raise NotFoundException(detail=f"trace {trace_id.lower()} not found")
        spans = spans_from_arrow(table)
        return TraceOut(trace_id=trace_id.lower(), span_count=len(spans), spans=spans)
