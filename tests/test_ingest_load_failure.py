"""An acknowledged request the store refuses is retried, never trimmed away (issue 2 review).

The store's refusal is real: the target table (``otel_logs_rows``, the physical table behind the
``otel_logs`` view) is renamed away through the store's own reader cursor, so DuckDB fails the
insert, and renamed back to let the retry succeed.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from opstrata.errors import Unavailable
from opstrata.ingest import IngestPipeline
from opstrata.otlp.decoder import Encoding
from opstrata.schema import Signal
from opstrata.selfmetrics import SelfMetrics
from opstrata.settings import IngestSettings
from opstrata.storage.duckdb_store import DuckDBStore


def _logs_request(service: str, count: int) -> bytes:
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    attr = resource_logs.resource.attributes.add()
    attr.key, attr.value.string_value = "service.name", service
    scope_logs = resource_logs.scope_logs.add()
    for i in range(count):
        record = scope_logs.log_records.add()
        record.time_unix_nano = 1_700_000_000_000_000_000 + i
        record.body.string_value = f"line {i}"
    return request.SerializeToString()


async def _until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def _rows(store: DuckDBStore, service: str) -> int:
    row = (
        store.reader()
        .execute('SELECT count(*) FROM otel_logs WHERE "ServiceName" = ?', [service])
        .fetchone()
    )
    return int(row[0]) if row else 0


def _open(data: Path) -> tuple[DuckDBStore, IngestPipeline]:
    store = DuckDBStore(data)
    store.start()
    pipeline = IngestPipeline(IngestSettings(), store, SelfMetrics(), log_dir=data / "ingest-log")
    return store, pipeline


async def _close(store: DuckDBStore, pipeline: IngestPipeline) -> None:
    await pipeline.shutdown(timeout=5)
    store.shutdown()


def test_a_refused_load_is_retried_until_it_loads(tmp_path: Path) -> None:
    async def run() -> None:
        store, pipeline = _open(tmp_path / "data")
        pipeline.start()
        try:
            store.reader().execute("ALTER TABLE otel_logs_rows RENAME TO otel_logs_away")
            await pipeline.ingest(Signal.LOG_RECORDS, _logs_request("kept", 30), Encoding.PROTOBUF)
            await _until(lambda: not pipeline.healthy)
            # While the acknowledged load fails, new requests are refused, not piled on.
            with pytest.raises(Unavailable):
                await pipeline.ingest(
                    Signal.LOG_RECORDS, _logs_request("later", 1), Encoding.PROTOBUF
                )
            held = list((tmp_path / "data" / "ingest-log" / "held").glob("*.osl"))
            assert len(held) == 1
            store.reader().execute("ALTER TABLE otel_logs_away RENAME TO otel_logs_rows")
            await _until(lambda: pipeline.healthy)
            assert _rows(store, "kept") == 30
            assert not list((tmp_path / "data" / "ingest-log" / "held").glob("*.osl"))
            assert pipeline.poisoned == 0
        finally:
            await _close(store, pipeline)

    asyncio.run(run())


def test_a_poison_record_is_held_and_loads_after_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"

    async def first() -> None:
        store, pipeline = _open(data)
        pipeline.start()
        try:
            store.reader().execute("ALTER TABLE otel_logs_rows RENAME TO otel_logs_away")
            await pipeline.ingest(
                Signal.LOG_RECORDS, _logs_request("poison", 20), Encoding.PROTOBUF
            )
            # Refused every time: after a few retries it stops holding up ingest, counted.
            await _until(lambda: pipeline.poisoned == 1)
            assert pipeline.healthy
            store.reader().execute("CREATE TABLE otel_logs_rows AS FROM otel_logs_away LIMIT 0")
            # Later requests commit and move the store's log position past the poison record.
            for i in range(3):
                await pipeline.ingest(
                    Signal.LOG_RECORDS, _logs_request(f"after-{i}", 5), Encoding.PROTOBUF
                )
            assert await pipeline.wait_loaded(10)
            await _until(lambda: _rows(store, "after-2") == 5)
            assert _rows(store, "poison") == 0
            store.reader().execute("DROP TABLE otel_logs_rows")
            store.reader().execute("ALTER TABLE otel_logs_away RENAME TO otel_logs_rows")
        finally:
            await _close(store, pipeline)

    async def second() -> None:
        store, pipeline = _open(data)
        pipeline.start()  # retries the held record
        try:
            await _until(lambda: pipeline.healthy and _rows(store, "poison") == 20)
            assert not list((data / "ingest-log" / "held").glob("*.osl"))
        finally:
            await _close(store, pipeline)

    asyncio.run(first())
    held = list((data / "ingest-log" / "held").glob("*.osl"))
    assert len(held) == 1, "the poison record must stay on disk"
    asyncio.run(second())


def _spans_request(service: str, count: int) -> bytes:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    attr = resource_spans.resource.attributes.add()
    attr.key, attr.value.string_value = "service.name", service
    scope_spans = resource_spans.scope_spans.add()
    for i in range(count):
        span = scope_spans.spans.add(trace_id=bytes(range(16)), span_id=(i + 1).to_bytes(8))
        span.name = f"op {i}"
        span.start_time_unix_nano = 1_700_000_000_000_000_000 + i
        span.end_time_unix_nano = span.start_time_unix_nano + 1000
    return request.SerializeToString()


def test_a_refused_record_is_held_before_a_later_commit_moves_past_it(tmp_path: Path) -> None:
    """The store's writer holds a refused record before its next commit records a log position
    past it: a crash right after that commit (the event loop not yet told of the refusal)
    still finds the record and loads it at the next start."""
    data = tmp_path / "data"
    crashed = tmp_path / "crashed"
    later_position: list[int] = []

    async def first() -> None:
        store, pipeline = _open(data)
        pipeline.start()
        try:
            store.reader().execute("ALTER TABLE otel_logs_rows RENAME TO otel_logs_away")
            # Both queued without yielding to the event loop: the logs load is refused, the
            # spans load after it commits and records its (later) log position.
            _, refused = pipeline.submit(
                Signal.LOG_RECORDS, _logs_request("refused", 12), Encoding.PROTOBUF
            )
            _, later = pipeline.submit(Signal.SPANS, _spans_request("later", 3), Encoding.PROTOBUF)
            assert 0 < refused < later
            later_position.append(later)
            deadline = time.monotonic() + 20
            while store.log_position() < later:  # the event loop is blocked meanwhile
                assert time.monotonic() < deadline, "the spans load did not commit"
                time.sleep(0.01)
            held = list((data / "ingest-log" / "held").glob("*.osl"))
            assert [int(path.stem) for path in held] == [refused]
            # "Crash" here: a copy of the data dir as it is on disk at this moment.
            shutil.copytree(data, crashed)
            store.reader().execute("ALTER TABLE otel_logs_away RENAME TO otel_logs_rows")
            await _until(lambda: pipeline.healthy and _rows(store, "refused") == 12)
        finally:
            await _close(store, pipeline)

    async def after_crash() -> None:
        store, pipeline = _open(crashed)
        pipeline.start()
        try:
            assert store.log_position() >= later_position[0]
            await _until(lambda: pipeline.healthy and _rows(store, "refused") == 12)
            rows = (
                store.reader()
                .execute('SELECT count(*) FROM otel_traces WHERE "ServiceName" = ?', ["later"])
                .fetchall()
            )
            assert rows[0][0] == 3  # loaded once: its position was recorded with its rows
            assert not list((crashed / "ingest-log" / "held").glob("*.osl"))
        finally:
            await _close(store, pipeline)

    asyncio.run(first())
    asyncio.run(after_crash())


def test_a_refused_record_that_cannot_be_held_keeps_the_position_below_it(tmp_path: Path) -> None:
    """When the held copy cannot be written (here ``held`` is a file, so the directory cannot
    be made), the store records no log position past the refused record; once a retry has
    held it, positions move on and the record loads."""
    data = tmp_path / "data"

    async def run() -> None:
        store, pipeline = _open(data)
        pipeline.start()
        blocker = data / "ingest-log" / "held"
        try:
            blocker.write_bytes(b"not a directory")
            before = store.log_position()
            store.reader().execute("ALTER TABLE otel_logs_rows RENAME TO otel_logs_away")
            _, refused = pipeline.submit(
                Signal.LOG_RECORDS, _logs_request("unheld", 7), Encoding.PROTOBUF
            )
            _, later = pipeline.submit(Signal.SPANS, _spans_request("after", 2), Encoding.PROTOBUF)
            await _until(lambda: store.stats.commits >= 1 and not pipeline.healthy)
            await _until(lambda: pipeline.loaded >= later)
            # The spans committed, but the recorded position stays below the refused record.
            assert store.log_position() < refused
            assert store.log_position() >= before
            blocker.unlink()
            store.reader().execute("ALTER TABLE otel_logs_away RENAME TO otel_logs_rows")
            await _until(lambda: pipeline.healthy and _rows(store, "unheld") == 7)
            # Released: the next commit records positions past it again.
            await pipeline.ingest(Signal.SPANS, _spans_request("next", 1), Encoding.PROTOBUF)
            await _until(lambda: store.log_position() > later)
        finally:
            await _close(store, pipeline)

    asyncio.run(run())
