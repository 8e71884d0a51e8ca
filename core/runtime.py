"""What the parts of a running server share: settings, store, pipeline, counters."""

from __future__ import annotations

from dataclasses import dataclass

from opstrata.ingest import IngestPipeline
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
    ready: bool = False
