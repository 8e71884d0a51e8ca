"""``/api/v1/alerts``, ``/api/v1/incidents`` and ``/api/v1/plugins``."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, get, post
from litestar.exceptions import NotFoundException
from litestar.params import Parameter

from opstrata.alerts import Alert, Incident
from opstrata.api.params import TimeParam, parse_time
from opstrata.kernel import PluginInfo
from opstrata.runtime import Runtime

__all__ = ["AlertController", "IncidentController", "PluginController"]

MAX_LIMIT = 1000
Limit = Annotated[int, Parameter(ge=1, le=MAX_LIMIT, description="Page size.")]
Cursor = Annotated[
    str | None, Parameter(description="`next_cursor` of the previous page.", max_length=64)
]


class AlertPage(msgspec.Struct, frozen=True):
    alerts: list[Alert]
    next_cursor: str | None


class IncidentPage(msgspec.Struct, frozen=True):
    incidents: list[Incident]
    next_cursor: str | None


class IncidentLogLine(msgspec.Struct, frozen=True):
    time_unix_nano: int
    service: str
    severity_text: str
    severity_number: int
    body: str
    trace_id: str
    span_id: str


class IncidentDetail(msgspec.Struct, frozen=True):
    """One incident with everything behind it: its alerts, the exemplar traces its alerts
    point at, and the log lines of those traces and of its services while it lasted."""

    incident: Incident
    alerts: list[Alert]
    exemplar_trace_ids: list[str]
    log_lines: list[IncidentLogLine]


_MAX_EXEMPLARS = 20
_LOG_LINES = 50
_MINUTE = 60_000_000_000


class ConsumerState(msgspec.Struct, frozen=True):
    name: str
    signals: list[str]
    state: str
    offset: int
    lag: int
    batches: int
    rows: int
    errors: int
    last_error: str


class PluginOut(msgspec.Struct, frozen=True):
    name: str
    version: str
    builtin: bool
    hooks: list[str]
    consumers: list[ConsumerState]
    detectors: list[str]
    notifiers: list[str]
    routes: str | None


def _cursor(items: list, limit: int) -> str | None:
    return items[-1].id if len(items) == limit else None


class AlertController(Controller):
    path = "/api/v1/alerts"

    @get("/", sync_to_thread=True)
    def list_alerts(
        self,
        runtime: Runtime,
        limit: Limit = 100,
        cursor: Cursor = None,
        status: Annotated[str | None, Parameter(pattern="^(firing|resolved)$")] = None,
        plugin: Annotated[str | None, Parameter(max_length=200)] = None,
        incident_id: Annotated[str | None, Parameter(max_length=64)] = None,
    ) -> AlertPage:
        """Alerts after dedup, newest first."""
        alerts = runtime.store.alerts(
            status=status, plugin=plugin, incident_id=incident_id, before=cursor, limit=limit
        )
        return AlertPage(alerts, _cursor(alerts, limit))


class IncidentController(Controller):
    path = "/api/v1/incidents"

    @get("/", sync_to_thread=True)
    def list_incidents(
        self,
        runtime: Runtime,
        limit: Limit = 100,
        cursor: Cursor = None,
        status: Annotated[str | None, Parameter(pattern="^(open|acknowledged|resolved)$")] = None,
        service: Annotated[str | None, Parameter(max_length=200)] = None,
        layer: Annotated[str | None, Parameter(pattern="^(aiops|mlops|llmops)$")] = None,
        entity: Annotated[
            str | None,
            Parameter(
                description="`kind:name`, e.g. `service:checkout` or `node:gpu-node-1`.",
                pattern="^[a-z_]+:.+$",
                max_length=300,
            ),
        ] = None,
        severity: Annotated[
            str | None, Parameter(pattern="^(info|warning|error|critical)$")
        ] = None,
        start: TimeParam = None,
        end: TimeParam = None,
    ) -> IncidentPage:
        """Incidents, newest first; filters combine. ``start``/``end`` bound the opening time."""
        incidents = runtime.store.incidents(
            statuses=[status] if status else None,
            service=service,
            layer=layer,
            entity=tuple(entity.split(":", 1)) if entity else None,
            severity=severity,
            opened_from=parse_time(start, "start"),
            opened_to=parse_time(end, "end"),
            before=cursor,
            limit=limit,
        )
        return IncidentPage(incidents, _cursor(incidents, limit))

    @get("/{incident_id:str}", sync_to_thread=True)
    def get_incident(self, runtime: Runtime, incident_id: str) -> IncidentDetail:
        """One incident: timeline, root-cause candidates with their evidence (and the baseline
        ranking beside them), its alerts, exemplar traces and log lines."""
        found = runtime.store.incidents(incident_id=incident_id, limit=1)
        if not found:
            raise NotFoundException(detail=f"incident {incident_id} not found")
        incident = found[0]
        alerts = runtime.store.alerts(ids=incident.alert_ids, limit=MAX_LIMIT)
        exemplars: list[str] = []
        for alert in sorted(alerts, key=lambda a: -a.score):
            for trace_id in alert.evidence.exemplar_trace_ids:
                if trace_id not in exemplars and len(exemplars) < _MAX_EXEMPLARS:
                    exemplars.append(trace_id)
        end = (incident.resolved_unix_nano or incident.updated_unix_nano) + _MINUTE
        lines = runtime.store.incident_logs(
            trace_ids=exemplars,
            services=incident.services,
            start_unix_nano=incident.opened_unix_nano - 5 * _MINUTE,
            end_unix_nano=end,
            limit=_LOG_LINES,
        )
        return IncidentDetail(
            incident,
            alerts,
            exemplars,
            [msgspec.convert(line, IncidentLogLine) for line in lines],
        )

    @post("/{incident_id:str}/ack", sync_to_thread=True, status_code=200)
    def acknowledge(self, runtime: Runtime, incident_id: str) -> Incident:
        """Acknowledge an incident: someone is on it."""
        return self._change(runtime, incident_id, "ack")

    @post("/{incident_id:str}/resolve", sync_to_thread=True, status_code=200)
    def resolve(self, runtime: Runtime, incident_id: str) -> Incident:
        """Resolve an incident by hand."""
        return self._change(runtime, incident_id, "resolve")

    @staticmethod
    def _change(runtime: Runtime, incident_id: str, what: str) -> Incident:
        book = runtime.alertbook
        assert book is not None
        change = book.acknowledge(incident_id) if what == "ack" else book.resolve(incident_id)
        if change is not None:
            return change.incident
        found = runtime.store.incidents(incident_id=incident_id, limit=1)
        if not found:
            raise NotFoundException(detail=f"incident {incident_id} not found")
        # Already in the asked-for state (or resolved): nothing changed.
        return found[0]


class PluginController(Controller):
    path = "/api/v1/plugins"

    @get("/", sync_to_thread=False)
    def list_plugins(self, runtime: Runtime) -> list[PluginOut]:
        """Loaded plugins, with version, hooks, consumers and their state."""
        return [plugin_out(runtime, info) for info in runtime.registry.plugins]


def plugin_out(runtime: Runtime, info: PluginInfo) -> PluginOut:
    registry = runtime.registry
    consumers = [
        ConsumerState(
            name=r.consumer.name,
            signals=sorted(s.value for s in r.consumer.signals),
            state=r.state,
            offset=r.offset,
            lag=r.lag,
            batches=r.batches,
            rows=r.rows,
            errors=r.errors,
            last_error=r.last_error,
        )
        for r in runtime.consumers
        if r.plugin == info.name
    ]
    has_routes = any(plugin == info.name for plugin, _ in registry.routes)
    return PluginOut(
        name=info.name,
        version=info.version,
        builtin=info.builtin,
        hooks=info.hooks,
        consumers=consumers,
        detectors=[n for n, p in registry.detectors.names().items() if p == info.name],
        notifiers=[n.name for p, n in registry.notifiers if p == info.name],
        routes=f"/api/v1/{info.name}/" if has_routes else None,
    )
