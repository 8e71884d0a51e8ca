"""opstrata's own counters, exposed on ``/metrics`` in Prometheus text.

The server never traces itself into its own pipeline; these counters are the whole of its
self-observation. Counters move per request or per commit, never per item.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from opstrata.storage.base import CommitStats

__all__ = ["SelfMetrics"]


class _CommitCollector(Collector):
    def __init__(self, stats: Callable[[], CommitStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        yield CounterMetricFamily(
            "opstrata_commits", "Group commits made by the store.", value=stats.commits
        )
        yield CounterMetricFamily(
            "opstrata_commit_rows",
            "Rows committed by the store.",
            value=stats.rows_committed,
        )
        yield CounterMetricFamily(
            "opstrata_commit_seconds",
            "Time spent in group commits.",
            value=stats.commit_seconds_total,
        )
        yield GaugeMetricFamily(
            "opstrata_last_commit_seconds",
            "Duration of the most recent group commit.",
            value=stats.last_commit_seconds,
        )


class _KernelCollector(Collector):
    def __init__(self, consumers: Sequence[Any], notifiers: Sequence[Any], alertbook: Any) -> None:
        self._consumers = consumers
        self._notifiers = notifiers
        self._alertbook = alertbook

    def collect(self) -> Iterator[Metric]:
        families = {
            "lag": GaugeMetricFamily(
                "opstrata_consumer_lag_batches",
                "Committed batches a consumer has not finished yet.",
                labels=["consumer"],
            ),
            "behind": GaugeMetricFamily(
                "opstrata_consumer_behind",
                "1 while a consumer reads missed batches from the store.",
                labels=["consumer"],
            ),
            "batches": CounterMetricFamily(
                "opstrata_consumer_batches", "Batches a consumer finished.", labels=["consumer"]
            ),
            "rows": CounterMetricFamily(
                "opstrata_consumer_rows",
                "Rows in the batches a consumer finished.",
                labels=["consumer"],
            ),
            "errors": CounterMetricFamily(
                "opstrata_consumer_errors", "Exceptions raised by a consumer.", labels=["consumer"]
            ),
            "catch_up": CounterMetricFamily(
                "opstrata_consumer_catch_up_batches",
                "Batches a consumer read from the store after falling behind.",
                labels=["consumer"],
            ),
            "busy": CounterMetricFamily(
                "opstrata_consumer_busy_seconds", "Time spent in consume().", labels=["consumer"]
            ),
        }
        for runner in self._consumers:
            label = [runner.label]
            families["lag"].add_metric(label, runner.lag)
            families["behind"].add_metric(label, 1 if runner.behind else 0)
            families["batches"].add_metric(label, runner.batches)
            families["rows"].add_metric(label, runner.rows)
            families["errors"].add_metric(label, runner.errors)
            families["catch_up"].add_metric(label, runner.catch_up_batches)
            families["busy"].add_metric(label, runner.busy_seconds)
        yield from families.values()
        delivered = CounterMetricFamily(
            "opstrata_notifications",
            "Incident changes handed to notifiers, by outcome.",
            labels=["notifier", "outcome"],
        )
        for runner in self._notifiers:
            delivered.add_metric([runner.label, "delivered"], runner.delivered)
            delivered.add_metric([runner.label, "failed"], runner.failed)
            delivered.add_metric([runner.label, "dropped"], runner.dropped)
        yield delivered
        book = self._alertbook
        yield CounterMetricFamily(
            "opstrata_alert_events",
            "Alert events emitted by plugins (before dedup).",
            value=book.events,
        )
        yield CounterMetricFamily(
            "opstrata_alert_events_dropped",
            "Alert events lost because the alert queue stayed full.",
            value=book.dropped,
        )
        yield CounterMetricFamily(
            "opstrata_alerts_created", "Distinct alerts after dedup.", value=book.alerts_created
        )
        yield CounterMetricFamily(
            "opstrata_incident_changes",
            "Incident changes made by the incident engine.",
            value=book.incident_changes,
        )


class SelfMetrics:
    """The counters of one server instance, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.received_items = Counter(
            "opstrata_received_items",
            "Items (spans, metric points, log records) in decoded requests.",
            ["signal"],
            registry=r,
        )
        self.committed_items = Counter(
            "opstrata_committed_items",
            "Items loaded into the store (acknowledged earlier, once in the fsynced ingest log).",
            ["signal"],
            registry=r,
        )
        self.rejected_items = Counter(
            "opstrata_rejected_items",
            "Items refused: invalid items (partial success) or items of a failed commit.",
            ["signal", "reason"],
            registry=r,
        )
        self.rejected_requests = Counter(
            "opstrata_rejected_requests",
            "Whole requests refused with a permanent error, by reason.",
            ["signal", "reason"],
            registry=r,
        )
        self.throttled_requests = Counter(
            "opstrata_throttled_requests",
            "Requests answered 'retry later' because the admission queue was full.",
            ["signal"],
            registry=r,
        )
        self.truncations = Counter(
            "opstrata_truncations",
            "Attributes dropped past the count limit, and values cut to the length limit.",
            ["signal", "kind"],
            registry=r,
        )
        self.queue_bytes = Gauge(
            "opstrata_queue_bytes", "Bytes of requests being decoded or committed.", registry=r
        )
        self.queue_requests = Gauge(
            "opstrata_queue_requests", "Requests being decoded or committed.", registry=r
        )
        self.queue_capacity_bytes = Gauge(
            "opstrata_queue_capacity_bytes", "Admission bound in bytes.", registry=r
        )

    def watch_store(self, stats: Callable[[], CommitStats]) -> None:
        self.registry.register(_CommitCollector(stats))

    def watch_kernel(
        self, consumers: Sequence[Any], notifiers: Sequence[Any], alertbook: Any
    ) -> None:
        self.registry.register(_KernelCollector(consumers, notifiers, alertbook))

    def render(self) -> bytes:
        return generate_latest(self.registry)
