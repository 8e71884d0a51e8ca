"""Histogram metrics with exemplars reach the AIOps detector. Exemplar times are nanoseconds, which
Python's ``datetime`` cannot hold: the detector must read the exemplars' trace ids without
converting their times (it failed on every such batch before)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.metrics import Exemplar
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
)

from tests.pluginsupport import wait_for
from tests.serverproc import ServerProcess
from tests.test_aiops import MINUTE, T0, _send_metrics

TRACE_ID = 0x5B8EFFF798038103D269B633813FC60C


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("aiops-exemplars") / "data").start()
    yield proc
    assert proc.stop() == 0, "".join(proc.output)


def _consumer_errors(server: ServerProcess) -> dict[str, float]:
    errors = {}
    for line in server.api("/metrics").text.splitlines():
        if line.startswith("opstrata_consumer_errors_total{"):
            errors[line.split('consumer="', 1)[1].split('"', 1)[0]] = float(line.split()[-1])
    return errors


def _latency_histogram(minutes: int) -> Metric:
    points = []
    for m in range(minutes):
        time = T0 + m * MINUTE + 123_456_789  # not a whole microsecond
        points.append(
            HistogramDataPoint(
                attributes={"http.route": "/checkout"},
                start_time_unix_nano=T0 + m * MINUTE,
                time_unix_nano=time,
                count=40,
                sum=40 * 0.02,
                bucket_counts=[0, 10, 25, 5, 0],
                explicit_bounds=[0.005, 0.01, 0.025, 0.05],
                min=0.004,
                max=0.049,
                exemplars=[
                    Exemplar({}, 0.03, time - 7, span_id=0x51CE7F93A1B2C3D4, trace_id=TRACE_ID)
                ],
            )
        )
    data = Histogram(data_points=points, aggregation_temporality=AggregationTemporality.DELTA)
    return Metric(name="http.server.request.duration", description="", unit="s", data=data)


def test_histograms_with_nanosecond_exemplars_are_scored(server: ServerProcess) -> None:
    _send_metrics(server, [_latency_histogram(minutes=12)], service="exemplar-svc")

    def histogram_series() -> list[dict]:
        series = server.api("/api/v1/aiops/series", limit=10_000).json()
        return [s for s in series if "http.server.request.duration" in s.get("name", "")]

    assert wait_for(histogram_series, 30, "series from the histogram's quantiles")
    assert not any(_consumer_errors(server).values()), _consumer_errors(server)
