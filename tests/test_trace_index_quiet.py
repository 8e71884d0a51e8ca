"""The trace index's catch-up when nothing with a trace id was committed since its last run (a
stream of metric points only): no transaction is committed, yet lookups know the tail is empty,
and the spans before and after are found through the index — also by a new index on the same
store, as after a restart, whose stored state lags."""

from __future__ import annotations

import asyncio
from pathlib import Path

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from opstrata.otlp.anyvalue import AttributeRenderer
from opstrata.otlp.decode_traces import decode_trace_bytes
from opstrata.otlp.decoder import Encoding, decode_request
from opstrata.otlp.limits import DecodeLimits
from opstrata.schema import Signal, Table
from opstrata.storage.duckdb_queries import DuckDBQueries
from opstrata.storage.duckdb_store import DuckDBStore
from opstrata.storage.duckdb_trace_index import STATE_TABLE, TraceIndex
from tests.otelsdk import make_spans


def _write_spans(store: DuckDBStore, spans) -> None:
    decoded = decode_trace_bytes(
        encode_spans(spans).SerializeToString(), AttributeRenderer(DecodeLimits())
    )
    asyncio.run(store.write(decoded.batches))


def _write_gauge(store: DuckDBStore, value: float) -> None:
    request = ExportMetricsServiceRequest()
    scope = request.resource_metrics.add().scope_metrics.add()
    point = scope.metrics.add(name="queue.depth").gauge.data_points.add()
    point.time_unix_nano, point.as_double = 1_767_225_600 * 10**9, value
    body = request.SerializeToString()
    decoded = decode_request(Signal.METRIC_POINTS, body, Encoding.PROTOBUF, DecodeLimits())
    asyncio.run(store.write(decoded.batches))


def _stored_state(store: DuckDBStore) -> dict[int, int]:
    return dict(store.reader().execute(f'SELECT "Signal", "UpTo" FROM {STATE_TABLE}').fetchall())


def test_catch_up_over_metrics_only_commits_nothing_and_loses_nothing(tmp_path: Path) -> None:
    def build(tracer: trace.Tracer) -> None:
        with tracer.start_as_current_span("root"), tracer.start_as_current_span("child"):
            pass

    first, later = list(make_spans("quiet", build)), list(make_spans("quiet", build))
    first_id, later_id = (format(s[0].context.trace_id, "032x") for s in (first, later))
    store = DuckDBStore(tmp_path / "data")
    store.start()
    try:
        queries = DuckDBQueries(store)
        _write_spans(store, first)  # sequence 1
        queries.index.catch_up()
        assert _stored_state(store) == {0: 1, 1: 1}
        _write_gauge(store, 1.0)  # sequences 2 and 3: nothing with a trace id
        _write_gauge(store, 2.0)
        assert queries.index.catch_up() == 3
        assert _stored_state(store) == {0: 1, 1: 1}  # no commit
        assert queries.index.indexed_upto(Table.TRACES) == 3
        where = queries.index.locate(Table.TRACES, [first_id])
        assert where.tail_empty and where.expected_rows == 2 and where.tail == 4
        assert queries.trace(first_id).num_rows == 2
        # A new index on the store (a restart): its state is the table's, which lags; it scans
        # the empty range again and finds it empty.
        again = TraceIndex(store)
        assert again.indexed_upto(Table.TRACES) == 1
        assert again.catch_up() == 3
        assert again.indexed_upto(Table.TRACES) == 3
        assert again.locate(Table.TRACES, [first_id]).expected_rows == 2
        _write_spans(store, later)  # sequence 4: indexed, and the state committed
        queries.index.catch_up()
        assert _stored_state(store) == {0: 4, 1: 4}
        where = queries.index.locate(Table.TRACES, [later_id])
        assert where.tail_empty and where.expected_rows == 2
        assert queries.trace(later_id).num_rows == 2
        assert queries.trace(first_id).num_rows == 2
    finally:
        store.shutdown()
