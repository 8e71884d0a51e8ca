"""A request that finds the queue full waits for room, in arrival order and for a bounded time,
before it is refused (issue 2, "a client that retries loses nothing").

Without the wait, every client of a burst larger than the queue was refused within the same
millisecond, got the same one-second retry hint and came back together: each second took as
many requests as the queue held, and an SDK that retries six times lost a batch.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from opstrata.admission import Admission
from opstrata.errors import Overloaded, Unavailable
from opstrata.ingest import IngestPipeline
from opstrata.otlp.decoder import Encoding, decode_request
from opstrata.otlp.limits import DecodeLimits
from opstrata.schema import Signal
from opstrata.selfmetrics import SelfMetrics
from opstrata.settings import IngestSettings, SettingsError, load_settings
from opstrata.storage.duckdb_store import DuckDBStore
from tests.storeread import read_table
from tests.test_bad_input import _spans


def test_waiters_are_admitted_in_arrival_order_as_room_comes() -> None:
    async def run() -> None:
        admission = Admission(100)
        assert admission.try_acquire(80)
        order: list[int] = []

        async def wait(name: int, nbytes: int) -> None:
            assert await admission.wait(nbytes, nbytes, timeout=5)
            order.append(name)

        tasks = [asyncio.ensure_future(wait(i, 60)) for i in range(3)]
        await asyncio.sleep(0.01)
        assert admission.waiting_requests == 3 and order == []
        # A newcomer may not take the room the waiters wait for, even when it would fit.
        admission.release(80)
        assert not admission.try_acquire(10)
        await asyncio.sleep(0.01)
        assert order == [0]  # 60 in flight: the next 60 does not fit beside it
        admission.release(60)
        await asyncio.sleep(0.01)
        admission.release(60)
        await asyncio.gather(*tasks)
        assert order == [0, 1, 2]
        assert (admission.in_flight_requests, admission.in_flight_bytes) == (1, 60)
        assert (admission.waiting_requests, admission.waiting_bytes) == (0, 0)

    asyncio.run(run())


def test_a_wait_that_times_out_or_is_cancelled_holds_nothing() -> None:
    async def run() -> None:
        admission = Admission(100)
        assert admission.try_acquire(100)
        assert not await admission.wait(50, 50, timeout=0.05)
        assert (admission.waiting_requests, admission.waiting_bytes) == (0, 0)

        cancelled = asyncio.ensure_future(admission.wait(50, 50, timeout=5))
        behind = asyncio.ensure_future(admission.wait(30, 30, timeout=5))
        await asyncio.sleep(0.01)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        admission.release(100)
        assert await behind  # the cancelled head no longer holds back the one behind it
        assert (admission.in_flight_requests, admission.in_flight_bytes) == (1, 30)
        assert (admission.waiting_requests, admission.waiting_bytes) == (0, 0)

    asyncio.run(run())


def test_the_bodies_waiting_are_bounded() -> None:
    admission = Admission(100, waiting_capacity_bytes=100)
    assert admission.try_acquire(100)
    assert admission.can_wait(500)  # the first may wait whatever its size, as one may be in flight

    async def run() -> None:
        first = asyncio.ensure_future(admission.wait(70, 70, timeout=5))
        await asyncio.sleep(0)
        assert admission.waiting_bytes == 70
        assert admission.can_wait(30) and not admission.can_wait(31)
        admission.release(100)
        assert await first

    asyncio.run(run())


def _logs_request(tag: str, records: int) -> bytes:
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    attr = resource_logs.resource.attributes.add()
    attr.key, attr.value.string_value = "service.name", tag
    scope_logs = resource_logs.scope_logs.add()
    for i in range(records):
        record = scope_logs.log_records.add()
        record.time_unix_nano = 1_700_000_000_000_000_000 + i
        record.body.string_value = f"{tag} record {i} " + "x" * 200
    return request.SerializeToString()


@pytest.mark.parametrize("wait_seconds", [0.0, 5.0])
def test_a_burst_past_the_queue_waits_instead_of_being_refused(
    tmp_path: Path, wait_seconds: float
) -> None:
    """Eight requests at once into a queue that holds about one of them until the store has
    loaded it: with the wait all are stored on the first try; without it the rest are refused."""
    tags = [f"burst-{random.randrange(1 << 30)}-{i}" for i in range(8)]
    bodies = [_logs_request(tag, 300) for tag in tags]

    async def run() -> list[object]:
        # A fill wait far past the admission wait: the waiters' own loads must not be held
        # back to fill a row group while they wait for those loads' release.
        store = DuckDBStore(tmp_path / "data", fill_wait=30.0)
        store.start()
        settings = IngestSettings(
            queue_bytes=len(bodies[0]) * 4,  # charged ~6 bodies before decoding, ~2 after
            max_request_bytes=len(bodies[0]) * 2,
            admission_wait_seconds=wait_seconds,
            admission_wait_bytes=len(bodies[0]) * 8,
        )
        pipeline = IngestPipeline(settings, store, SelfMetrics(), log_dir=tmp_path / "data" / "log")
        pipeline.start()
        try:
            outcomes = await asyncio.gather(
                *[pipeline.ingest(Signal.LOG_RECORDS, b, Encoding.PROTOBUF) for b in bodies],
                return_exceptions=True,
            )
            assert await pipeline.wait_loaded(10)
        finally:
            await pipeline.shutdown(timeout=5)
            store.shutdown()
        return outcomes

    outcomes = asyncio.run(run())
    refused = [o for o in outcomes if isinstance(o, Overloaded)]
    assert all(isinstance(o, Overloaded) or not isinstance(o, BaseException) for o in outcomes)
    if wait_seconds:
        assert refused == []
        services = {row["ServiceName"] for row in read_table(tmp_path / "data", "otel_logs")}
        assert services == set(tags)
    else:
        assert len(refused) >= 6, "a queue of about one request refuses the rest of a burst"


def test_a_waiter_is_refused_when_the_store_fails_while_it_waits(tmp_path: Path) -> None:
    """Everyone gets 503 / UNAVAILABLE while an acknowledged load is failing (``healthy`` is
    False); a request that was waiting for room when it began must not be let in either."""
    failing = _logs_request("failing", 20)
    small = _spans(3)
    waiter = _spans(400, attrs={"k": "v" * 20})

    def decoded_size(signal: Signal, body: bytes) -> int:
        decoded = decode_request(signal, body, Encoding.PROTOBUF, DecodeLimits())
        return max(len(body), decoded.nbytes)

    # The waiter fits beside the failing load alone, not beside it and the small one.
    queue = (
        decoded_size(Signal.LOG_RECORDS, failing)
        + decoded_size(Signal.SPANS, small)
        + int(len(waiter) * 6.0)  # its charge before decoding
        - 1
    )

    async def run() -> list[object]:
        store = DuckDBStore(tmp_path / "data")
        store.start()
        settings = IngestSettings(
            queue_bytes=queue, max_request_bytes=len(waiter), admission_wait_seconds=5.0
        )
        pipeline = IngestPipeline(settings, store, SelfMetrics(), log_dir=tmp_path / "data" / "log")
        pipeline.start()
        store.reader().execute("ALTER TABLE otel_logs_rows RENAME TO otel_logs_away")
        try:
            requests = [
                asyncio.ensure_future(pipeline.ingest(signal, body, Encoding.PROTOBUF))
                for signal, body in [
                    (Signal.LOG_RECORDS, failing),
                    (Signal.SPANS, small),
                    (Signal.SPANS, waiter),
                ]
            ]
            await asyncio.sleep(0.005)
            assert pipeline.admission.waiting_requests == 1
            return await asyncio.gather(*requests, return_exceptions=True)
        finally:
            store.reader().execute("ALTER TABLE otel_logs_away RENAME TO otel_logs_rows")
            await pipeline.shutdown(timeout=5)
            store.shutdown()

    outcomes = asyncio.run(run())
    assert [type(o).__name__ for o in outcomes[:2]] == ["DecodedRequest", "DecodedRequest"]
    assert isinstance(outcomes[2], Unavailable) and "failing" in str(outcomes[2])


def test_a_release_that_empties_the_queue_is_told() -> None:
    """Shutdown waits for nothing in flight: every release that gets there, including one that
    hands back a cancelled waiter's bytes, must say so."""
    admission = Admission(100)
    emptied: list[int] = []
    admission.on_empty = lambda: emptied.append(admission.in_flight_requests)
    assert admission.try_acquire(60) and admission.try_acquire(40)
    admission.release(60)
    assert emptied == []
    admission.adjust(-10)
    admission.release(30)
    assert emptied == [0] and admission.in_flight_bytes == 0


@pytest.mark.parametrize("key", ["ADMISSION_WAIT_SECONDS", "ADMISSION_WAIT_BYTES"])
def test_a_negative_wait_is_a_settings_error(key: str) -> None:
    with pytest.raises(SettingsError, match=key.lower()):
        load_settings(environ={f"OPSTRATA_INGEST__{key}": "-1"})
