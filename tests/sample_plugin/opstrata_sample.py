"""A sample third-party opstrata plugin: one file, one entry point.

- ``spans`` counts spans per service, records every batch sequence it sees (one line each, in
  its state directory) and raises an alert on any span with the attribute ``sample.alert``;
- ``slow`` sleeps ``slow_seconds`` per batch (configurable), so it falls behind;
- ``broken`` raises on every batch;
- a detector ``sample-threshold``; a route ``GET /api/v1/sample/counts``; a notifier that
  appends incident changes to a file.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
from litestar import get

from opstrata import (
    AlertEvent,
    CommittedBatch,
    Consumer,
    ConsumerContext,
    Entity,
    Evidence,
    IncidentChange,
    Layer,
    Severity,
    Signal,
    Table,
    hookimpl,
)

CONFIG: dict[str, Any] = {}
COUNTS: dict[str, int] = {}
_lock = threading.Lock()


class SpanCounter(Consumer):
    name = "spans"
    signals = frozenset({Signal.SPANS})

    def consume(self, batch: CommittedBatch, ctx: ConsumerContext) -> None:
        with (ctx.state_dir / "spans.seq").open("a") as seen:
            seen.write(f"{batch.seq}\n")
        spans = batch.tables[Table.TRACES]
        services = spans.column("ServiceName").value_counts()
        with _lock:
            for item in services.to_pylist():
                COUNTS[item["values"]] = COUNTS.get(item["values"], 0) + item["counts"]
        flagged = pc.map_lookup(spans.column("SpanAttributes"), "sample.alert", "first")
        for row, values in enumerate(flagged.to_pylist()):
            if values:
                service = spans.column("ServiceName")[row].as_py()
                ctx.emit(
                    AlertEvent(
                        time_unix_nano=spans.column("Timestamp")[row].value,
                        kind="sample_flag",
                        layer=Layer.AIOPS,
                        entity=Entity("service", service),
                        summary=f"span {spans.column('SpanName')[row].as_py()} is flagged",
                        severity=Severity.ERROR,
                        score=0.9,
                        resource={"service.name": service},
                        evidence=Evidence(
                            exemplar_trace_ids=[spans.column("TraceId")[row].as_py()]
                        ),
                    )
                )


class SlowConsumer(Consumer):
    name = "slow"
    signals = frozenset({Signal.SPANS})
    inbox_size = 2

    def consume(self, batch: CommittedBatch, ctx: ConsumerContext) -> None:
        time.sleep(float(CONFIG.get("slow_seconds", 0.0)))
        with (ctx.state_dir / "slow.seq").open("a") as seen:
            seen.write(f"{batch.seq}\n")


class BrokenConsumer(Consumer):
    name = "broken"

    def consume(self, batch: CommittedBatch, ctx: ConsumerContext) -> None:
        raise ZeroDivisionError("broken on purpose")


class ThresholdDetector:
    def __init__(self, params: dict[str, Any]) -> None:
        self.threshold = float(params.get("threshold", 1.0))

    def update(self, series: np.ndarray, times: np.ndarray, values: np.ndarray) -> np.ndarray:
        return (values > self.threshold).astype(np.float64)


class FileNotifier:
    name = "file"

    def __init__(self, path: Path) -> None:
        self.path = path

    def notify(self, change: IncidentChange) -> None:
        line = json.dumps({"change": change.change, "incident": change.incident.id})
        with self.path.open("a") as out:
            out.write(line + "\n")


@get("/counts", sync_to_thread=False)
def counts() -> dict[str, int]:
    with _lock:
        return dict(COUNTS)


@hookimpl
def opstrata_configure(config: dict[str, Any], settings: Any) -> None:
    unknown = set(config) - {"slow_seconds", "notify_file"}
    if unknown:
        raise ValueError(f"plugins.sample: unknown keys {sorted(unknown)}")
    CONFIG.update(config)


@hookimpl
def opstrata_register_consumers(register: Any) -> None:
    register(SpanCounter())
    register(SlowConsumer())
    register(BrokenConsumer())


@hookimpl
def opstrata_register_detectors(register: Any) -> None:
    register("sample-threshold", ThresholdDetector)


@hookimpl
def opstrata_register_routes(register: Any) -> None:
    register([counts])


@hookimpl
def opstrata_register_notifiers(register: Any) -> None:
    if CONFIG.get("notify_file"):
        register(FileNotifier(Path(CONFIG["notify_file"])))


@hookimpl
def opstrata_register_stores(register: Any) -> None:
    from opstrata.storage.duckdb_store import DuckDBStore

    def open_store(settings: Any) -> DuckDBStore:
        return DuckDBStore(settings.data_path / "sample-store")

    register("sample-duckdb", open_store)
