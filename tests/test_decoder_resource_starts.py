"""The rows where each resource starts (``Batches.resource_starts``), as the C decoders hand them
over, against a Python reference: every ``Resource*`` of the request decoded on its own by the
reference decoder, its rows per table counted (a resource with no rows in a table starts nothing
there). Protobuf (also re-encoded with the wire format's freedoms) and JSON bodies; two equal
consecutive resources are two starts. The topology consumer then learns the same graph from
batches with starts as from the same batches without.
"""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from opstrata.consumers import CommittedBatch
from opstrata.otlp.anyvalue import AttributeRenderer
from opstrata.otlp.decode_logs import decode_logs
from opstrata.otlp.decode_metrics import decode_metrics
from opstrata.otlp.decode_traces import decode_traces
from opstrata.otlp.decoder import Encoding, decode_request
from opstrata.otlp.limits import DecodeLimits
from opstrata.schema import Signal, Table
from opstrata.storage.duckdb_ddl import RESOURCE_COLUMN, STORAGE_SCHEMAS
from opstrata.storage.duckdb_resources import decoded_runs, request_resource_ids
from tests import test_wire_decoder as spans
from tests import test_wire_decoder_logs as logs
from tests import test_wire_decoder_metrics as metrics
from tests.test_otlp_json import to_otlp_json
from tests.test_wire_decoder import encode

LIMITS = DecodeLimits()
# Per signal: the request type, its list of resources, the reference decoder, the generator.
SIGNALS = {
    Signal.SPANS: (ExportTraceServiceRequest, "resource_spans", decode_traces, spans),
    Signal.LOG_RECORDS: (ExportLogsServiceRequest, "resource_logs", decode_logs, logs),
    Signal.METRIC_POINTS: (
        ExportMetricsServiceRequest,
        "resource_metrics",
        decode_metrics,
        metrics,
    ),
}


def _reference_starts(signal: Signal, request) -> dict[Table, list[int]]:
    kind, field, reference, _ = SIGNALS[signal]
    starts: dict[Table, list[int]] = {}
    rows: dict[Table, int] = {}
    for resource in getattr(request, field):
        one = kind()
        getattr(one, field).add().CopyFrom(resource)
        for table, batch in reference(one, AttributeRenderer(LIMITS)).batches:
            if batch.num_rows:
                starts.setdefault(table, []).append(rows.get(table, 0))
                rows[table] = rows.get(table, 0) + batch.num_rows
    return starts


def _decoded_starts(signal: Signal, body: bytes, encoding: Encoding) -> dict[Table, list[int]]:
    decoded = decode_request(signal, body, encoding, LIMITS)
    starts = decoded.batches.resource_starts  # type: ignore[attr-defined]
    assert starts is not None
    assert list(starts) == [table for table, _ in decoded.batches]
    for table, batch in decoded.batches:
        assert starts[table].dtype == np.int32
        assert starts[table][-1] < batch.num_rows
    committed = CommittedBatch.of(1, decoded.batches)
    assert committed.resource_starts is not None
    return {table: array.tolist() for table, array in starts.items()}


@pytest.mark.parametrize("signal", list(SIGNALS), ids=lambda signal: signal.value)
def test_starts_match_the_reference_on_many_seeded_requests(signal: Signal) -> None:
    kind, _, _, module = SIGNALS[signal]
    several = 0
    for seed in range(300):
        rnd = random.Random(seed)
        request = module.random_request(rnd)
        want = _reference_starts(signal, request)
        several += any(len(starts) > 1 for starts in want.values())
        assert _decoded_starts(signal, request.SerializeToString(), Encoding.PROTOBUF) == want
        # Re-encoded with the wire format's freedoms (a oneof member replaced, messages split),
        # the bytes may say another request: the reference reads them as upb does.
        body = encode(request, rnd)
        again = _reference_starts(signal, kind.FromString(body))
        assert _decoded_starts(signal, body, Encoding.PROTOBUF) == again, seed
        if seed % 3 == 0:
            assert _decoded_starts(signal, to_otlp_json(request), Encoding.JSON) == want, seed
    assert several > 20  # the generator does make requests of several resources


@pytest.mark.parametrize("signal", list(SIGNALS), ids=lambda signal: signal.value)
def test_two_equal_consecutive_resources_are_two_starts(signal: Signal) -> None:
    kind, field, _, module = SIGNALS[signal]
    rnd = random.Random(7)
    request = kind()
    while not getattr(request, field) or not _reference_starts(signal, request):
        request = module.random_request(rnd)
    resources = getattr(request, field)
    del resources[1:]
    resources.add().CopyFrom(resources[0])
    want = _reference_starts(signal, request)
    assert all(len(starts) == 2 for starts in want.values())
    assert _decoded_starts(signal, request.SerializeToString(), Encoding.PROTOBUF) == want


@pytest.mark.parametrize("signal", list(SIGNALS), ids=lambda signal: signal.value)
def test_reference_decoder_hands_over_nothing(signal: Signal) -> None:
    _, _, reference, module = SIGNALS[signal]
    decoded = reference(module.random_request(random.Random(3)), AttributeRenderer(LIMITS))
    assert CommittedBatch.of(1, decoded.batches).resource_starts is None


def _placed_request(rnd: random.Random) -> ExportMetricsServiceRequest:
    """A random request whose resources carry placement keys from small pools (so that runs of
    equal resources, within a request and across requests, are common)."""
    request = metrics.random_request(rnd)
    for resource in request.resource_metrics:
        del resource.resource.attributes[:]
        for key, pool in (
            ("service.name", ["a", "b"]),
            ("host.name", ["h1", "h2"]),
            ("k8s.pod.name", ["p1", "p2", ""]),
            ("k8s.node.name", ["n1"]),
        ):
            if rnd.random() < 0.8:
                attribute = resource.resource.attributes.add(key=key)
                attribute.value.string_value = rnd.choice(pool)
    if request.resource_metrics and rnd.random() < 0.5:
        request.resource_metrics.add().CopyFrom(request.resource_metrics[-1])
    return request


def test_topology_learns_the_same_with_and_without_starts(tmp_path) -> None:
    from dataclasses import replace

    from opstrata.consumers import ConsumerContext
    from opstrata.topology import TopologyGraph
    from opstrata.topology_consumer import TopologyConsumer

    rnd = random.Random(41)
    ctx = ConsumerContext("opstrata", "topology", tmp_path, lambda *_: None, None, {})
    batches = []
    for seq in range(1, 121):
        body = _placed_request(rnd).SerializeToString()
        decoded = decode_request(Signal.METRIC_POINTS, body, Encoding.PROTOBUF, LIMITS)
        batches.append(CommittedBatch.of(seq, decoded.batches))
    assert sum(batch.resource_starts is not None for batch in batches) == len(batches)
    graphs = {}
    for name, given in (
        ("starts", batches),
        ("compared", [replace(batch, resource_starts=None) for batch in batches]),
    ):
        consumer = TopologyConsumer(TopologyGraph())
        step = 1
        for start in range(0, len(given), step):
            consumer.consume_many(given[start : start + step], ctx)
            step = step % 7 + 1
        graphs[name] = sorted(consumer.graph.edges(), key=repr)
    assert len(graphs["starts"]) > 5
    assert graphs["starts"] == graphs["compared"]


def _store_ids(column: pa.Array, lengths: list[int], runs: list[int] | None) -> np.ndarray:
    """Every row's ``ResourceId`` as the store's writer finds them, comparing rows (``runs``
    None) or from the decoder's runs."""
    if runs is None:
        starts, ids = request_resource_ids(column, lengths)
    else:
        starts, ids = request_resource_ids(column, runs, runs_known=True)
    return np.repeat(ids, np.diff(np.append(starts, len(column))))


@pytest.mark.parametrize("signal", list(SIGNALS), ids=lambda signal: signal.value)
def test_store_ids_from_the_decoder_runs_equal_the_compared_ones(signal: Signal) -> None:
    _, field, _, module = SIGNALS[signal]
    rnd = random.Random(53)
    grouped = 0
    for _ in range(12):  # group commits of up to 40 requests
        per_table: dict[Table, list[tuple[pa.RecordBatch, np.ndarray]]] = {}
        for _ in range(rnd.randint(1, 40)):
            request = module.random_request(rnd)
            resources = getattr(request, field)
            if resources and rnd.random() < 0.4:  # equal neighbours: two runs, one id
                resources.add().CopyFrom(resources[-1])
            decoded = decode_request(signal, request.SerializeToString(), Encoding.PROTOBUF, LIMITS)
            for table, batch in decoded.batches:
                per_table.setdefault(table, []).append(
                    (batch, decoded.batches.resource_starts[table])  # type: ignore[attr-defined]
                )
        for table, items in per_table.items():
            batches = [batch for batch, _ in items]
            lengths = [batch.num_rows for batch in batches]
            data = pa.Table.from_batches(batches).combine_chunks()
            column = (
                data.column(RESOURCE_COLUMN)
                .chunk(0)
                .view(STORAGE_SCHEMAS[table].field(RESOURCE_COLUMN).type)
            )
            runs = decoded_runs([starts for _, starts in items], lengths)
            assert runs is not None and sum(runs) == len(column)
            assert len(runs) == sum(len(starts) for _, starts in items)
            want = _store_ids(column, lengths, None)
            assert (_store_ids(column, lengths, runs) == want).all()
            grouped += len(items) > 1
    assert grouped > 10


def test_decoded_runs_refuse_starts_that_do_not_fit() -> None:
    def runs(starts: list[list[int] | None], lengths: list[int]) -> list[int] | None:
        return decoded_runs(
            [None if part is None else np.array(part, np.int32) for part in starts], lengths
        )

    assert runs([[0, 2], [0]], [5, 3]) == [2, 3, 3]
    assert runs([[0], [], [0, 1]], [4, 0, 2]) == [4, 1, 1]
    assert runs([[0], None], [4, 2]) is None  # a batch without
    assert runs([[1], [0]], [4, 2]) is None  # not from the batch's first row
    assert runs([[0, 4], [0]], [4, 2]) is None  # past the batch's rows
    assert runs([[0, 2, 2], [0]], [4, 2]) is None  # not ascending
    assert runs([[0], []], [4, 2]) is None  # a batch with rows and no start
    assert runs([], []) is None
