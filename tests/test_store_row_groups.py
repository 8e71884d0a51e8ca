"""Commits of whole DuckDB row groups: the rows skip DuckDB's WAL (written to the file at
once, "optimistic writes") yet survive ``kill -9`` without the ingest log's help; under load a
commit waits to fill a row group, unless a reader asks for what was acknowledged."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import httpx
import pytest

from bench.ingest import make_metrics
from opstrata.otlp.decoder import Encoding, decode_request
from opstrata.otlp.limits import DecodeLimits
from opstrata.schema import Signal, Table
from opstrata.storage.base import StoreError
from opstrata.storage.duckdb_store import DuckDBStore
from tests.serverproc import ServerProcess
from tests.storeread import read_table
from tests.test_store_resources import _spans_body

_ROW_GROUP = 2048  # DuckDB's smallest: a few requests cross it
_PER_REQUEST = 3000


def _request(trace_id: bytes, spans: int) -> bytes:
    body = _spans_body([[("service.name", "rowgroups")]], spans, time.time_ns())
    return body.replace(bytes([1] * 16), trace_id)  # the helper's one trace id, made unique


def test_a_commit_of_whole_row_groups_skips_the_wal_and_survives_kill_9(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = {"OPSTRATA_STORAGE__DUCKDB_ROW_GROUP_SIZE": str(_ROW_GROUP)}
    first = ServerProcess(data_dir, env=env).start()
    wal = data_dir / "opstrata.duckdb.wal"
    before = wal.stat().st_size if wal.exists() else 0
    traces = [random.randbytes(16) for _ in range(3)]
    with httpx.Client(timeout=30) as client:
        for trace_id in traces:
            reply = client.post(
                first.http_base + "/v1/traces",
                content=_request(trace_id, _PER_REQUEST),
                headers={"content-type": "application/x-protobuf"},
            )
            assert reply.status_code == 200
    # The API answers once everything acknowledged before it is committed (read-after-ack).
    reply = first.api(f"/api/v1/traces/{traces[-1].hex()}")
    assert reply.status_code == 200
    grown = (wal.stat().st_size if wal.exists() else 0) - before
    first.kill()
    # Through the WAL a span of these costs ~185 bytes; a whole row group only its pointers.
    assert grown < 20 * _PER_REQUEST * len(traces), f"WAL grew {grown} bytes"

    second = ServerProcess(data_dir).start()  # DuckDB's own row group size: reads them alike
    assert second.stop() == 0
    # The store kept them itself: nothing was left in the ingest log to load again.
    assert "ingest log: loading" not in "".join(second.output)
    rows = read_table(data_dir, "otel_traces", "WHERE ServiceName = 'rowgroups'")
    per_trace: dict[str, list[dict]] = {}
    for row in rows:
        per_trace.setdefault(row["TraceId"], []).append(row)
    assert sorted(per_trace) == sorted(t.hex() for t in traces)
    for spans in per_trace.values():
        assert sorted(row["SpanName"] for row in spans) == sorted(
            f"r0 {i}" for i in range(_PER_REQUEST)
        )
        assert {row["ResourceAttributes"]["service.name"] for row in spans} == {"rowgroups"}


def _batches(spans: int) -> list:
    body = _spans_body([[("service.name", "fill")]], spans, 1_700_000_000_000_000_000)
    return decode_request(Signal.SPANS, body, Encoding.PROTOBUF, DecodeLimits()).batches


async def _steady(store: DuckDBStore, requests: int, spans: int, pause: float) -> list:
    futures = []
    for position in range(1, requests + 1):
        futures.append(store.enqueue(_batches(spans), log_position=position))
        await asyncio.sleep(pause)
    await asyncio.wait_for(asyncio.gather(*futures), 30)
    return futures


def test_under_load_a_commit_fills_a_row_group(tmp_path: Path) -> None:
    """100 spans every 10 ms: ~500 rows per 50-ms interval, a row group's worth well within
    the fill wait; so after the first (a quiet spell before it: at once) commits hold at
    least a row group of spans, not an interval's."""
    store = DuckDBStore(tmp_path, row_group_size=_ROW_GROUP, load_interval=0.05, fill_wait=2.0)
    store.start()
    try:
        asyncio.run(_steady(store, requests=100, spans=100, pause=0.01))
        stats = store.stats
        assert store.count(Table.TRACES) == 100 * 100
        # Every commit but the first and the last (the rest when loads stop) is full.
        assert stats.commits <= 2 + (100 * 100 - 100) // _ROW_GROUP
    finally:
        store.shutdown()


def _metric_batches(rnd: random.Random) -> list:
    """bench/ingest.py's metrics request: 40 sum, 40 histogram and 20 gauge points, kept
    exported as the server decodes them."""
    body = make_metrics(rnd)
    limits = DecodeLimits()
    return decode_request(Signal.METRIC_POINTS, body, Encoding.PROTOBUF, limits, True).batches


async def _steady_metrics(store: DuckDBStore, requests: int, pause: float) -> None:
    rnd = random.Random(5)
    futures = []
    for position in range(1, requests + 1):
        futures.append(store.enqueue(_metric_batches(rnd), log_position=position))
        await asyncio.sleep(pause)
    await asyncio.wait_for(asyncio.gather(*futures), 30)


def test_under_load_a_commit_fills_a_row_group_of_every_table_that_fills_in_time(
    tmp_path: Path,
) -> None:
    """Metric requests fill three tables at different rates: the commit waits until the
    slowest one that fills within the fill wait (the gauge table, a fifth of the points) holds
    a row group too, not only until the first does (then every gauge row went through the
    WAL). 250 requests: 5,000 gauge rows, two row groups' worth."""
    store = DuckDBStore(tmp_path, row_group_size=_ROW_GROUP, load_interval=0.05, fill_wait=5.0)
    store.start()
    try:
        asyncio.run(_steady_metrics(store, requests=250, pause=0.004))
        assert store.count(Table.METRICS_GAUGE) == 250 * 20
        assert store.count(Table.METRICS_SUM) == store.count(Table.METRICS_HISTOGRAM) == 250 * 40
        # The first (after a quiet spell: at once), two of a gauge row group each, the rest.
        # Stopping at the first table's row group (the sums, at 52 requests) made 5 or more.
        assert store.stats.commits <= 2 + (250 * 20) // _ROW_GROUP
    finally:
        store.shutdown()


async def _cut_short(store: DuckDBStore) -> None:
    first = store.enqueue(_batches(100), log_position=1)
    await asyncio.wait_for(first, 10)  # after a quiet spell: at once
    # A burst right after that commit: its rate fills a row group within the fill wait...
    waiting = [store.enqueue(_batches(100), log_position=p) for p in range(2, 6)]
    await asyncio.sleep(1.0)
    # ...so it waits for more (the load interval has long passed), until a reader asks.
    assert not any(f.done() for f in waiting), "a group that fills soon waits for it"
    store.commit_soon()
    await asyncio.wait_for(asyncio.gather(*waiting), 10)
    assert store.log_position() == 5


def test_a_reader_cuts_the_wait_for_a_full_row_group_short(tmp_path: Path) -> None:
    store = DuckDBStore(tmp_path, row_group_size=_ROW_GROUP, load_interval=0.05, fill_wait=60.0)
    store.start()
    try:
        asyncio.run(_cut_short(store))
        assert store.count(Table.TRACES) == 5 * 100
    finally:
        store.shutdown()


def test_a_row_group_size_duckdb_cannot_use_is_refused_by_name(tmp_path: Path) -> None:
    store = DuckDBStore(tmp_path, row_group_size=3000)
    with pytest.raises(StoreError, match=r"storage\.duckdb_row_group_size"):
        store.start()


def test_admission_short_of_room_ends_the_fill_wait(tmp_path: Path) -> None:
    """An ingest queue that holds less than a row group of decoded spans: the writer must not
    hold the acknowledged loads (admission counts them as in flight) for the whole fill wait,
    refusing every client meanwhile (review of the tenth round: 8,063 against 40,669 rows/s).
    With a 30-s fill wait, the requests below are refused until ~30 s after the first commit
    unless admission's shortage ends the fill."""
    data_dir = tmp_path / "data"
    env = {
        "OPSTRATA_INGEST__QUEUE_BYTES": str(2 * 1024 * 1024),  # ~5 requests of 2,000 spans
        "OPSTRATA_INGEST__MAX_REQUEST_BYTES": str(1024 * 1024),
        "OPSTRATA_STORAGE__DUCKDB_FILL_WAIT_SECONDS": "30",
    }
    server = ServerProcess(data_dir, env=env).start()
    requests, spans = 12, 2000  # 24,000 spans: more than a row group (16,384)
    refused = 0
    deadline = time.monotonic() + 20
    try:
        with httpx.Client(timeout=30) as client:
            for n in range(requests):
                body = _request(bytes([n + 1] * 16), spans)
                while True:
                    reply = client.post(
                        server.http_base + "/v1/traces",
                        content=body,
                        headers={"content-type": "application/x-protobuf"},
                    )
                    if reply.status_code != 503:
                        break
                    refused += 1
                    assert time.monotonic() < deadline, (
                        f"request {n} still refused after 20 s ({refused} refusals)"
                    )
                    time.sleep(0.05)  # a client's retry
                assert reply.status_code == 200
    finally:
        assert server.stop() == 0
    rows = read_table(data_dir, "otel_traces", "WHERE ServiceName = 'rowgroups'")
    assert len(rows) == requests * spans
    assert len({row["TraceId"] for row in rows}) == requests
    assert refused < 100, f"{refused} refusals"


async def _end_fill(store: DuckDBStore) -> None:
    await asyncio.wait_for(store.enqueue(_batches(100), log_position=1), 10)  # at once
    # Asked while the next group gathers for the load interval: the interval still holds...
    store.end_fill()
    second = [store.enqueue(_batches(100), log_position=p) for p in range(2, 6)]
    await asyncio.sleep(0.5)
    assert not any(f.done() for f in second), "end_fill does not cut the load interval"
    # ...but the group does not then wait 60 s to fill a row group.
    await asyncio.wait_for(asyncio.gather(*second), 10)
    assert store.stats.commits == 2
    # Asked while a group waits to fill: it commits.
    third = [store.enqueue(_batches(100), log_position=p) for p in range(6, 10)]
    await asyncio.sleep(3.0)  # past the 1-s load interval: waiting to fill
    assert not any(f.done() for f in third), "a group that fills soon waits for it"
    store.end_fill()
    await asyncio.wait_for(asyncio.gather(*third), 10)
    assert store.stats.commits == 3
    assert store.log_position() == 9


def test_end_fill_ends_the_wait_for_a_row_group_but_not_the_load_interval(tmp_path: Path) -> None:
    store = DuckDBStore(tmp_path, row_group_size=_ROW_GROUP, load_interval=1.0, fill_wait=60.0)
    store.start()
    try:
        asyncio.run(_end_fill(store))
        assert store.count(Table.TRACES) == 9 * 100
    finally:
        store.shutdown()


def test_a_fill_wait_of_0_commits_every_load_interval(tmp_path: Path) -> None:
    store = DuckDBStore(tmp_path, row_group_size=_ROW_GROUP, load_interval=0.05, fill_wait=0.0)
    store.start()
    try:
        asyncio.run(_steady(store, requests=100, spans=100, pause=0.01))
        assert store.count(Table.TRACES) == 100 * 100
        # ~1 s of loads at 50 ms a commit: far more commits than the 5 row groups' worth that
        # a fill wait gathers (test_under_load_a_commit_fills_a_row_group).
        assert store.stats.commits > 2 + (100 * 100 - 100) // _ROW_GROUP
    finally:
        store.shutdown()
