"""What the parts of a running server share: settings, store, pipeline, counters."""

from __future__ import annotations

from dataclasses import dataclass, field

from opstrata.alertbook import AlertBook
from opstrata.fanout import ConsumerRunner
from opstrata.ingest import IngestPipeline
from opstrata.kernel import Registry
from opstrata.notifiers import NotifierRunner
from opstrata.selfmetrics import SelfMetrics
from opstrata.settings import Settings
from opstrata.storage.base import Store

__all__ = ["Runtime"]


@dataclass(slots=True)
class Runtime:
    settings: Settings
    store: Store
    metrics: SelfMetrics
    pipeline: IngestPipeline
    registry: Registry
    consumers: list[ConsumerRunner] = field(default_factory=list)
    notifiers: list[NotifierRunner] = field(default_factory=list)
    alertbook: AlertBook | None = None
    ready: bool = False
