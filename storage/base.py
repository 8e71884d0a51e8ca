"""The ``Store`` protocol: what the pipeline and the API need of any store.

Exceptions::

    StoreError                 the store failed; the data of the call was not committed
    └── StoreClosed            the store is shut down (or shutting down)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import pyarrow as pa

from opstrata.alerts import Alert, Incident
from opstrata.consumers import CommittedBatch
from opstrata.schema import Signal, Table

__all__ = ["CommitStats", "Store", "StoreClosed", "StoreError"]


class StoreError(RuntimeError):
    """A write or read failed inside the store."""


class StoreClosed(StoreError):
    """The store no longer accepts writes."""


class CommitStats:
    """Counters a store keeps about its group commits (read by ``/metrics``)."""

    __slots__ = ("commit_seconds_total", "commits", "last_commit_seconds", "rows_committed")

    def __init__(self) -> None:
        self.commits = 0
        self.rows_committed = 0
        self.commit_seconds_total = 0.0
        self.last_commit_seconds = 0.0


@runtime_checkable
class Store(Protocol):
    """A durable home for telemetry batches.

    ``write`` is the only call on the ingest path. It returns once the batches are durable — a
    ``kill -9`` right after it returns loses nothing — with the sequence number given to them.
    Sequence numbers grow by one per ``write`` call, in commit order, and survive restarts.
    """

    stats: CommitStats

    def start(self) -> None:
        """Open (and create, or migrate) the store. Called once before any other call."""

    async def write(self, batches: Sequence[tuple[Table, pa.RecordBatch]]) -> int:
        """Commit the batches of one request atomically; return their sequence number."""

    def last_sequence(self) -> int:
        """The highest sequence number committed so far (0 when empty)."""

    def count(self, table: Table) -> int:
        """Rows stored in ``table``."""

    def trace(self, trace_id: str) -> pa.Table:
        """The spans of one trace (hex id), in start-time order."""

    def read_batches(
        self, after_seq: int, upto_seq: int, signals: frozenset[Signal], limit: int = 64
    ) -> list[CommittedBatch]:
        """Committed batches with ``after_seq < seq <= upto_seq`` of the given signals, in
        sequence order, at most ``limit``: how a consumer that fell behind catches up."""

    def save_alerts(self, alerts: Sequence[Alert]) -> None:
        """Insert or replace alerts (by id)."""

    def save_incidents(self, incidents: Sequence[Incident]) -> None:
        """Insert or replace incidents (by id)."""

    def load_alerts(self, firing_only: bool = False) -> list[Alert]:
        """All alerts (or the firing ones), to resume dedup after a restart."""

    def load_incidents(self, open_only: bool = False) -> list[Incident]:
        """All incidents (or the open and acknowledged ones), to resume the engine."""

    def alerts(self, **filters: Any) -> list[Alert]:
        """Alerts newest first; filters ``status``, ``plugin``, ``incident_id``, ``ids``,
        ``before`` (a cursor id) and ``limit``."""

    def incidents(self, **filters: Any) -> list[Incident]:
        """Incidents newest first; filters ``statuses``, ``incident_id``, ``before``, ``limit``."""

    def delete_before(self, cutoff_unix_nano: int) -> int:
        """Delete telemetry whose event time is before the cutoff; return rows deleted."""

    def shutdown(self, timeout: float = 30.0) -> None:
        """Commit what is queued, then close. Idempotent."""
