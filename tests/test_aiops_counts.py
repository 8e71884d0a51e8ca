"""AIOps on a real server, fed by the real OpenTelemetry SDK and exporters: points measured
from few requests are judged by their counts.

- A service whose failures go from ~0 % to 30 % raises an ``error_rate`` alert within two
  windows (the count test: errors of a window against the baseline's rate and exposure).
- At low traffic (a handful of requests a minute, log-normal latencies) the RED latency
  quantiles and a latency histogram metric raise nothing over hours; a real slowdown at the
  same traffic still alerts (how many requests lie beyond the forecast, not the quantile of
  five values alone).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExportResult,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind, Status, StatusCode

from tests.otelsdk import make_spans, metric_exporter, resource, span_exporter
from tests.pluginsupport import wait_for
from tests.serverproc import ServerProcess

T0 = 1_767_571_200 * 10**9  # 2026-01-05 00:00 UTC: simulated event time
MINUTE = 60 * 10**9
DAY = 24 * 60 * MINUTE
BOUNDS = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0]
"""The OpenTelemetry semantic conventions' advice for ``http.server.request.duration`` (s)."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # One server for the file: each test has its own services and its own stretch of event
    # time, later than the one before (event time only moves forward).
    proc = ServerProcess(tmp_path_factory.mktemp("counts") / "data").start()
    yield proc
    assert proc.stop() == 0, "".join(proc.output)


def _alerts(server: ServerProcess, kind: str, service: str) -> list[dict]:
    alerts = server.api("/api/v1/alerts", limit=1000, plugin="aiops").json()["alerts"]
    return [a for a in alerts if a["kind"] == kind and a["entity"]["name"].startswith(service)]


def _send_windows(server: ServerProcess, service: str, windows: list[tuple[np.ndarray, np.ndarray]],
                  first: int, histogram: bool = False, base: int = T0) -> None:  # fmt: skip
    """One export per window: the window's requests as server spans (durations in ms,
    failed or not), and optionally their delta histogram of durations in seconds."""
    spans_out = span_exporter(server, "http")
    metrics_out = metric_exporter(server, "http") if histogram else None
    for i, (durations, failed) in enumerate(windows):
        start = base + (first + i) * MINUTE
        step = int(55e9 / max(durations.size, 1))

        def build(tracer, durations=durations, failed=failed, start=start, step=step) -> None:
            for j, (ms, bad) in enumerate(zip(durations.tolist(), failed.tolist(), strict=True)):
                t = start + j * step
                span = tracer.start_span("GET /orders", kind=SpanKind.SERVER, start_time=t)
                if bad:
                    span.set_status(Status(StatusCode.ERROR))
                span.end(end_time=t + int(ms * 1e6))

        assert spans_out.export(make_spans(service, build)) is SpanExportResult.SUCCESS
        if metrics_out is not None:
            seconds = durations / 1e3
            counts = np.histogram(seconds, [0.0, *BOUNDS, np.inf])[0]
            point = HistogramDataPoint(
                attributes={"http.route": "/orders", "http.request.method": "GET"},
                start_time_unix_nano=start,
                time_unix_nano=start + MINUTE - 10**9,
                count=int(seconds.size),
                sum=float(seconds.sum()),
                bucket_counts=[int(c) for c in counts],
                explicit_bounds=BOUNDS,
                min=float(seconds.min()),
                max=float(seconds.max()),
            )
            metric = Metric(
                name="http.server.request.duration", description="", unit="s",
                data=Histogram(data_points=[point],
                               aggregation_temporality=AggregationTemporality.DELTA),
            )  # fmt: skip
            data = MetricsData(
                resource_metrics=[
                    ResourceMetrics(
                        resource=resource(service, **{"host.name": "node-1"}),
                        scope_metrics=[
                            ScopeMetrics(InstrumentationScope("tests.counts"), [metric], "")
                        ],
                        schema_url="",
                    )
                ]
            )
            assert metrics_out.export(data) is MetricExportResult.SUCCESS
    spans_out.shutdown()
    if metrics_out is not None:
        metrics_out.shutdown()


def _close_windows(server: ServerProcess, service: str, until_window: int, base: int) -> None:
    """One request far ahead in event time: every window before it closes."""
    _send_windows(server, f"{service}-clock", [(np.array([1.0]), np.array([False]))],
                  until_window, base=base)  # fmt: skip


def _points(server: ServerProcess, name: str, entity: str) -> int:
    series = server.api("/api/v1/aiops/series", limit=10_000, entity=entity).json()
    return sum(s["points"] for s in series if s["name"] == name)


def test_errors_going_from_almost_none_to_thirty_percent_alert_within_two_windows(
    server: ServerProcess,
) -> None:
    rng = np.random.default_rng(21)
    quiet, change = 60, 60

    def window(error_rate: float) -> tuple[np.ndarray, np.ndarray]:
        n = int(rng.integers(15, 25))
        return rng.lognormal(math.log(30), 0.3, n), rng.random(n) < error_rate

    _send_windows(server, "orders", [window(0.005) for _ in range(quiet)], 0)
    _send_windows(server, "orders", [window(0.3) for _ in range(6)], change)
    _close_windows(server, "orders", change + 10, T0)
    wait_for(lambda: _points(server, "error_ratio", "orders") >= quiet + 6, 30,
             "every window of orders scored")  # fmt: skip
    alerts = wait_for(lambda: _alerts(server, "error_rate", "orders"), 30, "an error_rate alert")
    onsets = sorted(a["first_seen_unix_nano"] for a in alerts)
    # Nothing before the failures began; the service's alert within its first two windows.
    assert onsets[0] >= T0 + change * MINUTE, onsets
    service = [a for a in alerts if a["entity"] == {"kind": "service", "name": "orders"}]
    assert service, alerts
    assert service[0]["first_seen_unix_nano"] <= T0 + (change + 1) * MINUTE
    evidence = service[0]["evidence"]
    assert evidence["observed"] > 0.1 > evidence["expected"]
    assert evidence["exemplar_trace_ids"]


def test_low_traffic_latency_is_quiet_and_a_real_slowdown_still_alerts(
    server: ServerProcess,
) -> None:
    rng = np.random.default_rng(5)
    quiet, slow = 240, 20

    def window(scale: float) -> tuple[np.ndarray, np.ndarray]:
        # A handful of requests a minute, log-normal around 40 ms, now and then a slow one.
        n = int(rng.integers(3, 10))
        ms = rng.lognormal(math.log(40 * scale), 0.6, n)
        ms[rng.random(n) < 0.05] *= 8
        return ms, np.zeros(n, np.bool_)

    base = T0 + DAY  # after the first test's stretch of event time
    _send_windows(server, "quiet", [window(1.0) for _ in range(quiet)], 0, True, base)
    _close_windows(server, "quiet", quiet + 2, base)
    wait_for(lambda: _points(server, "request_rate", "quiet") >= quiet, 30,
             "every window of quiet scored")  # fmt: skip
    # Windows of five requests or more have latency quantiles (``min_spans``).
    assert _points(server, "latency_p50", "quiet") >= quiet // 3
    wait_for(lambda: _points(server, "http.server.request.duration:p50", "quiet") >= quiet, 30,
             "every histogram point scored")  # fmt: skip
    assert not _alerts(server, "latency", "quiet")
    # Four hours of a few requests a minute: nothing. Now every request gets five times
    # slower, at the same traffic: a median of five requests shows it only by its count
    # (all five slower: p = 1/32), so it takes the shift test several windows.
    _send_windows(server, "quiet", [window(5.0) for _ in range(slow)], quiet + 2, True, base)
    _close_windows(server, "quiet", quiet + slow + 10, base)
    alerts = wait_for(lambda: _alerts(server, "latency", "quiet"), 30, "a latency alert")
    names = {a["summary"].split(" of ", 1)[0] for a in alerts}
    assert names & {"latency_p50", "latency_p99", "http.server.request.duration:p50"}, names
    assert min(a["first_seen_unix_nano"] for a in alerts) >= base + (quiet + 2) * MINUTE
    assert min(a["first_seen_unix_nano"] for a in alerts) <= base + (quiet + slow) * MINUTE
