"""Resources stored once (``otel_resources`` + ``*_rows`` tables behind the ``otel_*`` views):
what a client sent comes back exactly, each resource is stored once across commits and
restarts, and a data dir of the previous layout is migrated on start."""

from __future__ import annotations

import random
from pathlib import Path

import duckdb
import httpx
import numpy as np
import pyarrow as pa
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from opstrata.schema import Table
from opstrata.storage.duckdb_ddl import (
    BATCH_LOG_TABLE,
    STORAGE_SCHEMAS,
    create_statements,
    duckdb_type,
)
from opstrata.storage.duckdb_resources import resource_ids
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
    """One OTLP/HTTP request with ``per`` spans under each of ``resources``, in order."""
    request = ExportTraceServiceRequest()
    for n, pairs in enumerate(resources):
        resource_spans = request.resource_spans.add()
        for key, value in pairs:
            attr = resource_spans.resource.attributes.add()
            attr.key, attr.value.string_value = key, value
        scope = resource_spans.scope_spans.add()
        for i in range(per):
            span_id = (100 * n + i + 1).to_bytes(8)
            span = scope.spans.add(trace_id=bytes([n + 1] * 16), span_id=span_id)
            span.name = f"{dict(pairs)['service.name']} {i}"
            span.start_time_unix_nano = 1_700_000_000_000_000_000 + i
            span.end_time_unix_nano = span.start_time_unix_nano + 10
    reply = httpx.post(
        server.http_base + "/v1/traces",
        content=request.SerializeToString(),
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
