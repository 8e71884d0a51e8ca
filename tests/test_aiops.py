"""The AIOps plugin on a real server, fed by the real OpenTelemetry SDK and exporters, in
simulated event time: latency regressions, counter resets, seasonal weeks, new ERROR log
templates, and ``opstrata detect`` scoring exactly as the streaming path does."""

from __future__ import annotations

import csv
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Metric,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind

from tests.otelsdk import (
    log_exporter,
    make_logs,
    make_spans,
    metric_exporter,
    resource,
    span_exporter,
)
from tests.pluginsupport import wait_for
from tests.serverproc import ServerProcess

T0 = 1_767_571_200 * 10**9  # 2026-01-05 00:00 UTC, a Monday: simulated event time
MINUTE = 60 * 10**9
DAY = 24 * 60 * MINUTE
T_LOGS = T0 + 10 * DAY


@pytest.fixture(scope="module")
def aiops_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("aiops") / "data").start()
    yield proc
    assert proc.stop() == 0, "".join(proc.output)


def _wait(condition: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    return wait_for(condition, timeout, what)


def _alerts(server: ServerProcess) -> list[dict]:
    return server.api("/api/v1/alerts", limit=1000, plugin="aiops").json()["alerts"]


def _series(server: ServerProcess, **params: Any) -> list[dict]:
    return server.api("/api/v1/aiops/series", limit=10_000, **params).json()


def _send_metrics(server: ServerProcess, metrics: list[Metric], **res: str) -> None:
    data = MetricsData(
        resource_metrics=[
            ResourceMetrics(
                resource=resource(res.pop("service", "metrics-svc"), **res),
                scope_metrics=[
                    ScopeMetrics(
                        scope=InstrumentationScope("tests.aiops"), metrics=metrics, schema_url=""
                    )
                ],
                schema_url="",
            )
        ]
    )
    exporter = metric_exporter(server, "http")
    assert exporter.export(data) is MetricExportResult.SUCCESS
    exporter.shutdown()


def _gauge(name: str, times: np.ndarray, values: np.ndarray) -> Metric:
    points = [
        NumberDataPoint(
            attributes={"cpu": "total"},
            start_time_unix_nano=0,
            time_unix_nano=int(t),
            value=float(v),
        )
        for t, v in zip(times, values, strict=True)
    ]
    return Metric(name=name, description="", unit="1", data=Gauge(data_points=points))


def _marker_batches(server: ServerProcess, until: int) -> None:
    """A gauge point far ahead in event time: closes every open window of the plugin."""
    _send_metrics(server, [_gauge("tests.clock", np.array([until]), np.array([1.0]))])


def test_latency_regression_raises_latency_alert_with_exemplars(aiops_server) -> None:
    rng = np.random.default_rng(7)
    slow_traces: set[str] = set()
    exporter = span_exporter(aiops_server, "http")
    windows, slow_from = 50, 40
    for w in range(windows):
        start = T0 + w * MINUTE

        def build(tracer, service: str, w=w, start=start) -> None:
            for i in range(12):
                t = start + int(i * 4.5e9)
                ms = rng.lognormal(np.log(20), 0.15)
                if service == "checkout" and w >= slow_from:
                    ms *= 6
                span = tracer.start_span("GET /items", kind=SpanKind.SERVER, start_time=t)
                if service == "checkout" and w >= slow_from:
                    slow_traces.add(format(span.get_span_context().trace_id, "032x"))
                span.end(end_time=t + int(ms * 1e6))

        for service in ("checkout", "catalog"):
            spans = make_spans(service, lambda tracer, b=build, svc=service: b(tracer, svc))
            assert exporter.export(spans) is SpanExportResult.SUCCESS
    _marker_batches(aiops_server, T0 + (windows + 5) * MINUTE)

    def latency_alerts() -> list[dict]:
        return [a for a in _alerts(aiops_server) if a["kind"] == "latency"]

    alerts = _wait(latency_alerts, "a latency alert")
    entities = {(a["entity"]["kind"], a["entity"]["name"]) for a in alerts}
    assert ("service", "checkout") in entities
    assert not any("catalog" in name for _, name in entities), entities
    service_alert = next(
        a for a in alerts if a["entity"] == {"kind": "service", "name": "checkout"}
    )
    assert service_alert["resource"]["service.name"] == "checkout"
    assert service_alert["resource"]["host.name"] == "node-1"
    evidence = service_alert["evidence"]
    assert evidence["exemplar_trace_ids"], evidence
    assert set(evidence["exemplar_trace_ids"]) <= slow_traces
    assert evidence["observed"] > evidence["upper"] > evidence["expected"]
    onset = service_alert["first_seen_unix_nano"]
    assert T0 + slow_from * MINUTE <= onset <= T0 + (slow_from + 3) * MINUTE

    # (A drop of this young series' request rate to zero — 12 requests a minute for 50
    # windows, then none — is no longer asserted: request rates are judged by their counts
    # too since issue 6's noise floor, and on a series this young the other tests, held back
    # by the young factor, do not agree within the few empty windows sent here.)
    exporter.shutdown()


def _counter(name: str, times: np.ndarray, values: np.ndarray, starts: np.ndarray) -> Metric:
    points = [
        NumberDataPoint(
            attributes={}, start_time_unix_nano=int(s), time_unix_nano=int(t), value=float(v)
        )
        for t, v, s in zip(times, values, starts, strict=True)
    ]
    data = Sum(
        data_points=points,
        aggregation_temporality=AggregationTemporality.CUMULATIVE,
        is_monotonic=True,
    )
    return Metric(name=name, description="", unit="{request}", data=data)


def test_counter_reset_raises_nothing(aiops_server) -> None:
    rng = np.random.default_rng(3)
    n, reset = 150, 100
    times = T0 + 2 * 3600 * 10**9 + np.arange(n) * MINUTE
    increments = rng.poisson(600, n).astype(float)
    values = np.cumsum(increments)
    starts = np.full(n, T0 - MINUTE)
    values[reset:] = np.cumsum(increments[reset:])  # the process restarted: counts from zero
    starts[reset:] = times[reset] - MINUTE // 2
    for chunk in range(0, n, 10):
        part = slice(chunk, chunk + 10)
        _send_metrics(
            aiops_server,
            [_counter("http.server.requests", times[part], values[part], starts[part])],
            service="api",
        )

    def watched() -> list[dict]:
        rows = _series(aiops_server, name="http.server.requests:rate")
        return [r for r in rows if r["points"] >= n - 2]

    [row] = _wait(watched, "the counter's rate series to be scored")
    assert row["entity"] == {"kind": "service", "name": "api"}
    assert 8 < row["value"] < 12  # ~600 per minute, as a rate per second
    points = aiops_server.api(f"/api/v1/aiops/series/metrics/{row['id']}/points").json()["points"]
    assert len(points) == n - 2  # the first point and the reset give no rate
    assert max(p["score"] for p in points) < row["threshold"]
    assert not [a for a in _alerts(aiops_server) if a["evidence"]["series"] == row["key"]]


def _seasonal_week(rng: np.random.Generator, step_minutes: int = 10) -> tuple[np.ndarray, ...]:
    start = T0 + DAY  # a Tuesday
    times = start + np.arange(7 * 24 * 60 // step_minutes) * step_minutes * MINUTE
    hours = (times - T0) / 3.6e12
    daily = 40 + 25 * np.sin(2 * np.pi * (hours % 24) / 24 - np.pi / 2)
    return times, daily + rng.normal(0, 1.5, times.size)


def test_flat_seasonal_week_raises_nothing_and_detect_gives_the_same_scores(
    aiops_server, tmp_path: Path
) -> None:
    rng = np.random.default_rng(11)
    times, values = _seasonal_week(rng)
    for chunk in range(0, times.size, 72):
        part = slice(chunk, chunk + 72)
        _send_metrics(
            aiops_server,
            [_gauge("shop.orders.active", times[part], values[part])],
            service="orders",
        )

    def watched() -> list[dict]:
        return [
            r for r in _series(aiops_server, name="shop.orders.active") if r["points"] == times.size
        ]

    [row] = _wait(watched, "a week of points scored")
    assert not [a for a in _alerts(aiops_server) if a["evidence"]["series"] == row["key"]]
    _assert_detect_matches(aiops_server, row, tmp_path)


def test_infrastructure_spike_alerts_on_its_host(aiops_server, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    n = 400
    times = T0 + 9 * DAY + np.arange(n) * MINUTE
    values = 0.3 + rng.normal(0, 0.02, n)
    values[300:304] = 0.97
    for chunk in range(0, n, 50):
        part = slice(chunk, chunk + 50)
        _send_metrics(
            aiops_server,
            [_gauge("system.cpu.utilization", times[part], values[part])],
            service="worker",
            **{"host.name": "db-7"},
        )

    def alert() -> list[dict]:
        return [a for a in _alerts(aiops_server) if a["entity"] == {"kind": "host", "name": "db-7"}]

    [found] = _wait(alert, "a metric alert on host db-7")
    assert found["kind"] == "metric_anomaly"
    assert found["first_seen_unix_nano"] == int(times[300])
    assert found["resource"]["host.name"] == "db-7"
    assert "observed" in found["evidence"], found
    assert found["evidence"]["observed"] > found["evidence"]["upper"]
    # The alert comes at point 300; the last points may still be on their way to the detector.
    [row] = _wait(
        lambda: [
            r for r in _series(aiops_server, name="system.cpu.utilization") if r["points"] == n
        ],
        f"the host series with all {n} points",
    )
    _assert_detect_matches(aiops_server, row, tmp_path, labelled=True)


def _assert_detect_matches(server, row: dict, tmp_path: Path, labelled: bool = False) -> None:
    points = server.api(f"/api/v1/aiops/series/metrics/{row['id']}/points").json()["points"]
    source = tmp_path / "series.csv"
    with source.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["timestamp", "value"])
        for p in points:
            writer.writerow([p["time_unix_nano"], repr(p["value"])])
    out = tmp_path / "scored.csv"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "opstrata.cli",
            "detect",
            str(source),
            "--output",
            str(out),
            "--progress",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "detect: 100.0%" in done.stderr
    with out.open() as handle:
        scored = list(csv.DictReader(handle))
    assert [float(r["anomaly_score"]) for r in scored] == [p["score"] for p in points]
    assert [int(r["label"]) for r in scored] == [p["label"] for p in points]
    assert any(p["label"] for p in points) == labelled


def test_new_error_template_raises_an_alert(aiops_server) -> None:
    rng = np.random.default_rng(2)

    def emit(provider) -> None:
        logger = provider.get_logger("tests.aiops")
        for i in range(300):
            t = T_LOGS + i * 1_000_000_000
            user = int(rng.integers(1000, 9999))
            logger.emit(
                timestamp=t,
                severity_number=SeverityNumber.INFO,
                severity_text="INFO",
                body=f"user {user} added item {i} to cart in {rng.integers(2, 90)} ms",
            )
            if i % 10 == 0:
                logger.emit(
                    timestamp=t + 1,
                    severity_number=SeverityNumber.WARN,
                    severity_text="WARN",
                    body=f"slow query took {i * 3} ms",
                )
        # An error while the service has just started logging: learnt, not alerted (warm-up:
        # 30 windows of 60 s of the service's own event time).
        logger.emit(
            timestamp=T_LOGS + 30 * 10**9,
            severity_number=SeverityNumber.ERROR,
            severity_text="ERROR",
            body="cache warm-up incomplete after 12 ms",
        )
        for minute in range(6, 32):
            logger.emit(
                timestamp=T_LOGS + minute * 60 * 10**9,
                severity_number=SeverityNumber.INFO,
                body=f"heartbeat {minute} ok",
            )
        logger.emit(
            timestamp=T_LOGS + 1901 * 10**9,
            severity_number=SeverityNumber.ERROR,
            severity_text="ERROR",
            body="payment gateway 10.2.3.4:443 refused connection for order 77812",
        )

    records = make_logs(emit)
    exporter = log_exporter(aiops_server, "http")
    exporter.export(records)
    exporter.shutdown()

    def new_template() -> list[dict]:
        return [a for a in _alerts(aiops_server) if a["kind"] == "new_log_template"]

    [alert] = _wait(new_template, "a new_log_template alert")
    assert alert["entity"] == {"kind": "service", "name": "logs-svc"}
    details = alert["evidence"]["details"]
    assert details["template"] == "payment gateway <IP> refused connection for order <NUM>"
    assert alert["first_seen_unix_nano"] == T_LOGS + 1901 * 10**9
    assert not [a for a in new_template() if "cache" in a["evidence"]["details"]["template"]]

    def templates() -> list[dict]:
        rows = aiops_server.api("/api/v1/aiops/log-templates", bucket_seconds=60).json()
        return rows if sum(r["count"] for r in rows) >= 331 else []

    rows = _wait(templates, "template counts")
    by_text = {r["template"]: r for r in rows}
    cart = by_text["user <NUM> added item <NUM> to cart in <NUM> ms"]
    assert cart["count"] == 300
    assert [c["count"] for c in cart["counts"]][:5] == [60, 60, 60, 60, 60]
    assert by_text["payment gateway <IP> refused connection for order <NUM>"]["count"] == 1


def test_a_service_that_stops_logging_raises_log_silence(aiops_server) -> None:
    start = T0 + 12 * DAY

    def emit(provider) -> None:
        logger = provider.get_logger("tests.aiops")
        for i in range(20 * 12):  # 12 records a minute for 20 minutes
            logger.emit(
                timestamp=start + i * 5 * 10**9,
                severity_number=SeverityNumber.INFO,
                body=f"heartbeat {i} ok",
            )

    exporter = log_exporter(aiops_server, "http")
    exporter.export(make_logs(emit))
    exporter.shutdown()
    # Other telemetry moves event time on while the service says nothing.
    for minute in range(21, 30):
        _marker_batches(aiops_server, start + minute * MINUTE)

    def silence() -> list[dict]:
        # (The earlier test's burst of logs-svc ended in a silence too: that one is older.)
        return [
            a
            for a in _alerts(aiops_server)
            if a["kind"] == "log_silence" and a["first_seen_unix_nano"] >= start
        ]

    [alert] = _wait(silence, "a log_silence alert")
    assert alert["entity"] == {"kind": "service", "name": "logs-svc"}
    assert alert["first_seen_unix_nano"] == start + 20 * MINUTE
    assert alert["evidence"]["expected"] >= 10


def test_series_state_survives_a_restart(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data").start()
    times = T0 + 20 * DAY + np.arange(80) * MINUTE
    values = 5 + np.random.default_rng(9).normal(0, 0.1, times.size)
    try:
        _send_metrics(server, [_gauge("queue.depth", times[:50], values[:50])], service="q")
        _wait(
            lambda: [r for r in _series(server, name="queue.depth") if r["points"] == 50],
            "50 points scored",
        )
    finally:
        assert server.stop() == 0
    server.start()
    try:
        [row] = _series(server, name="queue.depth")
        assert row["points"] == 50 and abs(row["expected"] - 5) < 0.2  # state came back
        _send_metrics(server, [_gauge("queue.depth", times[50:], values[50:])], service="q")
        [row] = _wait(
            lambda: [r for r in _series(server, name="queue.depth") if r["points"] == 80],
            "the same series going on",
        )
        assert row["id"] == 0
    finally:
        assert server.stop() == 0


def test_spans_lagging_behind_other_signals_still_count(aiops_server) -> None:
    """A metrics exporter running minutes ahead of the span exporter (each minute's spans
    arrive after a gauge point three minutes later): span windows close on span time, so every
    window's requests are counted (other signals' time alone used to close them first)."""
    start = T0 + 20 * DAY
    exporter = span_exporter(aiops_server, "http")
    windows = 12
    for w in range(windows):
        _marker_batches(aiops_server, start + (w + 3) * MINUTE)
        at = start + w * MINUTE

        def build(tracer, at=at) -> None:
            for i in range(10):
                t = at + i * 5 * 10**9
                tracer.start_span("GET /lag", kind=SpanKind.SERVER, start_time=t).end(
                    end_time=t + 20 * 10**6
                )

        assert exporter.export(make_spans("lagging-svc", build)) is SpanExportResult.SUCCESS
    exporter.shutdown()
    _marker_batches(aiops_server, start + (windows + 8) * MINUTE)

    def rate_series() -> list[dict]:
        rows = [
            r
            for r in _series(aiops_server, name="request_rate")
            if r["entity"] == {"kind": "service", "name": "lagging-svc"}
        ]
        return [r for r in rows if r["points"] >= windows]

    [row] = _wait(rate_series, "a request_rate point for every window of lagging spans")
    points = aiops_server.api(f"/api/v1/aiops/series/spans/{row['id']}/points").json()["points"]
    counted = [p for p in points if p["value"] > 0]
    assert len(counted) == windows, points
    assert all(abs(p["value"] - 10 / 60) < 1e-9 for p in counted), counted
