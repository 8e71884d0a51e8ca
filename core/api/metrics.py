"""``/api/v1/metrics``: names, series, range queries, exemplars."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, Request, get
from litestar.exceptions import NotFoundException, ValidationException
from litestar.params import Parameter

from opstrata.api.params import (
    MAX_LIMIT,
    Limit,
    TimeParam,
    attribute_filters,
    parse_time,
    step_ns,
    window_bounds,
)
from opstrata.schema import Table
from opstrata.storage.base import TelemetryQueries
from opstrata.storage.duckdb_metrics_queries import MetricQueryError
from opstrata.storage.query_types import (
    Exemplar,
    MetricInfo,
    MetricRange,
    MetricSeries,
    TimeWindow,
)

__all__ = ["MetricController"]

_HOUR = 3600 * 10**9
_METRIC_TABLES = [t for t in Table if t.value.startswith("otel_metrics")]


class MetricsOut(msgspec.Struct, frozen=True):
    metrics: list[MetricInfo]


class SeriesPage(msgspec.Struct, frozen=True):
    metric: str
    series: list[MetricSeries]
    next_cursor: str | None


class ExemplarsOut(msgspec.Struct, frozen=True):
    metric: str
    exemplars: list[Exemplar]


def _window(queries: TelemetryQueries, start: str | None, end: str | None) -> TimeWindow:
    """The asked-for window; a missing end is the newest metric point stored, plus 1 ns."""
    start_ns, end_ns = parse_time(start, "start"), parse_time(end, "end")
    window_bounds(start_ns, end_ns)
    if end_ns is None:
        if start_ns is None:
            latest = [t for t in (queries.latest(tb) for tb in _METRIC_TABLES) if t is not None]
            end_ns = max(latest) + 1 if latest else _HOUR
        else:
            end_ns = start_ns + _HOUR
    if start_ns is None:
        start_ns = max(0, end_ns - _HOUR)
    return TimeWindow(start_ns, end_ns)


def _not_found(exc: MetricQueryError) -> Exception:
    text = str(exc)
    if text.startswith("no metric named"):
        return NotFoundException(detail=text)
    return ValidationException(detail=text)


class MetricController(Controller):
    path = "/api/v1/metrics"

    @get("/", sync_to_thread=True)
    def names(
        self, queries: TelemetryQueries, start: TimeParam = None, end: TimeParam = None
    ) -> MetricsOut:
        """Metric names with type, unit, description and how many series and points each has
        (all stored data unless `start`/`end` narrow it)."""
        start_ns, end_ns = parse_time(start, "start"), parse_time(end, "end")
        window_bounds(start_ns, end_ns)
        return MetricsOut(queries.metric_names(start_ns, end_ns))

    @get("/{name:str}/series", sync_to_thread=True)
    def series(
        self,
        queries: TelemetryQueries,
        name: str,
        start: TimeParam = None,
        end: TimeParam = None,
        limit: Limit = 100,
        cursor: Annotated[
            str | None, Parameter(description="`next_cursor` of the previous page.", max_length=12)
        ] = None,
    ) -> SeriesPage:
        """The series (label sets) of a metric."""
        start_ns, end_ns = parse_time(start, "start"), parse_time(end, "end")
        window_bounds(start_ns, end_ns)
        if cursor is not None and not cursor.isdigit():
            raise ValidationException(detail="cursor is not a next_cursor value")
        offset = int(cursor or 0)
        try:
            found = queries.metric_series(name, start_ns, end_ns, limit, offset)
        except MetricQueryError as exc:
            raise _not_found(exc) from None
        next_cursor = str(offset + limit) if len(found) == limit else None
        return SeriesPage(name, found, next_cursor)

    @get("/{name:str}/query", sync_to_thread=True)
    def query(
        self,
        request: Request,
        queries: TelemetryQueries,
        name: str,
        aggregation: Annotated[
            str,
            Parameter(
                description="sum, avg, min, max, rate, or a percentile p50/p90/p99 (histograms).",
                max_length=8,
            ),
        ] = "sum",
        group_by: Annotated[
            str | None,
            Parameter(
                description="Comma-separated labels (point attributes, then resource "
                "attributes; `service.name`).",
                max_length=1024,
            ),
        ] = None,
        start: TimeParam = None,
        end: TimeParam = None,
        step: Annotated[
            str | None, Parameter(description="`60s`, `5m` or nanoseconds.", max_length=32)
        ] = None,
    ) -> MetricRange:
        """A range query: one value per step and group. Filters: `attr.KEY=VALUE`."""
        window = _window(queries, start, end)
        step_value = step_ns(step, window.start, window.end, 60 * 10**9)
        labels = [g.strip() for g in (group_by or "").split(",") if g.strip()]
        if len(labels) > 10:
            raise ValidationException(detail="group_by: at most 10 labels")
        try:
            return queries.metric_range(
                name=name,
                start=window.start,
                end=window.end,
                step_ns=step_value,
                aggregation=aggregation,
                group_by=labels,
                attributes=attribute_filters(request, "attr."),
            )
        except MetricQueryError as exc:
            raise _not_found(exc) from None

    @get("/{name:str}/exemplars", sync_to_thread=True)
    def exemplars(
        self,
        request: Request,
        queries: TelemetryQueries,
        name: str,
        start: TimeParam = None,
        end: TimeParam = None,
        limit: Annotated[int, Parameter(ge=1, le=MAX_LIMIT)] = 100,
    ) -> ExemplarsOut:
        """Exemplars of a metric newest first, each linked to its trace. Filters:
        `attr.KEY=VALUE` on the series' attributes."""
        window = _window(queries, start, end)
        found = queries.exemplars(name, window, attribute_filters(request, "attr."), limit)
        return ExemplarsOut(name, found)
