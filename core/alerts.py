"""Alerts and incidents: the data plugins produce and the incident engine groups.

Times are event times (the telemetry's own timestamps, Unix nanoseconds), never the wall clock,
so a replay of old telemetry raises the same alerts at the same times.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import msgspec

__all__ = [
    "Alert",
    "AlertEvent",
    "Candidate",
    "Entity",
    "Evidence",
    "Incident",
    "IncidentChange",
    "IncidentStatus",
    "Layer",
    "Severity",
    "TimelineEntry",
]


class Layer(StrEnum):
    AIOPS = "aiops"
    MLOPS = "mlops"
    LLMOPS = "llmops"


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


SEVERITY_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.ERROR: 2, Severity.CRITICAL: 3}


class Entity(msgspec.Struct, frozen=True):
    """What an alert is about: ``kind`` is ``service``, ``operation``, ``host``, ``pod``,
    ``node``, ``model``, ``llm_model``, ``prompt``, ``metric`` …; ``name`` identifies it
    (``checkout``, ``fraud-model:v3``)."""

    kind: str
    name: str


class Evidence(msgspec.Struct, frozen=True, omit_defaults=True):
    """Why the alert fired: the series, what was observed against what was expected."""

    series: str = ""
    observed: float | None = None
    expected: float | None = None
    lower: float | None = None
    upper: float | None = None
    exemplar_trace_ids: list[str] = []
    details: dict[str, Any] = {}


class AlertEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One observation of an alerting condition, as a consumer emits it.

    ``key`` identifies the condition: repeats of the same key update one alert (dedup) rather
    than creating new ones. Leave it empty to use ``plugin/kind/entity``.
    """

    time_unix_nano: int
    kind: str
    layer: Layer
    entity: Entity
    summary: str
    severity: Severity = Severity.WARNING
    score: float = 0.0
    resource: dict[str, str] = {}
    evidence: Evidence = Evidence()
    key: str = ""
    resolved: bool = False
    """True when the condition has ended (an explicit recovery)."""


class Alert(msgspec.Struct, kw_only=True):
    """A deduplicated alert: every event with the same key, folded into one record."""

    id: str
    key: str
    plugin: str
    layer: Layer
    kind: str
    entity: Entity
    resource: dict[str, str]
    severity: Severity
    score: float
    summary: str
    evidence: Evidence
    first_seen_unix_nano: int
    last_seen_unix_nano: int
    events: int = 1
    status: str = "firing"
    incident_id: str | None = None


class IncidentStatus(StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


class Candidate(msgspec.Struct, frozen=True):
    """A root-cause candidate with its score and the evidence behind it."""

    entity: Entity
    score: float
    reason: str
    alert_ids: list[str] = []
    onset_unix_nano: int | None = None
    evidence: dict[str, Any] = {}
    """What the score stands on: the strength of the entity's own anomaly, its onset relative
    to the incident's first, the anomalous entities it would explain, the share of the walk."""


class TimelineEntry(msgspec.Struct, frozen=True):
    time_unix_nano: int
    what: str
    alert_id: str | None = None


class Incident(msgspec.Struct, kw_only=True):
    id: str
    title: str
    status: IncidentStatus
    severity: Severity
    opened_unix_nano: int
    updated_unix_nano: int
    resolved_unix_nano: int | None = None
    acknowledged: bool = False
    alert_ids: list[str] = []
    entities: list[Entity] = []
    layers: list[Layer] = []
    services: list[str] = []
    models: list[str] = []
    candidates: list[Candidate] = []
    baseline_candidates: list[Candidate] = []
    """The trivial ranking beside the real one: entities by the size of their anomaly jump."""
    timeline: list[TimelineEntry] = []
    alert_events: int = 0
    reopened: int = 0
    merged_into: str | None = None
    """Set on an incident that turned out to be part of another (it is then resolved)."""


class IncidentChange(msgspec.Struct, frozen=True):
    """What notifiers receive: an incident and what happened to it."""

    change: str
    """``opened``, ``updated`` (a new alert joined), ``escalated``, ``acknowledged``,
    ``resolved``, ``reopened``, ``merged`` (folded into ``incident.merged_into``); or
    ``refreshed`` (a known alert repeated), which is stored but
    not sent to notifiers."""
    incident: Incident
