"""``/api/v1/services`` (RED per service, operations) and ``/api/v1/service-map``."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, get
from litestar.exceptions import NotFoundException
from litestar.params import Parameter

from opstrata.api.params import TimeParam, parse_time, step_ns, window_bounds
from opstrata.api.traces import KINDS, _choice
from opstrata.storage.base import TelemetryQueries
from opstrata.storage.query_types import Operation, ServiceMap, ServiceRED, TimeWindow

__all__ = ["ServiceController", "ServiceMapController"]

Step = Annotated[
    str | None,
    Parameter(
        description="Series step: seconds with a unit (`60s`, `5m`) or nanoseconds.", max_length=32
    ),
]


class ServicesOut(msgspec.Struct, frozen=True):
    start_unix_nano: int
    end_unix_nano: int
    step_seconds: float
    services: list[ServiceRED]


class OperationsOut(msgspec.Struct, frozen=True):
    service: str
    start_unix_nano: int
    end_unix_nano: int
    operations: list[Operation]


def _window(queries: TelemetryQueries, start: str | None, end: str | None) -> TimeWindow:
    start_ns, end_ns = parse_time(start, "start"), parse_time(end, "end")
    window_bounds(start_ns, end_ns)
    return queries.window(start_ns, end_ns)


class ServiceController(Controller):
    path = "/api/v1/services"

    @get("/", sync_to_thread=True)
    def list_services(
        self,
        queries: TelemetryQueries,
        start: TimeParam = None,
        end: TimeParam = None,
        step: Step = None,
    ) -> ServicesOut:
        """Every service with spans in the window, with RED over its requests and a series
        per step (default: the last hour of data, one-minute steps)."""
        window = _window(queries, start, end)
        step_value = step_ns(step, window.start, window.end, 60 * 10**9)
        services = queries.services(window, step_value)
        return ServicesOut(window.start, window.end, step_value / 1e9, services)

    @get("/{service:str}", sync_to_thread=True)
    def get_service(
        self,
        queries: TelemetryQueries,
        service: str,
        start: TimeParam = None,
        end: TimeParam = None,
        step: Step = None,
    ) -> ServiceRED:
        """RED of one service over the window, with its series."""
        window = _window(queries, start, end)
        step_value = step_ns(step, window.start, window.end, 60 * 10**9)
        found = queries.services(window, step_value, service=service)
        if not found:
            raise NotFoundException(detail=f"no spans of service {service!r} in the window")
        return found[0]

    @get("/{service:str}/operations", sync_to_thread=True)
    def operations(
        self,
        queries: TelemetryQueries,
        service: str,
        start: TimeParam = None,
        end: TimeParam = None,
        kind: Annotated[str | None, Parameter(description="Only spans of this kind.")] = None,
    ) -> OperationsOut:
        """The span names of a service with their kind, counts, error rate and latency."""
        window = _window(queries, start, end)
        ops = queries.operations(service, window, _choice(kind, KINDS, "kind"))
        return OperationsOut(service, window.start, window.end, ops)


class ServiceMapController(Controller):
    path = "/api/v1/service-map"

    @get("/", sync_to_thread=True)
    def service_map(
        self, queries: TelemetryQueries, start: TimeParam = None, end: TimeParam = None
    ) -> ServiceMap:
        """Services and the calls between them in the window (default: the last hour of data)."""
        return queries.service_map(_window(queries, start, end))
