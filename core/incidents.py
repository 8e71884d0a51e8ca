"""Incident engines: alerts in, incidents (and their changes) out.

``IncidentEngine`` is the interface; :class:`EntityWindowEngine` is the first engine: it groups
alerts of the same entity that arrive close in (event) time. The topology-aware correlator
replaces it behind the same interface.
"""

from __future__ import annotations

import os
from typing import Protocol

from opstrata.alerts import (
    SEVERITY_RANK,
    Alert,
    Candidate,
    Incident,
    IncidentChange,
    IncidentStatus,
    TimelineEntry,
)

__all__ = ["EntityWindowEngine", "IncidentEngine", "new_id"]

_SECOND = 1_000_000_000


def new_id(prefix: str, time_unix_nano: int) -> str:
    """A sortable id: the event time, then randomness (``inc_0017c2…``)."""
    return f"{prefix}_{time_unix_nano // 1_000_000:013x}{os.urandom(5).hex()}"


class IncidentEngine(Protocol):
    """Groups alerts into incidents. Every call returns the incident changes it caused, for the
    store and the notifiers. Runs on event time: ``now`` is the telemetry's time."""

    def load(self, incidents: list[Incident], alerts: list[Alert]) -> None:
        """Resume from stored open incidents and their alerts after a restart."""

    def on_alert(self, alert: Alert, is_new: bool) -> list[IncidentChange]:
        """A new alert, or a repeat of one (``is_new`` false) that may change its incident."""

    def advance(self, now_unix_nano: int) -> list[IncidentChange]:
        """Event time moved on: resolve incidents that have been quiet long enough."""

    def acknowledge(self, incident_id: str) -> IncidentChange | None: ...

    def resolve(self, incident_id: str) -> IncidentChange | None: ...


class EntityWindowEngine:
    """One incident per entity while its alerts keep coming.

    An alert joins the open incident of its entity; an incident with no alert event for
    ``quiet_seconds`` of event time resolves; an alert for a resolved incident's entity within
    ``reopen_seconds`` of its resolution reopens it. Candidates rank entities by their strongest
    alert score (the trivial baseline the correlation engine must beat).
    """

    def __init__(self, quiet_seconds: float = 600, reopen_seconds: float = 1800) -> None:
        self.quiet_ns = int(quiet_seconds * _SECOND)
        self.reopen_ns = int(reopen_seconds * _SECOND)
        self.incidents: dict[str, Incident] = {}
        self._by_entity: dict[tuple[str, str], str] = {}
        self._last_event: dict[str, int] = {}
        self._alerts: dict[str, Alert] = {}

    def load(self, incidents: list[Incident], alerts: list[Alert]) -> None:
        for alert in alerts:
            self._alerts[alert.id] = alert
        for incident in incidents:
            self.incidents[incident.id] = incident
            for entity in incident.entities:
                self._by_entity[(entity.kind, entity.name)] = incident.id
            self._last_event[incident.id] = incident.updated_unix_nano

    def on_alert(self, alert: Alert, is_new: bool) -> list[IncidentChange]:
        self._alerts[alert.id] = alert
        now = alert.last_seen_unix_nano
        changes = self.advance(now)
        key = (alert.entity.kind, alert.entity.name)
        incident = self.incidents.get(self._by_entity.get(key, ""))
        if incident is not None and incident.status is IncidentStatus.RESOLVED:
            resolved_at = incident.resolved_unix_nano or 0
            if now - resolved_at > self.reopen_ns:
                incident = None
            else:
                incident.status = IncidentStatus.OPEN
                incident.resolved_unix_nano = None
                incident.reopened += 1
                incident.timeline.append(TimelineEntry(now, "reopened", alert.id))
                changes.append(self._touch(incident, alert, "reopened"))
                return changes
        if incident is None:
            incident = Incident(
                id=new_id("inc", alert.first_seen_unix_nano),
                title=f"{alert.entity.kind} {alert.entity.name}: {alert.summary}",
                status=IncidentStatus.OPEN,
                severity=alert.severity,
                opened_unix_nano=alert.first_seen_unix_nano,
                updated_unix_nano=now,
            )
            incident.timeline.append(TimelineEntry(alert.first_seen_unix_nano, "opened", alert.id))
            self.incidents[incident.id] = incident
            self._by_entity[key] = incident.id
            changes.append(self._touch(incident, alert, "opened"))
            return changes
        before = SEVERITY_RANK[incident.severity]
        change = self._touch(incident, alert, "updated")
        if SEVERITY_RANK[incident.severity] > before:
            incident.timeline.append(TimelineEntry(now, f"escalated to {incident.severity}"))
            change = IncidentChange("escalated", change.incident)
        elif is_new:
            incident.timeline.append(TimelineEntry(now, f"alert {alert.kind}", alert.id))
        else:
            # A repeat of a known alert: stored, but not news for the notifiers.
            change = IncidentChange("refreshed", change.incident)
        changes.append(change)
        return changes

    def _touch(self, incident: Incident, alert: Alert, change: str) -> IncidentChange:
        alert.incident_id = incident.id
        if alert.id not in incident.alert_ids:
            incident.alert_ids.append(alert.id)
        if alert.entity not in incident.entities:
            incident.entities.append(alert.entity)
        if alert.layer not in incident.layers:
            incident.layers.append(alert.layer)
        service = alert.resource.get("service.name") or (
            alert.entity.name if alert.entity.kind in ("service", "operation") else ""
        )
        if service and service not in incident.services:
            incident.services.append(service)
        if alert.entity.kind in ("model", "llm_model") and alert.entity.name not in incident.models:
            incident.models.append(alert.entity.name)
        if SEVERITY_RANK[alert.severity] > SEVERITY_RANK[incident.severity]:
            incident.severity = alert.severity
        incident.alert_events += 1
        incident.updated_unix_nano = max(incident.updated_unix_nano, alert.last_seen_unix_nano)
        self._last_event[incident.id] = incident.updated_unix_nano
        incident.candidates = self._rank(incident)
        return IncidentChange(change, incident)

    def _rank(self, incident: Incident) -> list[Candidate]:
        best: dict[tuple[str, str], Candidate] = {}
        for alert_id in incident.alert_ids:
            alert = self._alerts.get(alert_id)
            if alert is None:
                continue
            key = (alert.entity.kind, alert.entity.name)
            current = best.get(key)
            if current is None or alert.score > current.score:
                ids = sorted({*(current.alert_ids if current else []), alert.id})
                best[key] = Candidate(
                    alert.entity, alert.score, f"strongest alert: {alert.summary}", ids
                )
        return sorted(best.values(), key=lambda c: -c.score)

    def advance(self, now_unix_nano: int) -> list[IncidentChange]:
        changes = []
        self._forget_before(now_unix_nano - self.reopen_ns)
        for incident in self.incidents.values():
            if incident.status is IncidentStatus.RESOLVED:
                continue
            if now_unix_nano - self._last_event.get(incident.id, now_unix_nano) >= self.quiet_ns:
                changes.append(
                    self._resolve(incident, now_unix_nano, "resolved after quiet period")
                )
        return changes

    def _forget_before(self, cutoff: int) -> None:
        """Drop incidents resolved before ``cutoff`` (past their reopen window), and their
        alerts: they are stored; memory holds only what can still change."""
        done = [
            incident
            for incident in self.incidents.values()
            if incident.status is IncidentStatus.RESOLVED
            and (incident.resolved_unix_nano or 0) < cutoff
        ]
        for incident in done:
            del self.incidents[incident.id]
            self._last_event.pop(incident.id, None)
            for alert_id in incident.alert_ids:
                self._alerts.pop(alert_id, None)
            for entity in incident.entities:
                if self._by_entity.get((entity.kind, entity.name)) == incident.id:
                    del self._by_entity[(entity.kind, entity.name)]

    def _resolve(self, incident: Incident, now: int, why: str) -> IncidentChange:
        incident.status = IncidentStatus.RESOLVED
        incident.resolved_unix_nano = now
        incident.updated_unix_nano = max(incident.updated_unix_nano, now)
        incident.timeline.append(TimelineEntry(now, why))
        return IncidentChange("resolved", incident)

    def acknowledge(self, incident_id: str) -> IncidentChange | None:
        incident = self.incidents.get(incident_id)
        if incident is None or incident.status is not IncidentStatus.OPEN:
            return None  # unknown, already acknowledged, or resolved: nothing changes
        incident.status = IncidentStatus.ACKNOWLEDGED
        incident.acknowledged = True
        incident.timeline.append(TimelineEntry(incident.updated_unix_nano, "acknowledged"))
        return IncidentChange("acknowledged", incident)

    def resolve(self, incident_id: str) -> IncidentChange | None:
        incident = self.incidents.get(incident_id)
        if incident is None or incident.status is IncidentStatus.RESOLVED:
            return None
        return self._resolve(incident, incident.updated_unix_nano, "resolved by a user")
