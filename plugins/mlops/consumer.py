"""The consumer: committed spans and log records in, sketches updated, alerts out."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

import msgspec
import pyarrow as pa

from opstrata.alerts import AlertEvent
from opstrata.consumers import CommittedBatch, Consumer, ConsumerContext
from opstrata.plugins.mlops.config import MLOpsConfig
from opstrata.plugins.mlops.monitor import DriftMonitor
from opstrata.plugins.mlops.pending import PendingRows
from opstrata.plugins.mlops.quality import QualityTracker
from opstrata.plugins.mlops.records import Extractor, Labels, Records
from opstrata.plugins.mlops.results import WindowDrift
from opstrata.schema import Signal, Table
from opstrata.statefile import ProgressMark, StateFile

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
        self.state_file: StateFile | None = None
        self.mark: ProgressMark | None = None
        self.batch_lock = threading.Lock()
        """Held while a batch is learnt and while the state is saved: a save from the API
        (a posted reference) never catches a batch half learnt."""
        self._thread: threading.Thread | None = None
        self._gated: Callable[[AlertEvent], None] = lambda event: None
        self.pending = PendingRows()
        """Rows of batches learnt whose transaction has not committed yet."""
        self.write_failures = 0
        self.replayed: set[tuple[str, str]] = set()
        """Model versions whose labels were given again after a crash, checked at the end."""
        self.last_write_error = ""
        self._write_failing = False
        """A streak of failed writes is on (logged once, at its first failure)."""
        self._retry_in: float | None = None
        self._retry_at = 0.0
        """While writes fail: the next attempt is due at ``_retry_at`` (the state file's clock),
        ``_retry_in`` after the last, doubling from 1 s up to ``save_seconds``."""

    def _emit(self, event: AlertEvent) -> None:
        if self.ctx is None:
            return
        if threading.current_thread() is self._thread:
            self._gated(event)  # nothing again for a batch given again after a crash
        else:
            self.ctx.emit(event)  # labels posted through the API

    def start(self, ctx: ConsumerContext) -> None:
        self.ctx = ctx
        self.store = ctx.store
        self._thread = threading.current_thread()
        self.mark = ProgressMark(ctx.store, "mlops_progress", "models")
        self._gated = self.mark.emitter(ctx.emit)
        reader = getattr(ctx.store, "reader", None)
        if reader is not None:
            reader().execute(_DRIFT_DDL)
            self.quality = QualityTracker(self.config, reader, self._emit, self.monitor.resource_of)
        self.state_file = StateFile(
            ctx.state_dir / _STATE_FILE,
            every_seconds=self.config.save_seconds,
            every_batches=self.config.save_batches,
        )
        try:
            data = self.state_file.load()
            if data is not None:
                state = json.loads(data)
                self.monitor.load_state(state)
                if self.quality is not None:
                    self.quality.firing = {tuple(key) for key in state.get("quality_firing", [])}
                    # A save in the middle of a replay: its checks are still to be made.
                    self.replayed = {tuple(key) for key in state.get("quality_replayed", [])}
        except (ValueError, KeyError, TypeError) as exc:
            path = self.state_file.path
            log.warning("mlops: cannot read %s (%s); starting without drift state", path, exc)
        self.mark.load()
        if self.replayed and self.state_file.loaded_seq >= self.mark.seq:
            self._settle_quality()  # saved after the replay's last batch, before its checks
        self.ready.set()

    def durable_upto(self) -> int | None:
        return None if self.state_file is None else self.state_file.durable_upto()

    def save_state(self, force: bool = False) -> None:
        """Save the drift state (and which models' quality alerts fire) up to the last batch
        learnt; the caller holds ``batch_lock`` (or is the consumer's thread). Not while a
        batch's rows are unwritten: the state would include batches whose rows are not
        stored, and after a crash they would not be given again. Unwritten rows are written
        first when their retry is due (or ``force``: at stop, on a save asked for through the
        API); else it returns quietly (the failed write was logged)."""
        if self.state_file is None:
            return
        if self.pending and not ((force or self._write_due()) and self._write_pending()):
            return
        state = self.monitor.to_state()
        if self.quality is not None:
            with self.quality.lock:  # labels posted through the API change it
                state["quality_firing"] = sorted(self.quality.firing)
            # Saved in the middle of a replay (periodically, at a stop, a reference posted): the
            # batches whose labels touched these are in the saved state and will not be given
            # again, so their checks at the end of the replay must survive a second crash.
            state["quality_replayed"] = sorted(self.replayed)
        # msgspec encodes it 3-5 times faster than json.dumps (the sketches' lists of floats).
        self.state_file.save(self._encode(state))

    def saves_status(self) -> dict[str, Any]:
        """For ``/api/v1/mlops/saves``: the state file's saves written and failed."""
        if self.state_file is None:
            return {}
        return {
            "models": {
                **self.state_file.status(),
                "write_failures": self.write_failures,
                "last_write_error": self.last_write_error,
                "pending_batches": self.pending.batches,
                "pending_rows": self.pending.rows,
                "pending_bytes": self.pending.nbytes,
                "dropped_rows": self.pending.dropped,
            }
        }

    def save_now(self) -> None:
        """Save at once (a reference posted through the API must survive a crash too)."""
        with self.batch_lock:
            self.save_state(force=True)

    def stop(self, ctx: ConsumerContext) -> None:
        with self.batch_lock:
            self.save_state(force=True)

    def consume(self, batch: CommittedBatch) -> None:
        """Learn from one committed batch; its rows (predictions, labels, closed windows) are
        stored with the progress mark in one transaction."""
        assert self.state_file is not None
        if not self.state_file.fresh(batch.seq):
            return  # in the state loaded at start (the offset file lagged its save)
        found = [
            self.extractor.extract(table, records)
            for table, records in batch.tables.items()
            if table in (Table.TRACES, Table.LOGS)
        ]
        if self.replayed and batch.seq > self.mark.seq:
            with self.batch_lock:  # the batch that would have ended the replay is gone
                self._settle_quality()
        if not any(records.models or records.labels for records in found):
            # Nothing of a model: nothing learnt, but the offset may move on past it.
            with self.batch_lock:
                if self.pending and self._write_due():
                    self._write_pending()  # a retry due: not only when a save is due too
                if self.state_file.unchanged(batch.seq):
                    self.save_state()
            return
        with self.batch_lock:
            fresh = self.mark.begin(batch.seq)
            predictions, labels, history = self._learn(found)
            if fresh:
                # Learnt first, written after in a short transaction: a failing write (a
                # conflict, a full disk) loses neither the rows nor the closed windows.
                if predictions or labels or history or self.mark.emitted:
                    self.pending.add(batch.seq, predictions, labels, history)
                if self.pending and self._write_due():
                    self._write_pending()
            elif labels and self.quality is not None:
                # Given again after a crash: DuckDB holds the rows up to the mark, newer than
                # this batch, so its checks would not be those made before the crash. The
                # models it touches are checked once at the end of the replay instead.
                self.replayed.update(self._touched(labels))
            if self.replayed and batch.seq >= self.mark.seq:
                self._settle_quality()
            if self.state_file.seen(batch.seq) and not self.pending:
                self.save_state()

    def _settle_quality(self) -> None:
        """End of a replay: each model version whose labels were given again is checked on
        what DuckDB holds now (what the last check before the crash saw), and its alert
        emitted either way — firing (folded into the open alert) or resolved (closes one left
        open, e.g. by a crash between a batch's commit and its check; nothing if none is)."""
        assert self.mark is not None and self.quality is not None
        touched, self.replayed = sorted(self.replayed), set()
        self.mark.replaying = False
        for model, version in touched:
            self.quality.check_decay(model, version, settle=True)

    def _learn(
        self, found: list[Records]
    ) -> tuple[list[pa.Table], list[pa.Table], list[WindowDrift]]:
        """Learn a batch; returns its rows to store: predictions, labels, closed windows."""
        predictions: list[pa.Table] = []
        labels: list[pa.Table] = []
        for records in found:
            for rows in records.models:
                self.monitor.observe(rows)
                if self.quality is not None:
                    table = self.quality.prediction_rows(rows)
                    if table is not None:
                        predictions.append(table)
            if self.quality is not None:
                for part in records.labels:
                    table = self.quality.label_rows(part)
                    if table.num_rows:
                        labels.append(table)
        return predictions, labels, self.monitor.take_history()

    def _write_due(self) -> bool:
        """Whether pending rows may be written now: at once, unless writes fail; then after a
        backoff, not on every batch — each attempt inserts all rows pending (up to the caps)
        before it rolls back, so retrying per batch would cost quadratically over a streak."""
        assert self.state_file is not None
        return self._retry_in is None or self.state_file.clock() >= self._retry_at

    def _write_pending(self) -> bool:
        """Write the pending rows with the progress mark in one transaction; then check the
        quality of the model versions their labels touch. Returns whether they are written."""
        assert self.mark is not None
        pending = self.pending
        predictions, labels = pending.predictions, pending.labels

        def write() -> bool:
            if self.quality is not None:
                if predictions:
                    self.quality.insert("mlops_predictions", pa.concat_tables(predictions))
                if labels:
                    self.quality.insert("mlops_labels", pa.concat_tables(labels))
            self.save_history(pending.history)
            return True

        try:
            self.mark.commit(pending.seq, write)
        except Exception as exc:  # the rows wait for a later batch's transaction
            self.write_failures += 1
            self.last_write_error = f"{type(exc).__name__}: {exc}"
            self._failed_write()
            return False
        if self._write_failing:
            log.warning("mlops: rows of %d batches written after failed writes", pending.batches)
        self._write_failing = False
        self._retry_in = None
        pending.clear()
        if self.quality is not None:
            self.quality.wrote()
            if labels:
                for model, version in self._touched(labels):
                    self.quality.check_decay(model, version)
        return True

    def _failed_write(self) -> None:
        assert self.state_file is not None
        limit = self.config.save_seconds
        if self._retry_in is None:
            self._retry_in = min(1.0, limit)
        else:
            self._retry_in = min(self._retry_in * 2, limit)
        self._retry_at = self.state_file.clock() + self._retry_in
        if not self._write_failing:  # once per streak of failed writes
            self._write_failing = True
            log.warning(
                "mlops: rows not written, kept and retried every %g-%g s",
                self._retry_in,
                limit,
                exc_info=True,
            )

    def _touched(self, labels: list[pa.Table]) -> list[tuple[str, str]]:
        assert self.quality is not None
        return sorted(self.quality.touched(pa.concat_tables(labels)))

    def add_labels(self, labels: list[Labels]) -> int:
        """Labels posted through the API: stored at once (they are no batch), quality checked."""
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

    def save_history(self, history: list[WindowDrift]) -> None:
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
        self.mlops.consume(batch)

    def durable_upto(self) -> int | None:
        return self.mlops.durable_upto()

    def stop(self, ctx: ConsumerContext) -> None:
        self.mlops.stop(ctx)
