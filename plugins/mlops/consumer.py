"""The consumer: committed spans and log records in, sketches updated, alerts out."""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import msgspec
import pyarrow as pa

from opstrata.alerts import AlertEvent
from opstrata.consumers import CommittedBatch, Consumer, ConsumerContext
from opstrata.plugins.mlops.config import MLOpsConfig
from opstrata.plugins.mlops.monitor import DriftMonitor
from opstrata.plugins.mlops.quality import QualityTracker
from opstrata.plugins.mlops.records import Extractor, Labels
from opstrata.plugins.mlops.results import WindowDrift
from opstrata.schema import Signal, Table

__all__ = ["MLOps", "ModelTelemetry"]

log = logging.getLogger(__name__)

_DRIFT_DDL = (
    "CREATE TABLE IF NOT EXISTS mlops_drift (model VARCHAR, version VARCHAR, "
    "start_unix_nano BIGINT, end_unix_nano BIGINT, dataset_drift BOOLEAN, result VARCHAR)"
)
_STATE_FILE = "mlops-state.json"


class MLOps:
    """What the consumer and the API routes share: one per server."""

    def __init__(self, config: MLOpsConfig) -> None:
        self.config = config
        self.extractor = Extractor()
        self.monitor = DriftMonitor(config, self._emit)
        self.quality: QualityTracker | None = None
        self.store: Any = None
        self.ctx: ConsumerContext | None = None
        self.ready = threading.Event()
        self._encode = msgspec.json.Encoder().encode

    def _emit(self, event: AlertEvent) -> None:
        if self.ctx is not None:
            self.ctx.emit(event)

    def start(self, ctx: ConsumerContext) -> None:
        self.ctx = ctx
        self.store = ctx.store
        reader = getattr(ctx.store, "reader", None)
        if reader is not None:
            reader().execute(_DRIFT_DDL)
            self.quality = QualityTracker(self.config, reader, self._emit, self.monitor.resource_of)
        path = ctx.state_dir / _STATE_FILE
        if path.exists():
            try:
                self.monitor.load_state(json.loads(path.read_text()))
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("mlops: cannot read %s (%s); starting without drift state", path, exc)
        self.ready.set()

    def stop(self, ctx: ConsumerContext) -> None:
        path = ctx.state_dir / _STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.monitor.to_state()))
        tmp.replace(path)

    def handle(self, table: Table, batch: pa.RecordBatch) -> None:
        records = self.extractor.extract(table, batch)
        for rows in records.models:
            self.monitor.observe(rows)
            if self.quality is not None:
                self.quality.add_predictions(rows)
        if records.labels:
            self.add_labels(records.labels)
        self.save_history()

    def add_labels(self, labels: list[Labels]) -> int:
        if self.quality is None:
            return 0
        touched: set[tuple[str, str]] = set()
        count = 0
        for part in labels:
            count += len(part.ids)
            touched.update(self.quality.add_labels(part))
        for model, version in sorted(touched):
            self.quality.check_decay(model, version)
        return count

    def save_history(self) -> None:
        history = self.monitor.take_history()
        if not history or self.store is None or not hasattr(self.store, "reader"):
            return
        table = pa.table(
            {
                "model": [w.model for w in history],
                "version": [w.version for w in history],
                "start_unix_nano": pa.array([w.start_unix_nano for w in history], pa.int64()),
                "end_unix_nano": pa.array([w.end_unix_nano for w in history], pa.int64()),
                "dataset_drift": [w.dataset_drift for w in history],
                "result": [self._encode(w).decode() for w in history],
            }
        )
        cursor = self.store.reader()
        cursor.register("mlops_drift_batch", table)
        try:
            cursor.execute("INSERT INTO mlops_drift SELECT * FROM mlops_drift_batch")
        finally:
            cursor.unregister("mlops_drift_batch")

    def stored_drift(self, model: str, version: str | None, limit: int) -> list[WindowDrift]:
        if self.store is None or not hasattr(self.store, "reader"):
            return []
        rows = (
            self.store.reader()
            .execute(
                "SELECT result FROM mlops_drift WHERE model = ? AND (? IS NULL OR version = ?) "
                "ORDER BY end_unix_nano DESC LIMIT ?",
                [model, version, version, limit],
            )
            .fetchall()
        )
        decode = msgspec.json.Decoder(WindowDrift).decode
        return [decode(r[0]) for r in rows]


class ModelTelemetry(Consumer):
    """Feeds spans and log records to the shared :class:`MLOps` state."""

    name = "models"
    signals = frozenset({Signal.SPANS, Signal.LOG_RECORDS})

    def __init__(self, mlops: MLOps) -> None:
        self.mlops = mlops

    def start(self, ctx: ConsumerContext) -> None:
        self.mlops.start(ctx)

    def consume(self, batch: CommittedBatch, ctx: ConsumerContext) -> None:
        for table, records in batch.tables.items():
            if table in (Table.TRACES, Table.LOGS):
                self.mlops.handle(table, records)

    def stop(self, ctx: ConsumerContext) -> None:
        self.mlops.stop(ctx)
