"""After a crash, MLOps learns the batches since its last save again with their alerts held back
(they were raised before the crash); the quality of the model versions they label is checked
once at the end of that replay, on what DuckDB holds, and its verdict emitted. A quality alert
left open by a crash right after the batch that recovered it (its rows committed, its
'resolved' not yet emitted) is resolved then, not left open for good."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from opstrata.alerts import AlertEvent
from opstrata.consumers import CommittedBatch, ConsumerContext
from opstrata.otlp.decoder import Encoding, decode_request
from opstrata.otlp.limits import DecodeLimits
from opstrata.plugins.mlops.config import MLOpsConfig
from opstrata.plugins.mlops.consumer import MLOps
from opstrata.schema import Signal
from opstrata.storage.duckdb_store import DuckDBStore
from tests.pluginsupport import ProgressRowHeld
from tests.test_mlops_write_failure import T0, _value

NS = 10**9
WINDOW = 120 * NS
ACCURACY = [1.0, 1.0, 0.2, 1.0]
"""Per window: the share of predictions labelled right (window 2 decays, window 3 recovers)."""


class Crash(BaseException):
    """The process dies (as ``kill -9``: nothing after it runs)."""


def _request(window: int) -> bytes:
    """60 predictions of one window, and their labels."""
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    resource_logs.resource.attributes.append(
        KeyValue(key="service.name", value=AnyValue(string_value="scorer"))
    )
    records = resource_logs.scope_logs.add().log_records
    start = T0 + window * WINDOW
    right = int(60 * ACCURACY[window])
    for i in range(60):
        at = start + i * NS
        prediction = records.add(time_unix_nano=at)
        prediction.body.string_value = "prediction"
        prediction.attributes.extend(
            KeyValue(key=k, value=_value(v))
            for k, v in {
                "ml.model.name": "scorer",
                "ml.model.version": "2",
                "ml.feature.amount": float(i % 7),
                "ml.prediction": i % 2,
                "ml.prediction.id": f"p{window}-{i}",
            }.items()
        )
        label = records.add(time_unix_nano=at + NS // 2)
        label.body.string_value = "label"
        label.attributes.extend(
            [
                KeyValue(key="ml.prediction.id", value=_value(f"p{window}-{i}")),
                KeyValue(key="ml.label", value=_value(i % 2 if i < right else 1 - i % 2)),
            ]
        )
    return request.SerializeToString()


def _quality(events: list[AlertEvent]) -> list[tuple[str, bool]]:
    return [(e.entity.name, e.resolved) for e in events if e.kind == "quality_decay"]


def _start(store: DuckDBStore, state: Path, emit: Callable[[str, AlertEvent], None]) -> MLOps:
    mlops = MLOps(MLOpsConfig(window_seconds=120, baseline_seconds=0, save_seconds=3600))
    mlops.start(ConsumerContext("mlops", "models", state, emit, store, {}))
    return mlops


def _start_dying_at_resolve(store: DuckDBStore, state: Path) -> tuple[MLOps, list[AlertEvent]]:
    """A consumer whose process dies right after the commit that recovered the model (its
    quality alert resolving); the alerts emitted before."""
    before: list[AlertEvent] = []

    def emit(plugin: str, event: AlertEvent) -> None:
        if event.kind == "quality_decay" and event.resolved:
            raise Crash
        before.append(event)

    return _start(store, state, emit), before


def test_a_quality_alert_open_at_a_crash_is_settled_at_the_end_of_the_replay(
    tmp_path: Path,
) -> None:
    store = DuckDBStore(tmp_path / "db")
    store.start()
    try:
        state = tmp_path / "state"
        state.mkdir()
        first, before = _start_dying_at_resolve(store, state)
        seqs = []
        for window in range(4):
            decoded = decode_request(
                Signal.LOG_RECORDS, _request(window), Encoding.PROTOBUF, DecodeLimits()
            )
            seqs.append(asyncio.run(store.write(decoded.batches)))
            batch = CommittedBatch.of(seqs[-1], decoded.batches)
            if window == 3:
                try:
                    first.consume(batch)
                except Crash:
                    break
                raise AssertionError("the recovering batch resolved nothing")
            first.consume(batch)
            if window == 1:
                first.save_state()  # a periodic save: nothing fires yet
        assert _quality(before) == [("scorer:2", False)]  # window 2 decayed: open

        after: list[AlertEvent] = []
        again = _start(store, state, lambda _, e: after.append(e))
        assert again.state_file is not None and again.state_file.loaded_seq == seqs[1]
        assert again.mark is not None and again.mark.seq == seqs[3]  # window 3's rows are in
        for batch in store.read_batches(seqs[1], seqs[3], frozenset(Signal), 64):
            again.consume(batch)
        # Windows 2 and 3 given again: one verdict at the end, on DuckDB as it is: resolved.
        assert _quality(after) == [("scorer:2", True)]
        assert again.quality is not None and again.quality.firing == set()
        rows = store.reader().execute("SELECT count(*) FROM mlops_labels").fetchall()
        assert rows == [(240,)]  # nothing written twice
    finally:
        store.shutdown()


def _other_predictions(window: int) -> bytes:
    """Predictions of another model only: no labels, nothing of 'scorer'."""
    request = ExportLogsServiceRequest()
    records = request.resource_logs.add().scope_logs.add().log_records
    for i in range(5):
        record = records.add(time_unix_nano=T0 + window * WINDOW + i * NS)
        record.attributes.extend(
            KeyValue(key=k, value=_value(v))
            for k, v in {
                "ml.model.name": "other",
                "ml.feature.x": 1.0,
                "ml.prediction": 1,
                "ml.prediction.id": f"o{i}",
            }.items()
        )
    return request.SerializeToString()


def test_a_save_in_the_middle_of_a_replay_keeps_its_checks(tmp_path: Path) -> None:
    """The replay's checks wait for its end; a state saved before it (periodically, at a stop,
    a reference posted) holds the batches whose labels asked for them, so they are saved with it:
    after a second crash the rest of the replay settles them, and the alert left open by the
    first crash is resolved, not open for good."""
    store = DuckDBStore(tmp_path / "db")
    store.start()
    blocker = ProgressRowHeld(store)
    try:
        state = tmp_path / "state"
        state.mkdir()
        first, before = _start_dying_at_resolve(store, state)
        assert first.state_file is not None
        now = [first.state_file.clock()]
        first.state_file.clock = lambda: now[0]
        payloads = [_request(w) for w in range(4)] + [_other_predictions(4)]
        seqs = []
        for i, payload in enumerate(payloads):
            decoded = decode_request(Signal.LOG_RECORDS, payload, Encoding.PROTOBUF, DecodeLimits())
            seqs.append(asyncio.run(store.write(decoded.batches)))
            batch = CommittedBatch.of(seqs[-1], decoded.batches)
            if i == 3:  # window 3's write fails: its rows go with batch 4's
                blocker.hold()
                first.consume(batch)
                assert first.pending.batches == 1
                blocker.release()
                continue
            if i == 4:
                now[0] += 1.0  # the retry is due
                try:
                    first.consume(batch)
                except Crash:
                    break
                raise AssertionError("the recovering write resolved nothing")
            first.consume(batch)
            if i == 1:
                first.save_state()
        assert _quality(before) == [("scorer:2", False)]  # open at the crash

        def restart(events: list[AlertEvent]) -> MLOps:
            return _start(store, state, lambda _, e: events.append(e))

        once: list[AlertEvent] = []
        again = restart(once)
        assert again.state_file is not None and again.state_file.loaded_seq == seqs[1]
        assert again.mark is not None and again.mark.seq == seqs[4]
        for batch in store.read_batches(seqs[1], seqs[3], frozenset(Signal), 64):
            again.consume(batch)  # windows 2 and 3 given again: checks wait for the end
        assert again.replayed == {("scorer", "2")} and _quality(once) == []
        again.save_now()  # a reference posted, say; then a second crash (no stop)

        twice: list[AlertEvent] = []
        third = restart(twice)
        assert third.state_file is not None and third.state_file.loaded_seq == seqs[3]
        assert third.replayed == {("scorer", "2")}  # the saved state holds them
        for batch in store.read_batches(seqs[3], seqs[4], frozenset(Signal), 64):
            third.consume(batch)  # batch 4 alone: nothing of scorer, the end of the replay
        assert _quality(twice) == [("scorer:2", True)]
        assert third.replayed == set() and third.quality is not None
        assert third.quality.firing == set()
    finally:
        blocker.release()
        store.shutdown()
