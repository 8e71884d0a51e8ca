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
