"""Placement (service → host / pod / node) learned from logs and metrics a resource at a time.

``resource_runs`` finds the runs of rows that repeat one resource, so that the topology consumer
looks up placement keys once per run; it is held to a row-by-row comparison. The end-to-end test
sends logs and metrics with the OpenTelemetry SDK to a real server and reads the topology it
saved on shutdown.
"""

from __future__ import annotations

import json
import random
import re

import pyarrow as pa
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

from opstrata.resource_runs import resource_runs
from opstrata.schema import STRING_MAP
from tests.otelsdk import log_exporter, metric_exporter, resource
from tests.pluginsupport import wait_for
from tests.serverproc import ServerProcess

_PAIRS = [("service.name", "a"), ("service.name", "ab"), ("host.name", "h"), ("k", ""), ("", "k")]


def _resource(rnd: random.Random) -> list[tuple[str, str]]:
    return [rnd.choice(_PAIRS) for _ in range(rnd.choice([0, 1, 2, 2, 3]))]


def test_resource_runs_match_a_row_by_row_comparison() -> None:
    rnd = random.Random(1)
    for _ in range(400):
        rows: list[list[tuple[str, str]]] = []
        services: list[str] = []
        for _ in range(rnd.randint(1, 12)):
            row, service = _resource(rnd), rnd.choice(["s", "t"])
            rows += [row] * rnd.randint(1, 4)
            services += [service] * (len(rows) - len(services))
        column = pa.array(rows, STRING_MAP)
        names = pa.array(services, pa.string())
        lo = rnd.randint(0, len(rows) - 1)
        hi = rnd.randint(lo + 1, len(rows))
        for col, svc, plain, plain_svc in (
            (column, names, rows, services),
            (column.slice(lo, hi - lo), names.slice(lo, hi - lo), rows[lo:hi], services[lo:hi]),
        ):
            want = [
                i
                for i in range(len(plain))
                if i == 0 or (plain[i], plain_svc[i]) != (plain[i - 1], plain_svc[i - 1])
            ]
            assert resource_runs(col, svc).tolist() == want


def _consumed_rows(server: ServerProcess) -> float:
    text = server.api("/metrics").text
    found = re.search(
        r'^opstrata_consumer_rows_total\{consumer="[^"]*topology"\} (\S+)$', text, re.M
    )
    return float(found.group(1)) if found else 0.0


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

    wait_for(lambda: _consumed_rows(server) >= 8, what="the topology consumer to see every row")
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
