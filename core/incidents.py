"""Incident engines: alerts in, incidents (and their changes) out.

``IncidentEngine`` is the interface the alert book drives; the engine the server runs is the
topology-aware :class:`opstrata.correlation.TopologyCorrelator`.
"""

from __future__ import annotations

import os
from typing import Protocol

from opstrata.alerts import Alert, Incident, IncidentChange

__all__ = ["IncidentEngine", "new_id"]


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
