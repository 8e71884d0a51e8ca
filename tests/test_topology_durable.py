"""The topology graph after ``kill -9``: the graph is saved now and then, not per batch, so the
consumer's offset is held at its last save (``Consumer.durable_upto``) and a restart is given the
batches learnt since again. Every call sent ends up in the saved graph, none twice."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from opstrata.consumers import ConsumerContext
from opstrata.topology import TopologyGraph
from opstrata.topology_consumer import TopologyConsumer
from tests.pluginsupport import topology_rows_consumed, wait_for
from tests.serverproc import ServerProcess
from tests.test_topology_spans import _batch, _calls, _calls_of, _scatter

_REQUESTS = 300
_T0 = int(time.time() * 1e9) - 600 * 10**9
_ENV = {"OPSTRATA_DISABLED_PLUGINS": json.dumps(["aiops", "mlops", "llmops"])}


def _kv(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def _request(n: int, rnd: random.Random) -> bytes:
    """One frontend -> cart call: a client span and its server span, each its own resource."""
    request = ExportTraceServiceRequest()
    trace_id, client_id = rnd.randbytes(16), rnd.randbytes(8)
    for service, kind, span_id, parent, attributes in (
        ("frontend", Span.SPAN_KIND_CLIENT, client_id, b"", [_kv("peer.service", "cart")]),
        ("cart", Span.SPAN_KIND_SERVER, rnd.randbytes(8), client_id, []),
    ):
        resource_spans = request.resource_spans.add()
        resource_spans.resource.attributes.append(_kv("service.name", service))
        span = resource_spans.scope_spans.add().spans.add(
            trace_id=trace_id, span_id=span_id, parent_span_id=parent, name="call", kind=kind
        )
        span.start_time_unix_nano = _T0 + n * 1_000_000
        span.end_time_unix_nano = span.start_time_unix_nano + 1_000_000
        span.attributes.extend(attributes)
    return request.SerializeToString()


def _calls_saved(graph: Path) -> float:
    saved = json.loads(graph.read_text())
    return sum(
        minute[0]
        for edge in saved["edges"]
        if edge[0] == "calls"
        for minute in edge[5]["minutes"].values()
    )


def test_calls_learnt_before_a_kill_are_in_the_graph_after_a_restart(tmp_path: Path) -> None:
    rnd = random.Random(7)
    server = ServerProcess(tmp_path, env=_ENV).start()
    try:
        with httpx.Client(base_url=server.http_base, timeout=30) as client:
            for n in range(_REQUESTS):
                reply = client.post(
                    "/v1/traces",
                    content=_request(n, rnd),
                    headers={"Content-Type": "application/x-protobuf"},
                )
                assert reply.status_code == 200, reply.text
        wait_for(lambda: topology_rows_consumed(server) >= 2 * _REQUESTS, what="consumed")
    finally:
        server.kill()
    graph = tmp_path / "incidents" / "topology.json"
    # The premise: the graph on disk lags what was learnt (saved every 200 batches / 5 s).
    saved = _calls_saved(graph) if graph.exists() else 0
    assert saved < _REQUESTS

    server = ServerProcess(tmp_path, env=_ENV).start()
    try:
        # Given again from the store: the batches since the last save (all, if none was saved),
        # two spans a request.
        missing = 2 * (_REQUESTS - saved)
        wait_for(lambda: topology_rows_consumed(server) >= missing, what="replayed")
    finally:
        server.stop()
    assert _calls_saved(graph) == _REQUESTS


def test_batches_in_the_saved_graph_given_again_are_not_learnt_twice(tmp_path: Path) -> None:
    """A ``kill -9`` between the graph's save and the offset's leaves the offset behind the
    graph: the batches given again that the saved graph includes (its ``seq``) are skipped."""
    rnd = random.Random(11)
    batches = [_batch(seq + 1, rows) for seq, rows in enumerate(_scatter(rnd, _calls(rnd, 200), 8))]
    ctx = ConsumerContext("opstrata", "topology", tmp_path, lambda *_: None, None, {})
    once = TopologyConsumer(TopologyGraph())
    once.consume_many(batches, ctx)

    first = TopologyConsumer(TopologyGraph())
    first.start(ctx)
    first.consume_many(batches[:5], ctx)
    first.stop(ctx)  # the graph saved with seq 5
    assert first.durable_upto() == batches[4].seq
    again = TopologyConsumer(TopologyGraph())
    again.start(ctx)
    again.consume_many(batches[2:5], ctx)  # an offset file two batches behind: given again
    again.consume_many(batches[5:], ctx)
    assert _calls_of(again.graph) == _calls_of(once.graph)
