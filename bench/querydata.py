"""Synthetic telemetry for ``bench/query.py``, generated as Arrow columns and inserted straight
into a DuckDB store file (sending 10 M spans through OTLP would take ~10 minutes at today's
ingest rate; the query side does not care how rows arrived).

Traces have one shape (10 spans over 4 services, client/server pairs across services, a database
call leaving instrumented code), services and routes drawn at random; durations log-normal per
service, 2 % errors (one service 10 %). Everything is vectorised with numpy: no Python object
per span.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from opstrata.schema import Table
from opstrata.storage.duckdb_ddl import SEQ_COLUMN, STORAGE_SCHEMAS, create_statements
from opstrata.storage.duckdb_migrate import insert_view_rows

__all__ = ["SERVICES", "create_store_file", "load_logs", "load_metrics", "load_spans"]

SERVICES = [f"svc-{i:02d}" for i in range(20)]
ROUTES = [f"/api/v1/resource{i}" for i in range(20)]
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_ENTRY = pa.struct([("key", pa.string()), ("value", pa.string())])
# Span positions of the one trace shape: parent position, role, kind.
#   role: 0 entry service, 1 mid service, 2 back service, 3 side service
_PARENT = np.array([-1, 0, 1, 2, 3, 4, 2, 0, 7, 8])
_ROLE = np.array([0, 0, 1, 1, 2, 2, 1, 0, 3, 3])
_KIND = np.array(
    [
        "Server",
        "Client",
        "Server",
        "Client",
        "Server",
        "Client",
        "Internal",
        "Client",
        "Server",
        "Internal",
    ]
)
SPANS_PER_TRACE = len(_PARENT)


def _hex_ids(rng: np.random.Generator, n: int, nbytes: int) -> pa.Array:
    raw = rng.integers(0, 256, size=(n, nbytes), dtype=np.uint8)
    chars = np.empty((n, nbytes * 2), dtype=np.uint8)
    chars[:, 0::2] = _HEX[raw >> 4]
    chars[:, 1::2] = _HEX[raw & 15]
    offsets = np.arange(0, n * nbytes * 2 + 1, nbytes * 2, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(chars.ravel()))


def _pick(words: list[str] | np.ndarray, index: np.ndarray) -> pa.Array:
    """``words[index]`` as an Arrow string array (a C++ take, no Python string per row)."""
    return pa.array(list(words), pa.string()).take(pa.array(index))


def _attr_list(
    keys: list[str], values: list[pa.Array], present: np.ndarray | None = None
) -> pa.Array:
    """Row i gets every key with ``values[k][i]`` (a list of key/value structs); a key whose
    ``present[k]`` row is False is left out."""
    n = len(values[0])
    k = len(keys)
    mask = np.ones((n, k), dtype=bool) if present is None else present
    order = (np.arange(k)[None, :] * n + np.arange(n)[:, None])[mask]
    key_col = pa.array(keys, pa.string()).take(pa.array(order // n))
    value_col = pa.concat_arrays([pa.array(v, pa.string()) for v in values]).take(pa.array(order))
    entries = pa.StructArray.from_arrays([key_col, value_col], fields=list(_ENTRY))
    offsets = np.concatenate(([0], np.cumsum(mask.sum(axis=1)))).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), entries)


def _empty_lists(n: int, value_type: pa.DataType) -> pa.Array:
    offsets = pa.array(np.zeros(n + 1, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array([], value_type))


def _const(n: int, value: str) -> pa.Array:
    return pa.array([value], pa.string()).take(pa.array(np.zeros(n, dtype=np.int32)))


def _table(table: Table, columns: dict[str, pa.Array]) -> pa.Table:
    schema = STORAGE_SCHEMAS[table]
    arrays = [pa.array(columns[f.name]).cast(f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def create_store_file(data_dir: Path) -> duckdb.DuckDBPyConnection:
    data_dir.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(data_dir / "opstrata.duckdb"), config={"threads": 2})
    for statement in create_statements():
        con.execute(statement)
    return con


ROWS_PER_SEQ = 2_000
"""Rows per commit sequence number: about one OTLP request, as the server would commit them."""


def _seqs(n: int, first_seq: int) -> pa.Array:
    return pa.array(first_seq + np.arange(n, dtype=np.uint64) // ROWS_PER_SEQ)


def span_chunk(
    rng: np.random.Generator, start_ns: int, span_ns: int, n_traces: int, seq: int
) -> pa.Table:
    """``n_traces`` traces starting uniformly in ``[start_ns, start_ns + span_ns)``, sorted."""
    n = n_traces * SPANS_PER_TRACE
    trace_start = np.sort(rng.integers(start_ns, start_ns + span_ns, n_traces))
    roles = np.stack(
        [
            rng.integers(0, 5, n_traces),  # entry services: svc-00..04
            rng.integers(5, 12, n_traces),
            rng.integers(12, 17, n_traces),
            rng.integers(17, 20, n_traces),
        ],
        axis=1,
    )
    route = rng.integers(0, len(ROUTES), n_traces)
    pos = np.tile(np.arange(SPANS_PER_TRACE), n_traces)
    trace_idx = np.repeat(np.arange(n_traces), SPANS_PER_TRACE)
    service_idx = roles[trace_idx, _ROLE[pos]]
    # A client span is named after the service it calls (the role of the next position).
    callee_idx = roles[trace_idx, _ROLE[np.minimum(pos + 1, SPANS_PER_TRACE - 1)]]
    kinds = ["Server", "Client", "Internal"]
    kind_idx = np.array([kinds.index(k) for k in _KIND])[pos]
    # Durations shrink down the tree; children start 100 µs after their parent per level.
    depth = np.array([0, 1, 2, 3, 4, 5, 3, 1, 2, 3])[pos]
    base = rng.lognormal(mean=16.0 - 0.4 * depth, sigma=0.6, size=n)  # ns, ~9 ms at the root
    duration = (base * np.where(service_idx == 9, 3.0, 1.0)).astype(np.int64)
    timestamp = trace_start[trace_idx] + depth * 100_000
    error = rng.random(n) < np.where(service_idx == 13, 0.10, 0.02)
    trace_ids = _hex_ids(rng, n_traces, 16).take(pa.array(trace_idx))
    span_ids = _hex_ids(rng, n, 8)
    parent_pos = _PARENT[pos]
    parent_row = np.where(parent_pos >= 0, trace_idx * SPANS_PER_TRACE + parent_pos, 0)
    parent_ids = pa.compute.if_else(
        pa.array(parent_pos >= 0), span_ids.take(pa.array(parent_row)), pa.scalar("")
    )
    route_idx = route[trace_idx]
    # Names: 0..19 "GET <route>", 20..39 "call <service>", 40 "work", 41 "SELECT orders"
    names = (
        [f"GET {r}" for r in ROUTES] + [f"call {s}" for s in SERVICES] + ["work", "SELECT orders"]
    )
    name_idx = np.where(kind_idx == 0, route_idx, np.where(kind_idx == 1, 20 + callee_idx, 40))
    name_idx = np.where(pos == 5, 41, name_idx)
    server = kind_idx == 0
    status_idx = np.where(error, 2, np.where(server & (rng.random(n) < 0.3), 1, 0))
    is_db = pos == 5
    attrs = _attr_list(
        ["http.route", "http.request.method", "http.response.status_code", "db.system"],
        [
            _pick(ROUTES, route_idx),
            _const(n, "GET"),
            _pick(["200", "500"], error.astype(np.int8)),
            _const(n, "postgresql"),
        ],
        np.stack([~is_db, ~is_db, server, is_db], axis=1),
    )
    resource = _attr_list(
        ["service.name", "host.name", "deployment.environment"],
        [
            _pick(SERVICES, service_idx),
            _pick([f"node-{i}" for i in range(7)], service_idx % 7),
            _const(n, "prod"),
        ],
    )
    traces_schema = STORAGE_SCHEMAS[Table.TRACES]
    columns = {
        "Timestamp": pa.array(timestamp).cast(pa.timestamp("ns")),
        "TraceId": trace_ids,
        "SpanId": span_ids,
        "ParentSpanId": parent_ids,
        "TraceState": _const(n, ""),
        "SpanName": _pick(names, name_idx),
        "SpanKind": _pick(kinds, kind_idx),
        "ServiceName": _pick(SERVICES, service_idx),
        "ResourceAttributes": resource,
        "ScopeName": _const(n, "bench"),
        "ScopeVersion": _const(n, "1.0"),
        "SpanAttributes": attrs,
        "Duration": pa.array(duration),
        "StatusCode": _pick(["Unset", "Ok", "Error"], status_idx),
        "StatusMessage": _pick(["", "boom"], error.astype(np.int8)),
        "Events": _empty_lists(n, traces_schema.field("Events").type.value_type),
        "Links": _empty_lists(n, traces_schema.field("Links").type.value_type),
        "ScopeAttributes": _empty_lists(n, _ENTRY),
        "TraceFlags": pa.array(np.full(n, 1, dtype=np.uint32)),
        SEQ_COLUMN: _seqs(n, seq),
    }
    return _table(Table.TRACES, columns)


def load_spans(
    con: duckdb.DuckDBPyConnection, n_spans: int, start_ns: int, hours: float, seed: int = 1
) -> list[str]:
    """Insert ``n_spans`` spans in time order; return a sample of trace ids."""
    rng = np.random.default_rng(seed)
    n_traces = n_spans // SPANS_PER_TRACE
    chunk_traces = 100_000
    chunks = max(1, n_traces // chunk_traces)
    window = int(hours * 3600e9)
    step = window // chunks
    sample: list[str] = []
    for i in range(chunks):
        chunk = span_chunk(rng, start_ns + i * step, step, chunk_traces, i + 1)
        insert_view_rows(con, Table.TRACES, chunk)
        ids = chunk.column("TraceId")
        sample.extend(ids.take(pa.array(rng.integers(0, len(ids), 20))).to_pylist())
    return sample


_TEMPLATES = np.array(
    [
        "request handled in {} ms",
        "cache miss for key user:{}",
        "retrying upstream call, attempt {}",
        "connection pool exhausted, waited {} ms",
        "order {} placed",
        "payment declined for order {}",
    ]
)


def load_logs(
    con: duckdb.DuckDBPyConnection,
    n_logs: int,
    start_ns: int,
    hours: float,
    seed: int = 2,
    first_seq: int = 10_000_000,
) -> list[str]:
    """Insert ``n_logs`` log records in time order (half with a trace id); return a sample of
    those trace ids."""
    rng = np.random.default_rng(seed)
    chunk = 500_000
    sample: list[str] = []
    window = int(hours * 3600e9)
    chunks = max(1, n_logs // chunk)
    step = window // chunks
    for i in range(chunks):
        ts = np.sort(rng.integers(start_ns + i * step, start_ns + (i + 1) * step, chunk))
        service_idx = rng.integers(0, len(SERVICES), chunk)
        tmpl = rng.integers(0, len(_TEMPLATES), chunk)
        sev = np.array([9, 9, 13, 13, 9, 17])[tmpl]
        sev_text = np.where(sev == 17, "ERROR", np.where(sev == 13, "WARN", "INFO"))
        numbers = rng.integers(0, 100_000, chunk).astype(str)
        body = np.char.replace(_TEMPLATES[tmpl], "{}", numbers)
        with_trace = rng.random(chunk) < 0.5
        trace_ids = pa.compute.if_else(
            pa.array(with_trace), _hex_ids(rng, chunk, 16), pa.scalar("")
        )
        service = np.array(SERVICES)[service_idx]
        columns = {
            "Timestamp": pa.array(ts).cast(pa.timestamp("ns")),
            "ObservedTimestamp": pa.array(ts).cast(pa.timestamp("ns")),
            "TraceId": trace_ids,
            "SpanId": pa.array(np.full(chunk, "")),
            "TraceFlags": pa.array(np.zeros(chunk, dtype=np.uint32)),
            "SeverityText": pa.array(sev_text),
            "SeverityNumber": pa.array(sev.astype(np.uint8)),
            "ServiceName": pa.array(service),
            "Body": pa.array(body),
            "ResourceSchemaUrl": pa.array(np.full(chunk, "")),
            "ResourceAttributes": _attr_list(["service.name"], [service]),
            "ScopeSchemaUrl": pa.array(np.full(chunk, "")),
            "ScopeName": pa.array(np.full(chunk, "app")),
            "ScopeVersion": pa.array(np.full(chunk, "")),
            "ScopeAttributes": _empty_lists(chunk, _ENTRY),
            "LogAttributes": _attr_list(["template"], [tmpl.astype(str)]),
            "EventName": pa.array(np.full(chunk, "")),
            SEQ_COLUMN: _seqs(chunk, first_seq + i * (chunk // ROWS_PER_SEQ)),
        }
        log_rows = _table(Table.LOGS, columns)
        insert_view_rows(con, Table.LOGS, log_rows)
        picked = trace_ids.filter(pa.array(with_trace)).to_pylist()[:: max(1, chunk // 50)]
        sample.extend(picked[:20])
    return sample


def _metric_columns(
    name: str, service: np.ndarray, labels: np.ndarray, start: np.ndarray, ts: np.ndarray
) -> dict[str, pa.Array]:
    n = len(ts)
    return {
        "ResourceAttributes": _attr_list(["service.name"], [service]),
        "ResourceSchemaUrl": pa.array(np.full(n, "")),
        "ScopeName": pa.array(np.full(n, "bench")),
        "ScopeVersion": pa.array(np.full(n, "")),
        "ScopeAttributes": _empty_lists(n, _ENTRY),
        "ScopeDroppedAttrCount": pa.array(np.zeros(n, dtype=np.uint32)),
        "ScopeSchemaUrl": pa.array(np.full(n, "")),
        "ServiceName": pa.array(service),
        "MetricName": pa.array(np.full(n, name)),
        "MetricDescription": pa.array(np.full(n, "")),
        "MetricUnit": pa.array(np.full(n, "ms" if "duration" in name else "1")),
        "Attributes": _attr_list(["http.route"], [labels]),
        "StartTimeUnix": pa.array(start).cast(pa.timestamp("ns")),
        "TimeUnix": pa.array(ts).cast(pa.timestamp("ns")),
        "Flags": pa.array(np.zeros(n, dtype=np.uint32)),
        "Exemplars": _empty_lists(
            n, STORAGE_SCHEMAS[Table.METRICS_SUM].field("Exemplars").type.value_type
        ),
        SEQ_COLUMN: pa.array(np.ones(n, dtype=np.uint64)),
    }


def load_metrics(
    con: duckdb.DuckDBPyConnection, n_points: int, start_ns: int, hours: float, seed: int = 3
) -> None:
    """Cumulative counters (40 %), gauges (20 %), histograms (20 %), exponential ones (20 %):
    one series per service and route, a point every ``interval`` so that the total is reached."""
    rng = np.random.default_rng(seed)
    window = int(hours * 3600e9)
    series = len(SERVICES) * len(ROUTES)  # 400 series per metric
    for table, share, name in (
        (Table.METRICS_SUM, 0.4, "http.server.requests"),
        (Table.METRICS_GAUGE, 0.2, "process.memory.usage"),
        (Table.METRICS_HISTOGRAM, 0.2, "http.server.request.duration"),
        (Table.METRICS_EXPONENTIAL_HISTOGRAM, 0.2, "rpc.server.duration"),
    ):
        per_series = max(2, int(n_points * share) // series)
        interval = window // per_series
        n = per_series * series
        sid = np.repeat(np.arange(series), per_series)
        k = np.tile(np.arange(per_series), series)
        ts = start_ns + k * interval
        order = np.argsort(ts, kind="stable")  # time order, as ingest would insert
        sid, k, ts = sid[order], k[order], ts[order]
        service = np.array(SERVICES)[sid // len(ROUTES)]
        labels = np.array(ROUTES)[sid % len(ROUTES)]
        columns = _metric_columns(name, service, labels, np.full(n, start_ns), ts)
        if table is Table.METRICS_SUM:
            columns["Value"] = pa.array((k * 10 + sid % 7).astype(np.float64))
            columns["AggregationTemporality"] = pa.array(np.full(n, 2, dtype=np.int32))
            columns["IsMonotonic"] = pa.array(np.ones(n, dtype=bool))
        elif table is Table.METRICS_GAUGE:
            columns["Value"] = rng.normal(5e8, 5e7, n)
        else:
            count = (k + 1) * 10
            columns["Count"] = pa.array(count.astype(np.uint64))
            columns["Sum"] = pa.array(count * 12.5)
            columns["Min"] = pa.array(np.full(n, 0.5))
            columns["Max"] = pa.array(np.full(n, 900.0))
            columns["AggregationTemporality"] = pa.array(np.full(n, 2, dtype=np.int32))
            buckets = np.stack([count * f for f in (0.2, 0.3, 0.3, 0.15, 0.05)], axis=1)
            bucket_lists = pa.ListArray.from_arrays(
                pa.array(np.arange(0, n * 5 + 1, 5, dtype=np.int32)),
                pa.array(buckets.astype(np.uint64).ravel()),
            )
            if table is Table.METRICS_HISTOGRAM:
                columns["BucketCounts"] = bucket_lists
                bounds = np.tile(np.array([5.0, 10.0, 25.0, 100.0]), n)
                columns["ExplicitBounds"] = pa.ListArray.from_arrays(
                    pa.array(np.arange(0, n * 4 + 1, 4, dtype=np.int32)), pa.array(bounds)
                )
            else:
                columns["Scale"] = pa.array(np.zeros(n, dtype=np.int32))
                columns["ZeroCount"] = pa.array(np.zeros(n, dtype=np.uint64))
                columns["PositiveOffset"] = pa.array(np.full(n, 2, dtype=np.int32))
                columns["PositiveBucketCounts"] = bucket_lists
                columns["NegativeOffset"] = pa.array(np.zeros(n, dtype=np.int32))
                columns["NegativeBucketCounts"] = _empty_lists(n, pa.uint64())
                columns["ZeroThreshold"] = pa.array(np.zeros(n))
        data = _table(table, columns)
        insert_view_rows(con, table, data)
