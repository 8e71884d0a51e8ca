"""Placement (service → host / pod / node) learned from logs and metrics.

The test sends logs and metrics with the OpenTelemetry SDK to a real server and reads the
topology it saved on shutdown. (The placement keys of spans' resources are checked in
``tests/test_topology_spans.py``.)
"""

from __future__ import annotations

import json

from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

from tests.otelsdk import log_exporter, metric_exporter, resource
from tests.pluginsupport import topology_rows_consumed, wait_for
from tests.serverproc import ServerProcess


def test_placement_learned_from_logs_and_metrics(server: ServerProcess) -> None:
    placed = {"host.name": "host-1", "k8s.pod.name": "pay-7f9", "k8s.node.name": "node-3"}
    logs = LoggerProvider(resource=resource("payments", **placed))
    logs.add_log_record_processor(SimpleLogRecordProcessor(log_exporter(server, "http")))
    logger = logs.get_logger("tests.placement")
    for i in range(5):
        logger.emit(body=f"payment {i} settled", attributes={"i": i})
    logs.shutdown()

    reader = PeriodicExportingMetricReader(
        metric_exporter(server, "grpc"), export_interval_millis=3_600_000
    )
    meters = MeterProvider(
        metric_readers=[reader], resource=resource("ledger", **{"host.name": "host-2"})
    )
    counter = meters.get_meter("tests.placement").create_counter("entries")
    for route in ("/a", "/b", "/c"):
        counter.add(1, {"route": route})
    meters.force_flush()
    meters.shutdown()

    wait_for(
        lambda: topology_rows_consumed(server) >= 8, what="the topology consumer to see every row"
    )
    assert server.stop() == 0
    saved = json.loads((server.data_dir / "incidents" / "topology.json").read_text())
    edges = {tuple(edge[:5]) for edge in saved["edges"]}
    assert {
        ("runs_on", "service", "payments", "host", "host-1"),
        ("runs_on", "service", "payments", "pod", "pay-7f9"),
        ("runs_on", "service", "payments", "host", "node-3"),  # a k8s node is its host
        ("runs_on", "pod", "pay-7f9", "host", "node-3"),
        ("runs_on", "service", "ledger", "host", "host-2"),
    } <= edges
    assert not {e for e in edges if e[2] == "ledger" and e[4] != "host-2"}
