"""opstrata's own counters, exposed on ``/metrics`` in Prometheus text.

The server never traces itself into its own pipeline; these counters are the whole of its
self-observation. Counters move per request or per commit, never per item.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from opstrata.storage.base import CommitStats
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

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
            "Items durably committed and acknowledged.",
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

    def render(self) -> bytes:
        return generate_latest(self.registry)
