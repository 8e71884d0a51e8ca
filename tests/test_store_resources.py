"""Resources stored once (``otel_resources`` + ``*_rows`` tables behind the ``otel_*`` views):
what a client sent comes back exactly, each resource is stored once across commits and
restarts, and a data dir of the previous layout is migrated on start."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from pathlib import Path

import duckdb
import httpx
import numpy as np
import pyarrow as pa
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from opstrata.ingest import IngestPipeline
from opstrata.otlp.decoder import Encoding
from opstrata.schema import Signal, Table
from opstrata.selfmetrics import SelfMetrics
from opstrata.settings import IngestSettings
from opstrata.storage.duckdb_ddl import (
    BATCH_LOG_TABLE,
    STORAGE_SCHEMAS,
    create_statements,
    duckdb_type,
)
from opstrata.storage.duckdb_resources import (
    _entries,
    _row_hash,
    request_resource_ids,
    resource_ids,
)
from opstrata.storage.duckdb_store import DuckDBStore
from tests.otelsdk import resource, span_exporter
from tests.serverproc import ServerProcess
from tests.storeread import read_table

_ENTRY = STORAGE_SCHEMAS[Table.TRACES].field("ResourceAttributes").type


def _send(server: ServerProcess, service: str, extra: dict[str, str], spans: int) -> None:
    """``spans`` spans from a real SDK under the resource ``service`` + ``extra``."""
    provider = TracerProvider(resource=resource(service, **extra))
    provider.add_span_processor(
        BatchSpanProcessor(span_exporter(server, "http"), max_export_batch_size=100)
    )
    tracer = provider.get_tracer("tests.resources")
    for i in range(spans):
        with tracer.start_as_current_span(f"op {i % 7}", kind=trace.SpanKind.SERVER) as span:
            span.set_attribute("i", i)
    provider.force_flush()
    provider.shutdown()


def _resource_rows(data: Path) -> int:
    con = duckdb.connect(str(data / "opstrata.duckdb"), read_only=True)
    try:
        return int(con.sql("SELECT count(*) FROM otel_resources").fetchall()[0][0])
    finally:
        con.close()


def test_two_resources_round_trip_and_are_stored_once_across_restarts(tmp_path: Path) -> None:
    data = tmp_path / "data"
    a = {"host.name": "node-a", "k8s.pod.name": "shop-7d9f-1", "deployment.environment": "prod"}
    b = {"host.name": "node-b", "k8s.pod.name": "cart-5c4b-2", "process.pid": "4242"}
    for round_ in (1, 2):
        server = ServerProcess(data).start()
        try:
            _send(server, "shop", a, 450)
            _send(server, "cart", b, 350)
        finally:
            assert server.stop() == 0, "".join(server.output)
        rows = read_table(data, "otel_traces")
        assert len(rows) == 800 * round_
        by_service: dict[str, list[dict]] = {}
        for row in rows:
            by_service.setdefault(row["ServiceName"], []).append(row)
        for service, extra, count in (("shop", a, 450), ("cart", b, 350)):
            got = by_service[service]
            assert len(got) == count * round_
            expected = dict(resource(service, **extra).attributes)
            expected = {k: str(v) for k, v in expected.items()}
            assert all(row["ResourceAttributes"] == expected for row in got)
        # The second run (a restart) sent the same two resources: reused, not stored again.
        assert _resource_rows(data) == 2


def _post_spans(server: ServerProcess, resources: list[list[tuple[str, str]]], per: int) -> None:
    """One OTLP/HTTP request with ``per`` spans under each of ``resources``, in order; span
    names start with their resource's service name."""
    body = _spans_body(resources, per, 1_700_000_000_000_000_000, named_by_service=True)
    reply = httpx.post(
        server.http_base + "/v1/traces",
        content=body,
        headers={"Content-Type": "application/x-protobuf"},
        timeout=30,
    )
    assert reply.status_code == 200


def test_a_request_of_several_resources_keeps_each_rows_own(server: ServerProcess) -> None:
    """One request with resources A, B, A (the writer's run detection, not the one-resource
    path): each span keeps its own resource; A is stored once."""
    alpha = [("service.name", "alpha"), ("ab", "c")]
    beta = [("service.name", "beta"), ("a", "bc")]
    _post_spans(server, [alpha, beta, alpha], 5)
    data = server.data_dir
    assert server.stop() == 0
    rows = read_table(data, "otel_traces")
    assert len(rows) == 15
    for row in rows:
        name = row["SpanName"].split()[0]
        expected = (
            {"service.name": name, "ab": "c"}
            if name == "alpha"
            else {
                "service.name": name,
                "a": "bc",
            }
        )
        assert row["ResourceAttributes"] == expected, row["SpanName"]
    assert _resource_rows(data) == 2


def _column(lists: list[list[tuple[str, str]]]) -> pa.Array:
    return pa.array([[{"key": k, "value": v} for k, v in row] for row in lists], _ENTRY)


def test_resource_ids_match_a_row_by_row_reading() -> None:
    """The columnar ids (one-resource fast path, runs, several chunks) equal a per-row
    reference: rows with equal attribute lists share an id, different ones never do."""
    rnd = random.Random(5)
    pool = [
        [],
        [("a", "bc")],
        [("ab", "c")],
        [("service.name", "x"), ("host.name", "h1")],
        [("service.name", "x"), ("host.name", "h2")],
        [("host.name", "h1"), ("service.name", "x")],  # same pairs, other order: another list
        [("k", "")],
        [("", "k")],
    ]
    for _ in range(60):
        chunks, reference = [], []
        for _ in range(rnd.randint(1, 4)):
            if rnd.random() < 0.5:  # one resource throughout (the usual request)
                rows = [rnd.randrange(len(pool))] * rnd.randint(1, 30)
            else:
                rows = [rnd.randrange(len(pool)) for _ in range(rnd.randint(1, 30))]
                if rnd.random() < 0.5:
                    rows = sorted(rows)  # long runs
            chunks.append(_column([pool[i] for i in rows]))
            reference += rows
        ids, starts, run_ids = resource_ids(chunks)
        assert len(ids) == len(reference)
        assert ids[starts].tolist() == run_ids.tolist()
        by_pool: dict[int, int] = {}
        for index, rid in zip(reference, ids.tolist(), strict=True):
            assert by_pool.setdefault(index, rid) == rid
        assert len(set(by_pool.values())) == len(by_pool)
        # Run starts: every row whose resource differs from the row before, and chunk starts.
        changes = {0} | {i for i in range(1, len(reference)) if ids[i] != ids[i - 1]}
        assert changes <= set(starts.tolist())


def test_resource_ids_are_pinned() -> None:
    """The ids are on disk (``ResourceId`` in every row): a change of the hash would make a
    resource seen again after an upgrade a new one, and split its metric series. These values
    were computed by the first release of the hash (6c308a4) and must never change."""
    pinned = {
        (("service.name", "x"), ("host.name", "h1")): 14427306251307848774,
        (): 10624631074406812274,
    }
    for entry, expected in pinned.items():
        column = _column([list(entry)])
        assert _row_hash(*_entries(column), 0) == expected
        assert int(resource_ids([column])[0][0]) == expected
        starts, run_ids = request_resource_ids(_column([list(entry)] * 3), [3])
        assert starts.tolist() == [0] and run_ids.tolist() == [expected]


def test_request_ids_of_a_group_commit_column_match_each_row_hashed_alone() -> None:
    """The writer's pass over a group commit's concatenated column (requests of one resource
    checked by memcmp, the rest by runs; a sliced column too) gives every row the id of its own
    attribute list hashed alone. Rows that agree in their strings' lengths but not their bytes,
    or in their bytes but not where the strings are cut, must not share a request's id."""
    rnd = random.Random(11)
    pool = [
        [],
        [("a", "bc")],
        [("ab", "c")],
        [("a", "b"), ("c", "d")],
        [("a", "b"), ("c", "e")],  # the lengths of the one before, other bytes
        [("ab", ""), ("c", "d")],  # the bytes of [("a", "b"), ...] cut elsewhere
        [("service.name", "x"), ("host.name", "h1")],
        [("host.name", "h1"), ("service.name", "x")],
        [("k", "")],
        [("", "k")],
        [("x", "1")] * 3,
    ]
    # Each row hashed alone by the per-row reference (not by the pass under test).
    alone = [_row_hash(*_entries(_column([entry])), 0) for entry in pool]
    assert len(set(alone)) == len(pool)
    for _ in range(200):
        requests = []
        for _ in range(rnd.randint(1, 8)):
            kind = rnd.random()
            if kind < 0.5:
                rows = [rnd.randrange(len(pool))] * rnd.randint(0, 12)
            else:  # one odd row in a request, or any rows
                rows = [rnd.randrange(len(pool))] * rnd.randint(1, 12)
                rows[rnd.randrange(len(rows))] = rnd.randrange(len(pool))
                if kind > 0.8:
                    rows = [rnd.randrange(len(pool)) for _ in rows]
            requests.append(rows)
        flat = [i for rows in requests for i in rows]
        column = pa.concat_arrays([_column([pool[0], pool[3]]), _column([pool[i] for i in flat])])
        column = column.slice(2)  # not at offset 0, as a slice of a larger buffer
        starts, run_ids = request_resource_ids(column, [len(rows) for rows in requests])
        ids = np.repeat(run_ids, np.diff(np.append(starts, len(flat))))
        assert ids.tolist() == [alone[i] for i in flat]
        bounds = np.cumsum([0] + [len(rows) for rows in requests])[:-1]
        assert set(bounds[bounds < len(flat)].tolist()) <= set(starts.tolist())


def _old_layout(con: duckdb.DuckDBPyConnection, last_seq: int) -> None:
    """The tables as the previous version created them: every column, resources per row; and
    the batch log, from which the store resumes its sequence numbers."""
    for table, schema in STORAGE_SCHEMAS.items():
        columns = ", ".join(f'"{f.name}" {duckdb_type(f.type)}' for f in schema)
        con.execute(f"CREATE TABLE {table} ({columns})")
    for statement in create_statements():
        if statement.startswith(f"CREATE TABLE IF NOT EXISTS {BATCH_LOG_TABLE} "):
            con.execute(statement)
    con.execute(
        f"INSERT INTO {BATCH_LOG_TABLE} VALUES (?, 'spans', ['otel_traces'], 0, now())",
        [last_seq],
    )


def test_a_data_dir_of_the_previous_layout_is_migrated_on_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    con = duckdb.connect(str(data / "opstrata.duckdb"))
    n = 1000
    _old_layout(con, last_seq=n // 100)
    service = np.where(np.arange(n) % 3 == 0, "old-a", "old-b")
    resources = _column([[("service.name", s), ("host.name", f"h-{s}")] for s in service])
    columns = {
        "Timestamp": pa.array(1_700_000_000_000_000_000 + np.arange(n)).cast(pa.timestamp("ns")),
        "TraceId": pa.array([f"{i // 10:032x}" for i in range(n)]),
        "SpanId": pa.array([f"{i + 1:016x}" for i in range(n)]),
        "ServiceName": pa.array(service),
        "ResourceAttributes": resources,
        "SpanName": pa.array([f"op {i}" for i in range(n)]),
        "_Seq": pa.array(np.arange(n, dtype=np.uint64) // 100 + 1),
    }
    schema = STORAGE_SCHEMAS[Table.TRACES]
    old = pa.Table.from_arrays(  # noqa: F841 - DuckDB reads it by name
        [columns.get(f.name, pa.nulls(n, f.type)) for f in schema], schema=schema
    )
    con.execute("INSERT INTO otel_traces SELECT * FROM old")
    con.execute("CHECKPOINT")
    con.close()

    server = ServerProcess(data).start(timeout=120)
    try:
        assert any("upgrading otel_traces (1000 rows)" in line for line in server.output)
        trace_id = f"{7:032x}"
        body = server.api(f"/api/v1/traces/{trace_id}").json()
        assert body["span_count"] == 10
        assert {s["resource_attributes"]["host.name"] for s in body["spans"]} == {
            "h-old-a",
            "h-old-b",
        }
        _send(server, "new-c", {"host.name": "h-new"}, 20)
        # A resource the upgrade stored (under DuckDB's hash) keeps that id when seen again.
        _post_spans(server, [[("service.name", "old-a"), ("host.name", "h-old-a")]], 4)
    finally:
        assert server.stop() == 0, "".join(server.output)
    rows = read_table(data, "otel_traces", 'ORDER BY "_Seq", "SpanId"')
    assert len(rows) == n + 24
    for row, expected in zip(rows[:n], service.tolist(), strict=True):
        assert row["ServiceName"] == expected
        assert row["ResourceAttributes"] == {"service.name": expected, "host.name": f"h-{expected}"}
    assert _resource_rows(data) == 3
    con = duckdb.connect(str(data / "opstrata.duckdb"), read_only=True)
    try:
        kinds = dict(
            con.sql(
                "SELECT table_name, table_type FROM information_schema.tables "
                "WHERE table_name IN ('otel_traces', 'otel_logs', 'otel_traces_rows')"
            ).fetchall()
        )
    finally:
        con.close()
    assert kinds == {"otel_traces": "VIEW", "otel_logs": "VIEW", "otel_traces_rows": "BASE TABLE"}


# -- review fixes: the hash's encoding, retention of resources, start-up ------------------------

# Two attribute lists that fed the same bytes to the first version of the hash (no entry count):
# one entry, whose key is the other list's second key offset and whose value holds the rest.
_AMBIGUOUS_ONE = [("\x0b\0\0\0", "xyz\0\0\0\0\x01\0\0\0\x02\0\0\0pq")]
_AMBIGUOUS_TWO = [("\0\0\0\0", "p"), ("\x11\0\0\0xyz", "q")]


def test_lists_of_different_lengths_never_feed_the_hash_the_same_bytes() -> None:
    """Each on its own (the one-resource path) and together (the runs path): two ids."""
    column = _column([_AMBIGUOUS_ONE, _AMBIGUOUS_TWO])
    together, _, _ = resource_ids([column])
    one, _, _ = resource_ids([column.slice(0, 1)])
    two, _, _ = resource_ids([column.slice(1, 1)])
    assert together.tolist() == [one[0], two[0]]
    assert one[0] != two[0]


def _spans_body(
    resources: list[list[tuple[str, str]]], per: int, start_ns: int, named_by_service: bool = False
) -> bytes:
    """An OTLP traces request: ``per`` spans from ``start_ns`` on under each resource; span names
    say which resource (``r<index> <i>``, or ``<service.name> <i>``)."""
    request = ExportTraceServiceRequest()
    for n, pairs in enumerate(resources):
        resource_spans = request.resource_spans.add()
        for key, value in pairs:
            attr = resource_spans.resource.attributes.add()
            attr.key, attr.value.string_value = key, value
        scope = resource_spans.scope_spans.add()
        for i in range(per):
            span = scope.spans.add(
                trace_id=bytes([n + 1] * 16), span_id=(n * 1000 + i + 1).to_bytes(8)
            )
            span.name = f"{dict(pairs)['service.name'] if named_by_service else f'r{n}'} {i}"
            span.start_time_unix_nano = start_ns + i
            span.end_time_unix_nano = start_ns + i + 10
    return request.SerializeToString()


def _open_store(data: Path) -> tuple[DuckDBStore, IngestPipeline]:
    store = DuckDBStore(data)
    store.start()
    pipeline = IngestPipeline(IngestSettings(), store, SelfMetrics(), log_dir=data / "ingest-log")
    pipeline.start()
    return store, pipeline


async def _committed(store: DuckDBStore, requests: int) -> None:
    """Wait until the store has committed ``requests`` requests (one sequence number each)."""
    deadline = time.monotonic() + 30
    while store.last_sequence() < requests:
        assert time.monotonic() < deadline, "not loaded in time"
        await asyncio.sleep(0.02)


async def _ingest_and_wait(store: DuckDBStore, pipeline: IngestPipeline, body: bytes) -> None:
    target = store.last_sequence() + 1
    await pipeline.ingest(Signal.SPANS, body, Encoding.PROTOBUF)
    await _committed(store, target)


def _count(store: DuckDBStore, sql: str, params: list | None = None) -> int:
    return int(store.reader().execute(sql, params or []).fetchall()[0][0])


_DANGLING = (
    "SELECT count(*) FROM otel_traces_rows t "
    'WHERE NOT EXISTS (SELECT 1 FROM otel_resources r WHERE r."ResourceId" = t."ResourceId")'
)


def test_retention_deletes_resources_no_row_refers_to_and_a_returning_one_is_stored_again(
    tmp_path: Path,
) -> None:
    old_ns = 1_600_000_000_000_000_000  # 2020: older than any cutoff below
    now_ns = time.time_ns()
    churned = [[("service.name", "batch"), ("process.pid", str(pid))] for pid in range(40)]
    steady = [("service.name", "api"), ("k8s.pod.uid", "u-1")]

    async def run() -> None:
        store, pipeline = _open_store(tmp_path / "data")
        try:
            await _ingest_and_wait(store, pipeline, _spans_body(churned, 3, old_ns))
            await _ingest_and_wait(store, pipeline, _spans_body([steady], 5, now_ns))
            # The ambiguous pair of the hash's first version: two resources, each its own.
            await _ingest_and_wait(
                store, pipeline, _spans_body([_AMBIGUOUS_ONE, _AMBIGUOUS_TWO], 2, now_ns)
            )
            assert _count(store, "SELECT count(*) FROM otel_resources") == 43
            assert len(store._resources) == 43
            deleted = store.delete_before(now_ns - 3_600_000_000_000)
            assert deleted == 120
            # Only the resources of the remaining rows are left, in the table and the writer.
            assert _count(store, "SELECT count(*) FROM otel_resources") == 3
            assert len(store._resources) == 3
            # A deleted resource seen again is stored again: its new rows read back whole.
            await _ingest_and_wait(store, pipeline, _spans_body(churned[7:8], 4, now_ns))
            assert _count(store, _DANGLING) == 0
            assert _count(store, "SELECT count(*) FROM otel_resources") == 4
        finally:
            await pipeline.shutdown(timeout=5)
            store.shutdown()

    asyncio.run(run())
    rows = read_table(tmp_path / "data", "otel_traces", 'ORDER BY "Timestamp", "SpanName"')
    assert len(rows) == 5 + 4 + 4
    by_resource = {
        "pid 7": {"service.name": "batch", "process.pid": "7"},
        "steady": dict(steady),
        "one": dict(_AMBIGUOUS_ONE),
        "two": dict(_AMBIGUOUS_TWO),
    }
    for row in rows:
        name = row["SpanName"].split()[0]
        if row["ServiceName"] == "batch":
            assert row["ResourceAttributes"] == by_resource["pid 7"]
        elif row["ServiceName"] == "api":
            assert row["ResourceAttributes"] == by_resource["steady"]
        else:
            assert row["ResourceAttributes"] == by_resource["one" if name == "r0" else "two"]
    assert sum(row["ServiceName"] == "batch" for row in rows) == 4


def test_retention_beside_a_busy_writer_leaves_no_row_without_its_resource(tmp_path: Path) -> None:
    """Retention deleting every row and then the resources while the writer keeps committing
    rows of the same few resources (deleted, seen again, inserted again, over and over): every
    committed row keeps its resource, and the writer's known ids follow the table."""
    pool = [[("service.name", "churn"), ("k8s.pod.uid", f"pod-{i}")] for i in range(6)]
    now_ns = time.time_ns()

    async def run() -> None:
        store, pipeline = _open_store(tmp_path / "data")
        stop = threading.Event()
        passes = []

        def retention() -> None:
            while not stop.is_set():
                passes.append(store.delete_before(now_ns + 10**15))  # every row

        thread = threading.Thread(target=retention)
        thread.start()
        try:
            for n in range(200):
                body = _spans_body([pool[n % 6], pool[(n * 5 + 1) % 6]], 3, now_ns + n)
                await pipeline.ingest(Signal.SPANS, body, Encoding.PROTOBUF)
                await asyncio.sleep(0.005)
            await _committed(store, 200)
        finally:
            stop.set()
            thread.join()
        try:
            assert len(passes) > 3
            # Resources were deleted under the writer (how often depends on the threads' timing:
            # under load a few passes may each find the rows' resources still referenced).
            assert store.resources_deleted > 0
            assert _count(store, _DANGLING) == 0
            kept = _count(store, "SELECT count(*) FROM otel_traces_rows")
            assert kept == _count(store, "SELECT count(*) FROM otel_traces")
            referenced = _count(store, 'SELECT count(DISTINCT "ResourceId") FROM otel_traces_rows')
            store.delete_unreferenced_resources()
            assert _count(store, "SELECT count(*) FROM otel_resources") == referenced
            assert len(store._resources) == referenced
            # Every resource once more: its rows read back through the view.
            await _ingest_and_wait(store, pipeline, _spans_body(pool, 3, now_ns + 10**6))
            assert _count(store, _DANGLING) == 0
            assert _count(store, "SELECT count(*) FROM otel_traces") == kept + 18
            assert _count(store, "SELECT count(*) FROM otel_resources") == 6
        finally:
            await pipeline.shutdown(timeout=5)
            store.shutdown()

    asyncio.run(run())


def test_a_store_of_many_resources_starts_knowing_each_of_them(tmp_path: Path) -> None:
    """20,000 resources stored by the writer's hash and 5,000 by DuckDB's (an upgraded data
    dir's): after a start, one of each seen again is referred to by its stored id (no new
    resource row), and a new one is stored."""
    data = tmp_path / "data"
    data.mkdir()
    ours = _column([[("service.name", "s"), ("k8s.pod.uid", f"u-{i}")] for i in range(20_000)])
    theirs = _column([[("service.name", "m"), ("k8s.pod.uid", f"m-{i}")] for i in range(5_000)])
    ids, _, _ = resource_ids([ours])
    con = duckdb.connect(str(data / "opstrata.duckdb"))
    for statement in create_statements():
        con.execute(statement)
    mine = pa.table({"ResourceId": pa.array(ids), "ResourceAttributes": ours})  # noqa: F841
    sql = pa.table({"ResourceAttributes": theirs})  # noqa: F841
    con.execute("INSERT INTO otel_resources SELECT * FROM mine")
    con.execute(
        'INSERT INTO otel_resources SELECT hash("ResourceAttributes"), "ResourceAttributes" '
        "FROM sql"
    )
    con.close()
    now_ns = time.time_ns()

    async def run() -> None:
        store, pipeline = _open_store(data)
        try:
            assert len(store._resources) == 25_000
            again = [
                [("service.name", "s"), ("k8s.pod.uid", "u-12345")],
                [("service.name", "m"), ("k8s.pod.uid", "m-4321")],
            ]
            await _ingest_and_wait(store, pipeline, _spans_body(again, 3, now_ns))
            assert _count(store, "SELECT count(*) FROM otel_resources") == 25_000
            fresh = [[("service.name", "s"), ("k8s.pod.uid", "u-new")]]
            await _ingest_and_wait(store, pipeline, _spans_body(fresh, 3, now_ns))
            assert _count(store, "SELECT count(*) FROM otel_resources") == 25_001
            got = (
                store.reader()
                .execute(
                    'SELECT "SpanName", "ResourceAttributes" FROM otel_traces ORDER BY "SpanName"'
                )
                .fetchall()
            )
            assert len(got) == 9
            # The DuckDB-hashed resource is referred to by its stored id.
            stored_id = _count(
                store,
                'SELECT "ResourceId" FROM otel_resources WHERE "ResourceId" = '
                '(SELECT DISTINCT "ResourceId" FROM otel_traces_rows WHERE "SpanName" = ?)',
                ["r1 0"],
            )
            assert stored_id == _count(
                store,
                "SELECT hash(?::STRUCT(key VARCHAR, value VARCHAR)[])",
                [
                    [
                        {"key": "service.name", "value": "m"},
                        {"key": "k8s.pod.uid", "value": "m-4321"},
                    ]
                ],
            )
        finally:
            await pipeline.shutdown(timeout=5)
            store.shutdown()

    asyncio.run(run())
    rows = read_table(data, "otel_traces", 'ORDER BY "SpanName"')
    expected = {
        "r0": {"service.name": "s", "k8s.pod.uid": "u-12345"},
        "r1": {"service.name": "m", "k8s.pod.uid": "m-4321"},
    }
    assert (
        sum(
            row["ResourceAttributes"] == {"service.name": "s", "k8s.pod.uid": "u-new"}
            for row in rows
        )
        == 3
    )
    assert all(
        row["ResourceAttributes"] == expected[row["SpanName"].split()[0]]
        for row in rows
        if row["ResourceAttributes"]["k8s.pod.uid"] != "u-new"
    )
