"""Rates of counters are judged by the events behind them (issue 6: false incidents on a
normal day came from a counter of a few orders per interval).

- Unit level: the count test of a rate against its baseline (:func:`rate_count_test`) is the
  Poisson mid-p test when the baseline is certain, weaker when it is young, and scales with
  the over-dispersion; the detector keeps a low-volume counter quiet and still finds a jump.
- Through a real server: a real OpenTelemetry SDK counter (cumulative, monotonic) counting
  a few orders per 30-s export raises nothing over hours; ten times the orders alerts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricExportResult
from scipy import stats

from opstrata.plugins.aiops.engine import RobustSeasonalDetector, rate_count_test
from tests.otelsdk import metric_exporter, resource
from tests.pluginsupport import wait_for
from tests.serverproc import ServerProcess

T0 = 1_767_571_200 * 10**9  # 2026-01-05 00:00 UTC: simulated event time
STEP = 30 * 10**9
THRESHOLD = 1 - 1e-5  # sensitivity 0.5


def _poisson_mid_p(k: int, mu: float) -> float:
    """Two-sided (doubled one-sided) mid-p of k events against Poisson(mu)."""
    if k > mu:
        one = stats.poisson.sf(k, mu) + 0.5 * stats.poisson.pmf(k, mu)
    else:
        one = stats.poisson.cdf(k - 1, mu) + 0.5 * stats.poisson.pmf(k, mu)
    return min(1.0, 2.0 * one)


@pytest.mark.parametrize(("k", "mu"), [(0, 3.0), (2, 1.0), (10, 3.0), (20, 5.0), (1, 8.0)])
def test_count_test_is_the_poisson_mid_p_test_when_the_baseline_is_certain(
    k: int, mu: float
) -> None:
    w = 60.0
    got = rate_count_test(np.array([k]), np.array([w]), np.array([mu / w]), np.array([1e9]),
                          np.array([1.0]))[0]  # fmt: skip
    assert got == pytest.approx(_poisson_mid_p(k, mu), rel=1e-4)


def test_count_test_carries_the_baseline_uncertainty_and_the_dispersion() -> None:
    k, w, rate = np.array([12.0]), np.array([60.0]), np.array([3 / 60])
    certain = rate_count_test(k, w, rate, np.array([1e9]), np.array([1.0]))[0]
    young = rate_count_test(k, w, rate, np.array([300.0]), np.array([1.0]))[0]
    bursty = rate_count_test(k, w, rate, np.array([1e9]), np.array([4.0]))[0]
    assert certain < 1e-3
    # A baseline learnt from 5 windows' worth of events is itself uncertain: weaker evidence.
    assert young > 3 * certain
    # Over-dispersed (phi = 4): 12 vs 3 is 3 vs 0.75 in Poisson units — far weaker.
    assert bursty > 0.01 and bursty > 30 * certain
    # No exposure, no test.
    assert rate_count_test(k, w, rate, np.array([0.0]), np.array([1.0]))[0] == 1.0


def _scores(counts: np.ndarray, step_s: float = 30.0, rate: bool = True) -> np.ndarray:
    detector = RobustSeasonalDetector()
    detector.configure(np.array([0]), rate=rate)
    out = np.zeros(counts.size)
    for i, k in enumerate(counts.tolist()):  # one point a round, as a counter exports
        out[i] = detector.update(np.array([0]), np.array([T0 + i * STEP]),
                                 np.array([k / step_s]), weights=np.array([step_s]))[0]  # fmt: skip
    return out


def test_a_counter_of_few_events_is_quiet_and_a_jump_still_alerts() -> None:
    rng = np.random.default_rng(3)
    quiet = rng.poisson(0.3, 1500).astype(float)
    # Judged as a plain series, a handful of distinct values collapses the learnt sigma and
    # the odd window of two or three events is a "spike"; by its count it is nothing.
    assert (_scores(quiet, rate=False)[60:] >= THRESHOLD).sum() > 0
    assert (_scores(quiet)[60:] >= THRESHOLD).sum() == 0
    jump = np.r_[quiet[:1000], rng.poisson(4.0, 20).astype(float)]
    hits = np.flatnonzero(_scores(jump)[1000:] >= THRESHOLD)
    assert hits.size and hits[0] <= 3, hits


def test_a_byte_counter_learns_its_dispersion() -> None:
    # Bytes: ~5 requests a window of ~2 kB each. Not Poisson in bytes; the dispersion index
    # (variance / mean of the increments, ~bytes per event) makes it a count test all the same.
    rng = np.random.default_rng(4)
    requests = rng.poisson(5.0, 1500)
    size = np.array([rng.gamma(4.0, 500.0, n).sum() for n in requests])
    quiet = np.round(size)
    assert (_scores(quiet)[60:] >= THRESHOLD).sum() <= 1
    more = np.array([rng.gamma(4.0, 500.0, n).sum() for n in rng.poisson(25.0, 20)])
    jump = np.r_[quiet[:1000], np.round(more)]
    hits = np.flatnonzero(_scores(jump)[1000:] >= THRESHOLD)
    assert hits.size and hits[0] <= 3, hits


# -- through a real server ---------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("rates") / "data").start()
    yield proc
    assert proc.stop() == 0, "".join(proc.output)


class _Counter:
    """A real SDK counter, added to once per interval; each interval's collection (the SDK's
    cumulative monotonic sum) is exported with its times moved to simulated event time."""

    def __init__(self, server: ServerProcess, service: str) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader], resource=resource(service))
        meter = self.provider.get_meter("tests.rates")
        self.counter = meter.create_counter("app.orders.placed", "{order}")
        self.out = metric_exporter(server, "http")
        self.intervals = 0

    def send(self, increments: list[int]) -> None:
        for k in increments:
            self.counter.add(k, {"shop": "eu"})
            self.intervals += 1
            data = self.reader.get_metrics_data()
            assert data is not None
            rm = data.resource_metrics[0]
            metric = rm.scope_metrics[0].metrics[0]
            point = dataclasses.replace(
                metric.data.data_points[0],
                start_time_unix_nano=T0,
                time_unix_nano=T0 + self.intervals * STEP,
            )
            sums = dataclasses.replace(metric.data, data_points=[point])
            scope = dataclasses.replace(
                rm.scope_metrics[0], metrics=[dataclasses.replace(metric, data=sums)]
            )
            moved = dataclasses.replace(
                data, resource_metrics=[dataclasses.replace(rm, scope_metrics=[scope])]
            )
            assert self.out.export(moved) is MetricExportResult.SUCCESS

    def close(self) -> None:
        self.out.shutdown()
        self.provider.shutdown()


def _rate_points(server: ServerProcess, service: str) -> int:
    series = server.api("/api/v1/aiops/series", limit=10_000, entity=service).json()
    return sum(s["points"] for s in series if s["name"] == "app.orders.placed:rate")


def _alerts(server: ServerProcess, service: str) -> list[dict]:
    alerts = server.api("/api/v1/alerts", limit=1000, plugin="aiops").json()["alerts"]
    return [a for a in alerts if a["entity"]["name"] == service]


def test_a_real_sdk_counter_of_few_orders_is_quiet_and_ten_times_more_alerts(
    server: ServerProcess,
) -> None:
    rng = np.random.default_rng(11)
    counter = _Counter(server, "shop")
    quiet = [int(k) for k in rng.poisson(0.4, 360)]  # 3 hours of a few orders an hour
    counter.send(quiet)
    wait_for(lambda: _rate_points(server, "shop") >= len(quiet) - 1, 60,
             "every interval of the counter scored")  # fmt: skip
    assert not _alerts(server, "shop")
    # Ten times the orders, the same counter going on.
    counter.send([int(k) for k in rng.poisson(4.0, 10)])
    counter.close()
    wait_for(lambda: _rate_points(server, "shop") >= len(quiet) + 9, 60,
             "the jump scored")  # fmt: skip
    alerts = wait_for(lambda: _alerts(server, "shop"), 30, "an alert on the jump")
    onset = min(a["first_seen_unix_nano"] for a in alerts)
    assert T0 + (len(quiet) + 1) * STEP <= onset <= T0 + (len(quiet) + 4) * STEP, onset
    assert alerts[0]["evidence"]["observed"] > alerts[0]["evidence"]["expected"]
