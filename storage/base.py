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

__all__ = ["CommitStats", "Store", "StoreClosed", "StoreError", "TelemetryQueries"]


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
        """Incidents newest first; filters ``statuses``, ``incident_id``, ``service``,
        ``layer``, ``entity`` (kind, name), ``severity``, ``opened_from``/``opened_to`` (Unix
        ns), ``before`` (a cursor id), ``limit``."""

    def incident_logs(self, **query: Any) -> list[dict]:
        """Log lines of an incident: those of ``trace_ids``, and those of ``services`` at
        ``min_severity`` or above between ``start_unix_nano`` and ``end_unix_nano``; oldest
        first, at most ``limit``."""

    def delete_before(self, cutoff_unix_nano: int) -> int:
        """Delete telemetry whose event time is before the cutoff; return rows deleted."""

    def shutdown(self, timeout: float = 30.0) -> None:
        """Commit what is queued, then close. Idempotent."""


@runtime_checkable
class TelemetryQueries(Protocol):
    """The read side of a store, for the HTTP API (types in ``storage/query_types.py``).

    A store provides it through a ``queries()`` method; the DuckDB store's lives beside it in
    ``storage/duckdb_queries.py`` (``storage.queries.queries_for`` finds either). Times are Unix
    nanoseconds of event time; pages are newest first with an opaque cursor; ``ValueError``
    means the query cannot be answered as asked (a bad cursor, an unknown metric).
    """

    def start(self) -> None:
        """Start background work (the DuckDB store's trace index)."""

    def stop(self) -> None:
        """Stop it."""

    def latest(self, table: Table) -> int | None:
        """The newest event time in ``table``, ``None`` when empty."""

    def window(self, start: int | None, end: int | None, table: Table = ...) -> Any:
        """A ``TimeWindow``: a missing end is the newest event time, a missing start an hour
        before the end."""

    def trace(self, trace_id: str) -> pa.Table:
        """The spans of one trace (``otel_traces`` columns), in start-time order."""

    def traces(self, trace_ids: list[str]) -> pa.Table:
        """The spans of several traces."""

    def search_spans(self, f: Any, limit: int, cursor: str | None = None) -> Any:
        """A ``SpanPage`` of spans matching a ``SpanFilter``, newest first."""

    def search_trace_ids(self, f: Any, limit: int) -> list[str]:
        """Ids of traces with a span matching a ``SpanFilter``, most recent first."""

    def service_names(self, start: int | None = None, end: int | None = None) -> list[str]:
        """Services that sent spans (in the window)."""

    def services(self, window: Any, step_ns: int, service: str | None = None) -> list[Any]:
        """``ServiceRED`` per service over the window, with a series per step."""

    def operations(self, service: str, window: Any, kind: str | None = None) -> list[Any]:
        """``Operation`` (span name and kind) statistics of one service."""

    def service_map(self, window: Any) -> Any:
        """The ``ServiceMap`` of the window."""

    def search_logs(self, f: Any, limit: int, cursor: str | None = None) -> Any:
        """A ``LogPage`` of log records matching a ``LogFilter``, newest first."""

    def metric_names(self, start: int | None, end: int | None) -> list[Any]:
        """``MetricInfo`` per metric name and type."""

    def metric_series(
        self, name: str, start: int | None, end: int | None, limit: int, offset: int
    ) -> list[Any]:
        """``MetricSeries`` (label sets) of one metric."""

    def metric_range(self, **query: Any) -> Any:
        """A ``MetricRange``: ``name``, ``start``, ``end``, ``step_ns``, ``aggregation``,
        ``group_by``, ``attributes``."""

    def exemplars(
        self, name: str, window: Any, attributes: dict[str, str], limit: int
    ) -> list[Any]:
        """``Exemplar`` records of a metric, newest first."""
