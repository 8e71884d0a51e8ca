"""MLOps learns a batch first and writes its rows after, in a short transaction with the
progress mark: a write that fails (here a conflicting transaction held open on another cursor,
as a prune on the API thread can be) loses nothing. The rows wait and are written with the next
batch's; the drift windows closed meanwhile are all stored, once; the state is not saved while
rows are unwritten (after a crash those batches are given again)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from opstrata.consumers import CommittedBatch, ConsumerContext
from opstrata.otlp.decoder import Encoding, decode_request
from opstrata.otlp.limits import DecodeLimits
from opstrata.plugins.mlops.config import MLOpsConfig
from opstrata.plugins.mlops.consumer import MLOps
from opstrata.schema import Signal
from opstrata.storage.duckdb_store import DuckDBStore
from tests.pluginsupport import ProgressRowHeld

NS = 10**9
SLOT = 30 * NS
T0 = 1_700_000_000 * NS // SLOT * SLOT
CONFIG = {"window_seconds": 120, "window_slots": 4, "baseline_seconds": 60, "save_seconds": 0}


def _value(value: object) -> AnyValue:
    if isinstance(value, str):
        return AnyValue(string_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    return AnyValue(double_value=float(value))


def _request(slot: int) -> bytes:
    """40 predictions of one 30 s slot (amounts shifted from slot 8 on: drift), and labels of
    the previous slot's predictions."""
    rng = np.random.default_rng(slot)
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    resource_logs.resource.attributes.append(
        KeyValue(key="service.name", value=AnyValue(string_value="scorer"))
    )
    records = resource_logs.scope_logs.add().log_records
    start = T0 + slot * SLOT
    for i in range(40):
        attributes = {
            "ml.model.name": "scorer",
            "ml.model.version": "2",
            "ml.feature.amount": round(float(rng.lognormal(4 + (slot >= 8), 0.5)), 2),
            "ml.feature.country": str(rng.choice(["DE", "FR", "US"])),
            "ml.prediction": int(rng.random() < 0.3),
            "ml.prediction.id": f"p{slot}-{i}",
        }
        record = records.add(time_unix_nano=start + i * SLOT // 40)
        record.body.string_value = "prediction"
        record.attributes.extend(KeyValue(key=k, value=_value(v)) for k, v in attributes.items())
    if slot:
        for i in range(40):
            record = records.add(time_unix_nano=start + i * NS // 2)
            record.body.string_value = "label"
            record.attributes.extend(
                [
                    KeyValue(key="ml.prediction.id", value=_value(f"p{slot - 1}-{i}")),
                    KeyValue(key="ml.label", value=_value(int(rng.random() < 0.3))),
                ]
            )
    return request.SerializeToString()


def _run(tmp: Path, slots: int, blocked: range | None) -> tuple[MLOps, dict, list]:
    store = DuckDBStore(tmp / "db")
    store.start()
    try:
        ctx = ConsumerContext("mlops", "models", tmp / "state", lambda *_: None, store, {})
        (tmp / "state").mkdir()
        mlops = MLOps(MLOpsConfig(**CONFIG))
        mlops.start(ctx)
        blocker = ProgressRowHeld(store)
        seen: dict = {"saved_while_blocked": set(), "pending_history": 0}
        for slot in range(slots):
            if blocked is not None and slot == blocked.start:
                blocker.hold()
            decoded = decode_request(
                Signal.LOG_RECORDS, _request(slot), Encoding.PROTOBUF, DecodeLimits()
            )
            seq = asyncio.run(store.write(decoded.batches))
            mlops.consume(CommittedBatch.of(seq, decoded.batches))  # never raises
            if blocked is not None and slot in blocked:
                assert mlops.state_file is not None
                seen["saved_while_blocked"].add(mlops.state_file.saved_seq)
                seen["pending_history"] = max(seen["pending_history"], len(mlops.pending.history))
            if blocked is not None and slot == blocked.stop - 1:
                blocker.release()
        cursor = store.reader()
        seen["drift"] = cursor.execute(
            "SELECT model, version, start_unix_nano, end_unix_nano, dataset_drift "
            "FROM mlops_drift ORDER BY start_unix_nano"
        ).fetchall()
        seen["predictions"] = cursor.execute(
            "SELECT count(*), count(DISTINCT prediction_id) FROM mlops_predictions"
        ).fetchall()
        seen["labels"] = cursor.execute("SELECT count(*) FROM mlops_labels").fetchall()
        seen["mark"] = cursor.execute("SELECT seq FROM mlops_progress").fetchall()
        seen["last_seq"] = seq
        performance = mlops.quality.performance("scorer") if mlops.quality else []
        return mlops, seen, performance
    finally:
        store.shutdown()


def test_a_failed_write_loses_no_rows_and_no_drift_window(tmp_path: Path) -> None:
    (tmp_path / "alone").mkdir()
    (tmp_path / "blocked").mkdir()
    _, alone, alone_perf = _run(tmp_path / "alone", 16, None)
    assert len(alone["drift"]) >= 5 and any(row[4] for row in alone["drift"])  # drift seen

    blocked = range(5, 11)
    mlops, seen, perf = _run(tmp_path / "blocked", 16, blocked)
    assert mlops.write_failures == len(blocked)  # the premise: every blocked batch's write failed
    assert seen["pending_history"] >= 2  # windows closed while blocked, kept
    assert len(seen["saved_while_blocked"]) == 1  # no save while rows were unwritten
    assert not mlops.pending and mlops.saves_status()["models"]["pending_batches"] == 0
    assert seen["drift"] == alone["drift"]  # every window, once
    assert seen["predictions"] == alone["predictions"] == [(16 * 40, 16 * 40)]
    assert seen["labels"] == alone["labels"] == [(15 * 40,)]
    assert seen["mark"] == [(seen["last_seq"],)]
    assert mlops.state_file is not None and mlops.state_file.saved_seq == seen["last_seq"]
    assert [w.labelled for w in perf] == [w.labelled for w in alone_perf]


def _plain_request() -> bytes:
    """A log record of no model (most traffic)."""
    request = ExportLogsServiceRequest()
    record = request.resource_logs.add().scope_logs.add().log_records.add(time_unix_nano=T0)
    record.body.string_value = "GET /"
    return request.SerializeToString()


def test_failing_writes_are_retried_after_a_backoff_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """While the write keeps failing, neither a batch of a model nor one without (whose save
    comes due) retries it each time: each attempt inserts every pending row and rolls back.
    Attempts back off from 1 s, doubling up to ``save_seconds``; one warning per streak."""
    store = DuckDBStore(tmp_path / "db")
    store.start()
    (tmp_path / "state").mkdir()
    blocker = ProgressRowHeld(store)
    try:
        ctx = ConsumerContext("mlops", "models", tmp_path / "state", lambda *_: None, store, {})
        mlops = MLOps(MLOpsConfig(**{**CONFIG, "save_seconds": 8}))
        mlops.start(ctx)
        assert mlops.state_file is not None
        now = [mlops.state_file.clock()]
        mlops.state_file.clock = lambda: now[0]  # the schedule's clock, moved by the test

        def feed(payload: bytes) -> int:
            decoded = decode_request(Signal.LOG_RECORDS, payload, Encoding.PROTOBUF, DecodeLimits())
            seq = asyncio.run(store.write(decoded.batches))
            mlops.consume(CommittedBatch.of(seq, decoded.batches))
            return seq

        feed(_request(0))
        assert mlops.write_failures == 0 and not mlops.pending
        blocker.hold()
        caplog.set_level(logging.WARNING, logger="opstrata.plugins.mlops")
        for slot in range(1, 21):  # a model batch a second
            now[0] += 1.0
            last_model = feed(_request(slot))
        # Attempts at 1, 2, 4, 8 and 16 s (not 20): the next is due at 24 s.
        assert mlops.write_failures == 5
        assert mlops.pending.batches == 20
        status = mlops.saves_status()["models"]
        assert status["pending_rows"] == 20 * 80 and status["pending_bytes"] > 0
        for _ in range(21, 41):  # then only batches of no model; the save is due meanwhile
            now[0] += 1.0
            feed(_plain_request())
        assert mlops.write_failures == 8  # at 24, 32 and 40 s (not 20 more)
        assert mlops.durable_upto() is not None  # the offset held: nothing saved past the rows
        warned = [r.getMessage() for r in caplog.records]
        assert len(warned) == 1 and "rows not written" in warned[0]

        blocker.release()
        now[0] += 1.0
        feed(_plain_request())  # at 41 s: not due yet (48 s)
        assert mlops.pending.batches == 20 and mlops.write_failures == 8
        now[0] += 7.0
        last = feed(_plain_request())  # at 48 s: written, then the state saved
        assert not mlops.pending and mlops.write_failures == 8
        cursor = store.reader()
        assert cursor.execute(
            "SELECT count(*), count(DISTINCT prediction_id) FROM mlops_predictions"
        ).fetchall() == [(21 * 40, 21 * 40)]
        assert cursor.execute("SELECT seq FROM mlops_progress").fetchall() == [(last_model,)]
        assert mlops.state_file.saved_seq == last and mlops.durable_upto() is None
        warned = [r.getMessage() for r in caplog.records]
        assert len(warned) == 2 and "rows of 20 batches written" in warned[1]
    finally:
        blocker.release()
        store.shutdown()
