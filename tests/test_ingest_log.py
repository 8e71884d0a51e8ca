"""The ingest log: records survive reopening, a torn tail is cut, loaded segments are deleted,
and an API request sees what was acknowledged before it even when the store lags behind."""

from __future__ import annotations

import asyncio
import random
import sys
import threading
import time
from pathlib import Path

import httpx

from opstrata.ingestlog import IngestLog, LogRecord
from tests.serverproc import ServerProcess
from tests.test_durability import _request


def _write(directory: Path, bodies: list[bytes], segment_bytes: int = 1 << 20) -> list[int]:
    """Append ``bodies`` to a fresh log, wait for their fsync, close; return the end positions."""
    ingest_log = IngestLog(directory, segment_bytes=segment_bytes)
    assert ingest_log.open(0) == []
    ends: list[int] = []

    async def run() -> None:
        ingest_log.start(asyncio.get_running_loop())
        for body in bodies:
            ends.append(ingest_log.append(1, 2, body))
        await ingest_log.wait_synced(ends[-1])
        assert ingest_log.synced >= ends[-1]

    asyncio.run(run())
    ingest_log.close()
    return ends


def test_records_come_back_after_the_loaded_position(tmp_path: Path) -> None:
    bodies = [random.randbytes(random.randrange(1, 5000)) for _ in range(20)]
    ends = _write(tmp_path, bodies)
    assert ends == sorted(ends) and len(set(ends)) == 20

    reopened = IngestLog(tmp_path)
    records = reopened.open(0)
    assert [r.body for r in records] == bodies
    assert [r.end for r in records] == ends
    assert {(r.signal, r.encoding) for r in records} == {(1, 2)}
    assert reopened.appended == ends[-1]
    reopened.close()

    again = IngestLog(tmp_path)
    assert [r.body for r in again.open(ends[11])] == bodies[12:]
    again.close()


def test_a_torn_or_corrupt_tail_is_cut_and_appending_continues(tmp_path: Path) -> None:
    bodies = [random.randbytes(1000) for _ in range(3)]
    ends = _write(tmp_path, bodies)
    (segment,) = tmp_path.glob("*.seg")
    with open(segment, "r+b") as handle:
        handle.truncate(ends[-1] - 10)  # the last record cut short, as by a crash mid-write

    reopened = IngestLog(tmp_path)
    assert [r.body for r in reopened.open(0)] == bodies[:2]
    assert segment.stat().st_size == ends[1]
    assert reopened.appended == ends[1]
    reopened.close()

    # A flipped byte inside the last record fails its CRC: it ends the log too.
    data = bytearray(segment.read_bytes())
    data[-5] ^= 0xFF
    segment.write_bytes(bytes(data))
    third = IngestLog(tmp_path)
    assert [r.body for r in third.open(0)] == bodies[:1]
    third.close()

    more = [b"after the cut"]
    fourth = IngestLog(tmp_path)
    fourth.open(0)

    async def append() -> int:
        fourth.start(asyncio.get_running_loop())
        end = fourth.append(3, 1, more[0])
        await fourth.wait_synced(end)
        return end

    end = asyncio.run(append())
    fourth.close()
    fifth = IngestLog(tmp_path)
    records = fifth.open(0)
    assert [r.body for r in records] == [bodies[0], more[0]]
    assert records[-1].end == end and records[-1].signal == 3
    fifth.close()


def test_loaded_segments_are_deleted_and_positions_never_reused(tmp_path: Path) -> None:
    bodies = [random.randbytes(3000) for _ in range(12)]
    ends = _write(tmp_path, bodies, segment_bytes=8000)  # three records per segment
    segments = sorted(tmp_path.glob("*.seg"))
    assert len(segments) == 4

    reopened = IngestLog(tmp_path, segment_bytes=8000)
    pending = reopened.open(ends[6])  # the store has loaded seven records
    assert [r.body for r in pending] == bodies[7:]
    # Segments wholly at or below the loaded position are gone; the one holding record 7 stays.
    # (Reopening a full last segment begins a new one: that one is new, not a survivor.)
    left = {p.name for p in tmp_path.glob("*.seg")}
    assert not left & {p.name for p in segments[:2]}
    assert left >= {p.name for p in segments[2:]}
    reopened.trim(ends[-1])
    assert len(list(tmp_path.glob("*.seg"))) == 1  # never the segment being written
    reopened.close()

    # The store loaded past the log's end (the log's tail lost in an OS crash): new records
    # start beyond what the store has, so a position is never handed out twice.
    for path in tmp_path.glob("*.seg"):
        path.unlink()
    lost = IngestLog(tmp_path)
    assert lost.open(ends[-1] + 500) == []
    assert lost.appended == ends[-1] + 500
    lost.close()


def _post(base: str, trace_id: bytes, spans: int = 200) -> int:
    reply = httpx.post(
        base + "/v1/traces",
        content=_request(trace_id, spans),
        headers={"content-type": "application/x-protobuf"},
        timeout=30,
    )
    return reply.status_code


def test_api_reads_what_was_acknowledged_while_the_store_lags(tmp_path: Path) -> None:
    # One request per commit makes the store load far slower than the receiver acknowledges.
    env = {"OPSTRATA_STORAGE__COMMIT_MAX_ROWS": "1"}
    server = ServerProcess(tmp_path / "data", env=env).start()
    try:
        trace_ids = [random.randbytes(16) for _ in range(60)]
        statuses: list[int] = []
        lock = threading.Lock()

        def send(ids: list[bytes]) -> None:
            for trace_id in ids:
                status = _post(server.http_base, trace_id)
                with lock:
                    statuses.append(status)

        senders = [threading.Thread(target=send, args=(trace_ids[i::30],)) for i in range(30)]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(120)
        assert statuses == [200] * 60
        # (The store is then typically thousands of spans behind: one commit per request.)
        # Straight after the last acknowledgement, every trace is readable through the API.
        for trace_id in trace_ids[-6:]:
            reply = server.api(f"/api/v1/traces/{trace_id.hex()}")
            assert reply.status_code == 200, reply.text
            assert len(reply.json()["spans"]) == 200
        assert _committed_spans(server) == 60 * 200
    finally:
        assert server.stop() == 0
    assert not list((tmp_path / "data" / "ingest-log").glob("*.seg"))[1:], "loaded segments left"


def _committed_spans(server: ServerProcess) -> float:
    for line in server.api("/metrics").text.splitlines():
        if line.startswith('opstrata_committed_items_total{signal="spans"}'):
            return float(line.split()[-1])
    return 0.0


def test_log_disabled_still_acknowledges_after_the_commit(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", env={"OPSTRATA_INGEST__LOG": "false"}).start()
    try:
        trace_id = random.randbytes(16)
        started = time.monotonic()
        assert _post(server.http_base, trace_id) == 200
        assert time.monotonic() - started < 30
        assert _committed_spans(server) == 200  # committed before the reply, without waiting
        assert not (tmp_path / "data" / "ingest-log").exists()
    finally:
        assert server.stop() == 0


def _reread(directory: Path, ends: list[int], bodies: list[bytes]) -> None:
    """Every record is read back from disk at exactly the position ``append`` returned."""
    reopened = IngestLog(directory)
    records = reopened.open(0)
    reopened.close()
    assert [r.end for r in records] == ends
    assert [r.body for r in records] == bodies


def test_a_queue_taken_by_one_writer_cannot_be_overtaken_by_another(tmp_path: Path) -> None:
    # The syncer and ``record_at`` (the store's writer thread) both write queued records. A
    # writer that has taken the queue must write it before any later writer writes the records
    # queued after it, or records land at positions other than those ``append`` handed out.
    # Forced here: one writer waits for the files while the next one is already free to go.
    ingest_log = IngestLog(tmp_path)
    ingest_log.open(0)
    bodies: list[bytes] = []
    ends: list[int] = []
    for round_ in range(8):
        ingest_log._io_lock.acquire()
        first = f"first {round_}".encode() * (round_ + 1)
        ends.append(ingest_log.append(1, 1, first))
        bodies.append(first)
        early = threading.Thread(target=ingest_log._write_queued)
        early.start()
        deadline = time.monotonic() + 0.1
        while ingest_log._queued and time.monotonic() < deadline:
            time.sleep(0.001)  # (the early writer may take the queue before the files)
        second = f"second {round_}".encode()
        ends.append(ingest_log.append(1, 1, second))
        bodies.append(second)
        # Released and written at once by this thread, before the early one is scheduled.
        ingest_log._io_lock.release()
        ingest_log._write_queued()
        early.join(10)
        assert ingest_log._record_at(ends[-1]) == LogRecord(ends[-1], 1, 1, second)
    ingest_log.close()
    _reread(tmp_path, ends, bodies)


def test_concurrent_writers_keep_every_record_at_its_position(tmp_path: Path) -> None:
    # Appends from the event loop while the syncer writes and fsyncs and another thread asks
    # ``record_at`` (as the store's writer does for a refused load), with thread switches
    # forced as often as the interpreter allows.
    ingest_log = IngestLog(tmp_path, segment_bytes=256 * 1024, sync_interval=0.0)
    ingest_log.open(0)
    bodies = [i.to_bytes(4, "little") * (1 + i % 7) for i in range(30_000)]
    ends: list[int] = []
    misread: list[tuple[int, LogRecord | None]] = []
    stop = threading.Event()

    def write() -> None:  # what ``record_at`` does first, as often as it can
        while not stop.is_set():
            ingest_log._write_queued()

    def ask() -> None:
        while not stop.is_set():
            if ends:
                end = ends[-1]
                record = ingest_log.record_at(end)
                if record is None or record.end != end:
                    misread.append((end, record))

    async def run() -> None:
        ingest_log.start(asyncio.get_running_loop())
        others = [threading.Thread(target=ask), threading.Thread(target=write)]
        for thread in others:
            thread.start()
        try:
            for index, body in enumerate(bodies):
                ends.append(ingest_log.append(1, 1, body))
                if index % 500 == 0:
                    await asyncio.sleep(0)
            await ingest_log.wait_synced(ends[-1])
        finally:
            stop.set()
            for thread in others:
                thread.join(30)

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        asyncio.run(run())
    finally:
        sys.setswitchinterval(switch)
    ingest_log.close()
    assert not misread, misread[:3]
    for end, body in zip(ends[:: len(ends) // 7], bodies[:: len(ends) // 7], strict=False):
        again = IngestLog(tmp_path)
        again.open(0)
        assert again._record_at(end) == LogRecord(end, 1, 1, body)
        again.close()
    _reread(tmp_path, ends, bodies)


def test_a_failing_fsync_callback_does_not_strand_the_others(tmp_path: Path) -> None:
    ingest_log = IngestLog(tmp_path)
    ingest_log.open(0)
    settled: list[tuple[str, OSError | None]] = []

    def failing(error: OSError | None) -> None:
        settled.append(("failing", error))
        raise RuntimeError("a receiver's reply could not be sent")

    async def run() -> None:
        ingest_log.start(asyncio.get_running_loop())
        first = ingest_log.append(1, 1, b"one")
        ingest_log.when_synced(first, failing)
        second = ingest_log.append(1, 1, b"two")
        ingest_log.when_synced(second, lambda error: settled.append(("second", error)))
        third = ingest_log.append(1, 1, b"three")
        # A future waiter behind them: settled in the same pass, not stranded.
        await asyncio.wait_for(ingest_log.wait_synced(third), 10)

    asyncio.run(run())
    ingest_log.close()
    assert settled == [("failing", None), ("second", None)]
    assert not ingest_log._waiters
