"""Every committed batch a running server hands its consumers carries its event time (``latest``),
worked out once by the fan-out, for spans, logs and metric points over both transports.

Consumers, the alert clock and the topology consumer ask ``latest_event_time`` of every batch:
a batch without ``latest`` made each of them work the median out again. The plugin here is
written by the test into a directory of its own, with the entry point a pip install would give
it, so the server loads it like any installed plugin.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from opentelemetry.sdk._logs.export import LogRecordExportResult
from opentelemetry.sdk.metrics.export import MetricExportResult
from opentelemetry.sdk.trace.export import SpanExportResult

from tests.otelsdk import (
    log_exporter,
    make_logs,
    make_metrics,
    make_spans,
    metric_exporter,
    span_exporter,
)
from tests.pluginsupport import plugin_env, wait_for
from tests.serverproc import ServerProcess

_PLUGIN = """
import json

import numpy as np

from opstrata import CommittedBatch, Consumer, ConsumerContext, hookimpl

_TIME = {"otel_traces": "Timestamp", "otel_logs": "Timestamp"}


class Seen(Consumer):
    name = "seen"

    def consume(self, batch: CommittedBatch, ctx: ConsumerContext) -> None:
        # The median worked out here, independently of opstrata's own code: what ``latest``
        # must be.
        medians = [0]
        for table, records in batch.tables.items():
            column = _TIME.get(getattr(table, "value", str(table)), "TimeUnix")
            times = np.sort(records.column(column).cast("int64").drop_null().to_numpy())
            if len(times):
                medians.append(int(times[len(times) // 2]))
        line = {"seq": batch.seq, "signal": str(batch.signal.value), "latest": batch.latest,
                "median": max(medians), "rows": batch.rows}
        with (ctx.state_dir / "seen.jsonl").open("a") as out:
            out.write(json.dumps(line) + "\\n")


@hookimpl
def opstrata_register_consumers(register):
    register(Seen())
"""


def _install(site: Path) -> None:
    """The plugin as pip would install it: its module and a dist-info with the entry point."""
    site.mkdir()
    (site / "opstrata_eventtime_probe.py").write_text(_PLUGIN)
    dist = site / "opstrata_eventtime_probe-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: opstrata-eventtime-probe\nVersion: 0.1.0\n"
    )
    (dist / "entry_points.txt").write_text("[opstrata]\nprobe = opstrata_eventtime_probe\n")


def _seen(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def test_committed_batches_reach_consumers_with_their_event_time(tmp_path: Path) -> None:
    _install(tmp_path / "site")
    server = ServerProcess(tmp_path / "data", env=plugin_env(tmp_path / "site")).start()
    try:
        plugins = {p["name"] for p in server.api("/api/v1/plugins").json()}
        assert "probe" in plugins
        sent_at = time.time_ns()

        def build(tracer) -> None:
            for i in range(30):
                with tracer.start_as_current_span(f"GET /item/{i}"):
                    pass

        def counter(provider) -> None:
            meter = provider.get_meter("probe")
            meter.create_counter("probe.requests").add(3, {"route": "/a"})
            meter.create_histogram("probe.latency").record(0.25, {"route": "/a"})
            meter.create_up_down_counter("probe.inflight").add(2)

        def logs(provider) -> None:
            logger = provider.get_logger("probe")
            for i in range(20):
                logger.emit(body=f"line {i}", severity_text="INFO", timestamp=time.time_ns())

        for transport in ("http", "grpc"):
            exporter = span_exporter(server, transport)
            assert exporter.export(make_spans("shop", build)) is SpanExportResult.SUCCESS
            exporter.shutdown()
            exporter = metric_exporter(server, transport)
            assert exporter.export(make_metrics(counter)) is MetricExportResult.SUCCESS
            exporter.shutdown()
            exporter = log_exporter(server, transport)
            assert exporter.export(make_logs(logs)) is LogRecordExportResult.SUCCESS
            exporter.shutdown()
        done_at = time.time_ns()

        state = tmp_path / "data" / "plugins" / "probe" / "seen.jsonl"
        # Two requests of each signal; a metrics request fills one batch (several tables).
        seen = wait_for(lambda: len(_seen(state)) >= 6 and _seen(state), what="six batches")
    finally:
        assert server.stop() == 0

    assert sorted(line["signal"] for line in seen) == sorted(
        ["spans", "spans", "log_records", "log_records", "metric_points", "metric_points"]
    ), seen
    for line in seen:
        assert line["latest"] >= 0, line  # worked out by the fan-out, not left to consumers
        assert line["latest"] == line["median"], line
        # The SDK stamps items with the clock while the test runs: the event time is theirs.
        assert sent_at - 60 * 10**9 <= line["latest"] <= done_at, line
    assert np.all(np.diff([line["seq"] for line in seen]) > 0)
