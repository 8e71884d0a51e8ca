"""opstrata: one OpenTelemetry-native backend for AIOps, MLOps and LLMOps.

What a plugin needs is importable from here: ``hookimpl`` to mark hook implementations, the
:class:`Consumer` base class and what it receives, the alert model it emits, and the
:class:`Notifier` protocol.
"""

from __future__ import annotations

__version__ = "0.1.0"

from opstrata.alerts import (
    Alert,
    AlertEvent,
    Entity,
    Evidence,
    Incident,
    IncidentChange,
    Layer,
    Severity,
)
from opstrata.consumers import CommittedBatch, Consumer, ConsumerContext
from opstrata.hookspecs import hookimpl
from opstrata.notifiers import Notifier
from opstrata.schema import Signal, Table

__all__ = [
    "Alert",
    "AlertEvent",
    "CommittedBatch",
    "Consumer",
    "ConsumerContext",
    "Entity",
    "Evidence",
    "Incident",
    "IncidentChange",
    "Layer",
    "Notifier",
    "Severity",
    "Signal",
    "Table",
    "__version__",
    "hookimpl",
]
