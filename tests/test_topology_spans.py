"""The topology consumer's columnar spans path, held to the per-span algorithm it replaced.

``reference_learn`` below is the previous implementation's logic (a dict of client spans and one
of server spans waiting for their parent, a Python loop over spans, per-minute call statistics by
(caller, peer)), feeding its own ``TopologyGraph``. Random span batches — calls whose client and
server spans arrive in the same batch, in later ones or in earlier ones, peers named or not,
errors, models — go through both, one batch at a time and in groups (``consume_many``), and the
graphs must hold the same edges, aliases and call statistics. The end-to-end test sends the two
sides of calls from two SDK "services" in separate requests, server side first for one of them,
and reads the edges the server saved.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pyarrow as pa
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from opstrata.consumers import CommittedBatch, ConsumerContext
from opstrata.schema import STRING_MAP, Table
from opstrata.topology import _PEER_KEYS, EdgeKind, TopologyGraph
from opstrata.topology_consumer import TopologyConsumer
from opstrata.topology_spans import SpanKeyIndex, group_rows, span_keys
from tests.otelsdk import resource, span_exporter
from tests.pluginsupport import topology_rows_consumed, wait_for
from tests.serverproc import ServerProcess

_MINUTE = 60_000_000_000
_T0 = 1_760_000_000_000_000_000
_SERVICES = ["web", "cart", "pay", "users", "db-proxy"]


# -- the previous algorithm, as the reference ---------------------------------------------------


def reference_learn(graph: TopologyGraph, state: dict, rows: list[dict]) -> None:
    """One batch through the per-span logic the columnar path replaced."""
    clients, orphans = state.setdefault("clients", {}), state.setdefault("orphans", {})
    latest = max(row["Timestamp"] for row in rows)
    stats: dict[tuple[str, str, int], list[int]] = {}
    outbound = []
    for row in rows:
        attributes = dict(reversed(row["SpanAttributes"]))  # the first of a repeated key
        peer = next((attributes[k] for k in _PEER_KEYS if attributes.get(k) is not None), "")
        if row["SpanKind"] in ("Client", "Producer"):
            outbound.append((row["SpanId"], row["ServiceName"], peer))
            if peer:
                key = (row["ServiceName"], peer, row["Timestamp"] // _MINUTE)
                bucket = stats.setdefault(key, [0, 0, 0])
                bucket[0] += 1
                bucket[1] += row["StatusCode"] == "Error"
                bucket[2] += row["Duration"]
    for (caller, peer, minute), (calls, errors, duration) in stats.items():
        graph.add_call_stats(caller, peer, minute, calls, errors, float(duration), latest)
    clients.update({span_id: (service, peer) for span_id, service, peer in outbound})
    pairs = set()
    waiting = {}
    for row in rows:
        parent = row["ParentSpanId"]
        if row["SpanKind"] not in ("Server", "Consumer") or not parent:
            continue
        found = clients.pop(parent, None)
        if found is None:
            waiting[parent] = (row["ServiceName"], "")
        else:
            pairs.add((found[0], row["ServiceName"], found[1]))
    for span_id, caller, peer in outbound:
        found = orphans.pop(span_id, None)
        if found is not None:
            pairs.add((caller, found[0], peer))
    orphans.update(waiting)
    for caller, callee, peer in pairs:
        if caller != callee:
            graph.add(EdgeKind.CALLS, ("service", caller), ("service", callee), latest)
            graph.alias(peer, callee)


# -- random traffic -------------------------------------------------------------------------------


def _span_id(rnd: random.Random) -> str:
    return rnd.randbytes(8).hex()


def _calls(rnd: random.Random, count: int) -> list[dict]:
    """Spans of ``count`` calls: a client span, and for most a server span as its child."""
    rows = []
    for _ in range(count):
        caller, callee = rnd.sample(_SERVICES, 2)
        client_id = _span_id(rnd)
        time = _T0 + rnd.randrange(5 * _MINUTE)
        attributes = [("http.method", "GET")]
        peer = ""
        if rnd.random() < 0.8:
            key = rnd.choice(_PEER_KEYS)
            # A peer name is answered by one service (as in a real system), or by none.
            peer = rnd.choice([f"{callee}.svc:8080", callee, f"{callee}-lb", "postgresql"])
            attributes.insert(rnd.randrange(2), (key, peer))
        if rnd.random() < 0.1:
            attributes.append(("gen_ai.request.model", rnd.choice(["gpt-x", "llama-y"])))
        rows.append(
            {
                "Timestamp": time,
                "SpanId": client_id,
                "ParentSpanId": rnd.choice(["", _span_id(rnd)]),
                "SpanKind": rnd.choice(["Client", "Client", "Producer"]),
                "ServiceName": caller,
                "SpanAttributes": attributes,
                "Duration": rnd.randrange(10**9),
                "StatusCode": rnd.choice(["Unset", "Ok", "Error"]),
            }
        )
        if rnd.random() < 0.85 and peer != "postgresql":
            rows.append(
                {
                    "Timestamp": time + 1000,
                    "SpanId": _span_id(rnd),
                    "ParentSpanId": client_id,
                    "SpanKind": rnd.choice(["Server", "Consumer"]),
                    "ServiceName": callee,
                    "SpanAttributes": [("ml.model.name", "fraud")] if rnd.random() < 0.1 else [],
                    "Duration": rnd.randrange(10**9),
                    "StatusCode": "Unset",
                }
            )
    # Internal spans and roots that take part in no call.
    for _ in range(count // 2):
        rows.append(
            {
                "Timestamp": _T0 + rnd.randrange(5 * _MINUTE),
                "SpanId": _span_id(rnd),
                "ParentSpanId": rnd.choice(["", _span_id(rnd)]),
                "SpanKind": rnd.choice(["Internal", "Server"]),
                "ServiceName": rnd.choice(_SERVICES),
                "SpanAttributes": [("peer.service", "ignored")],
                "Duration": 5,
                "StatusCode": "Unset",
            }
        )
    return rows


def _batch(seq: int, rows: list[dict]) -> CommittedBatch:
    resource_rows = [[("service.name", row["ServiceName"]), ("host.name", "h1")] for row in rows]
    records = pa.record_batch(
        {
            "Timestamp": pa.array([r["Timestamp"] for r in rows], pa.timestamp("ns")),
            "SpanId": pa.array([r["SpanId"] for r in rows], pa.string()),
            "ParentSpanId": pa.array([r["ParentSpanId"] for r in rows], pa.string()),
            "SpanKind": pa.array([r["SpanKind"] for r in rows], pa.string()),
            "ServiceName": pa.array([r["ServiceName"] for r in rows], pa.string()),
            "ResourceAttributes": pa.array(resource_rows, STRING_MAP),
            "SpanAttributes": pa.array([r["SpanAttributes"] for r in rows], STRING_MAP),
            "Duration": pa.array([r["Duration"] for r in rows], pa.int64()),
            "StatusCode": pa.array([r["StatusCode"] for r in rows], pa.string()),
        }
    )
    return CommittedBatch.of(seq, [(Table.TRACES, records)])


def _scatter(rnd: random.Random, rows: list[dict], batches: int) -> list[list[dict]]:
    """The spans dealt into batches at random: the two sides of a call land in the same
    batch, or either one first."""
    dealt: list[list[dict]] = [[] for _ in range(batches)]
    for row in rows:
        dealt[rnd.randrange(batches)].append(row)
    return [batch for batch in dealt if batch]


def _calls_of(graph: TopologyGraph) -> dict:
    found = {}
    for kind, source, target, _, _ in graph.edges():
        state = graph._edges[(kind, source, target)]
        found[(kind, source, target)] = {
            minute: [float(v) for v in bucket] for minute, bucket in state.minutes.items()
        }
    return found


def test_columnar_spans_path_learns_what_the_per_span_loop_did(tmp_path) -> None:
    rnd = random.Random(7)
    ctx = ConsumerContext("opstrata", "topology", tmp_path, lambda *_: None, None, {})
    for trial in range(12):
        batches = _scatter(rnd, _calls(rnd, rnd.randint(5, 400)), rnd.randint(1, 30))
        committed = [_batch(seq + 1, rows) for seq, rows in enumerate(batches)]

        expected, state = TopologyGraph(), {}
        for rows in batches:
            reference_learn(expected, state, rows)
        calls = {key for key in _calls_of(expected) if key[0] is EdgeKind.CALLS}
        assert calls, "the traffic has calls between services"

        one_by_one = TopologyConsumer(TopologyGraph())
        for batch in committed:
            one_by_one.consume(batch, ctx)
        grouped = TopologyConsumer(TopologyGraph())
        step = rnd.randint(2, 12)
        for start in range(0, len(committed), step):
            grouped.consume_many(committed[start : start + step], ctx)

        for consumer in (one_by_one, grouped):
            got = _calls_of(consumer.graph)
            assert {k: v for k, v in got.items() if k[0] is EdgeKind.CALLS} == {
                k: v for k, v in _calls_of(expected).items() if k[0] is EdgeKind.CALLS
            }, f"trial {trial}"
            assert consumer.graph._aliases == expected._aliases, f"trial {trial}"
        # Fed the same batches one at a time, first and last seen are the same too.
        assert sorted(e for e in one_by_one.graph.edges() if e[0] is EdgeKind.CALLS) == sorted(
            e for e in expected.edges() if e[0] is EdgeKind.CALLS
        )


def test_models_and_placement_from_spans(tmp_path) -> None:
    ctx = ConsumerContext("opstrata", "topology", tmp_path, lambda *_: None, None, {})
    rows = _calls(random.Random(3), 300)
    consumer = TopologyConsumer(TopologyGraph())
    consumer.consume_many([_batch(1, rows[:200]), _batch(2, rows[200:])], ctx)
    edges = {(k, s, t): last for k, s, t, _, last in consumer.graph.edges()}
    for model in ("gpt-x", "llama-y"):
        users = [r for r in rows if ("gen_ai.request.model", model) in r["SpanAttributes"]]
        for service in {r["ServiceName"] for r in users}:
            last = max(r["Timestamp"] for r in users if r["ServiceName"] == service)
            assert edges[(EdgeKind.USES, ("service", service), ("llm_model", model))] == last
    fraud = {r["ServiceName"] for r in rows if ("ml.model.name", "fraud") in r["SpanAttributes"]}
    assert fraud
    for service in fraud:
        assert (EdgeKind.USES, ("service", service), ("model", "fraud")) in edges
    for service in {r["ServiceName"] for r in rows}:
        assert (EdgeKind.RUNS_ON, ("service", service), ("host", "h1")) in edges


def test_span_keys_read_hex_ids_from_the_buffers() -> None:
    rnd = random.Random(5)
    ids = [rnd.randbytes(8).hex() for _ in range(300)]
    ids += ["", "0" * 16, "ABCDEF0123456789", "xyz", "0123456789abcdeg", "a" * 17, None]
    array = pa.array(ids, pa.string())

    def want(value: str | None) -> int:
        if value is None or len(value) != 16:
            return 0
        try:
            return int(value, 16)
        except ValueError:
            return 0

    assert span_keys(array).tolist() == [want(v) for v in ids]
    assert span_keys(array.slice(0, 300)).tolist() == [want(v) for v in ids[:300]]
    assert span_keys(array.slice(250, 40)).tolist() == [want(v) for v in ids[250:290]]
    assert span_keys(pa.array(["", ""])).tolist() == [0, 0]


def test_span_key_index_finds_like_a_dict_and_stays_bounded() -> None:
    rnd = np.random.default_rng(2)
    index = SpanKeyIndex(capacity=5_000)
    reference: dict[int, int] = {}
    recent: list[np.ndarray] = []
    for step in range(60):
        keys = rnd.integers(1, 2**63, size=int(rnd.integers(1, 400)), dtype=np.uint64)
        if step % 7 == 3 and recent:
            again = min(len(keys), len(recent[-1])) // 2
            keys[:again] = recent[-1][:again]  # keys added again, with new values
        values = rnd.integers(0, 2**40, size=len(keys))
        index.add(keys, values)
        reference.update(zip(keys.tolist(), values.tolist(), strict=True))
        recent.append(keys)
        assert len(index) <= 2 * 5_000
        probe = np.concatenate([recent[-1], recent[-2] if len(recent) > 1 else keys[:0]])
        probe = np.concatenate([probe, rnd.integers(1, 2**63, size=50, dtype=np.uint64), [0]])
        found, got = index.find(probe.astype(np.uint64))
        # The two newest additions are always still held, with their newest values.
        held = set(recent[-1].tolist()) | (set(recent[-2].tolist()) if len(recent) > 1 else set())
        for key, hit, value in zip(probe.tolist(), found.tolist(), got.tolist(), strict=True):
            if key in held:
                assert hit and value == reference[key]
            elif hit:
                assert value == reference[key]
        assert not found[-1]  # 0 is no span id


def test_group_rows_groups_like_a_dict() -> None:
    rnd = np.random.default_rng(4)
    a, b, c = (rnd.integers(0, n, size=500) for n in (3, 5, 2))
    order, starts, first = group_rows(a, b, c)
    groups = np.split(order, starts[1:])
    want: dict[tuple[int, int, int], list[int]] = {}
    for row, key in enumerate(zip(a.tolist(), b.tolist(), c.tolist(), strict=True)):
        want.setdefault(key, []).append(row)
    assert len(groups) == len(want) == len(first)
    for group, row in zip(groups, first.tolist(), strict=True):
        assert sorted(group.tolist()) == want[(int(a[row]), int(b[row]), int(c[row]))]


# -- end to end ------------------------------------------------------------------------------------


def test_calls_learned_from_separately_exported_sides(server: ServerProcess) -> None:
    """The caller and the callee export their own spans; the callee's arrive first for one
    call and last for the other, each side in its own request."""

    def provider(service: str) -> TracerProvider:
        made = TracerProvider(resource=resource(service, **{"host.name": f"{service}-host"}))
        made.add_span_processor(SimpleSpanProcessor(span_exporter(server, "http")))
        return made

    frontend, cart, ledger = provider("frontend"), provider("cart"), provider("ledger")
    calls = []
    for callee, peer in (("cart", "cart.svc:8080"), ("ledger", "ledger-lb")):
        client = frontend.get_tracer("tests.calls").start_span(
            f"call {callee}", kind=trace.SpanKind.CLIENT, attributes={"peer.service": peer}
        )
        calls.append((client, callee))
    # cart's server span is exported before its parent client span ends (and is exported).
    cart_client, _ = calls[0]
    with cart.get_tracer("tests.calls").start_as_current_span(
        "GET /cart", context=trace.set_span_in_context(cart_client), kind=trace.SpanKind.SERVER
    ):
        pass
    cart_client.end()
    ledger_client, _ = calls[1]
    ledger_client.end()
    with ledger.get_tracer("tests.calls").start_as_current_span(
        "POST /entries",
        context=trace.set_span_in_context(ledger_client),
        kind=trace.SpanKind.SERVER,
    ):
        pass
    for made in (frontend, cart, ledger):
        made.shutdown()

    wait_for(
        lambda: topology_rows_consumed(server) >= 4, what="the topology consumer to see every span"
    )
    assert server.stop() == 0
    saved = json.loads((server.data_dir / "incidents" / "topology.json").read_text())
    edges = {tuple(edge[:5]): edge[5] for edge in saved["edges"]}
    for callee in ("cart", "ledger"):
        state = edges[("calls", "service", "frontend", "service", callee)]
        # The per-minute statistics learned under the peer's name moved to the service.
        assert sum(bucket[0] for bucket in state["minutes"].values()) == 1
        assert ("runs_on", "service", callee, "host", f"{callee}-host") in edges
    assert saved["aliases"] == {"cart.svc:8080": "cart", "ledger-lb": "ledger"}
    assert not [e for e in edges if e[0] == "calls" and e[4] in ("cart.svc:8080", "ledger-lb")]


def test_placement_matches_a_row_by_row_reading(tmp_path) -> None:
    """Placement from every table's resources, held to a dict of each row's resource (the last
    of a repeated key wins, as before) with the latest time per placement."""
    rnd = random.Random(11)
    ctx = ConsumerContext("opstrata", "topology", tmp_path, lambda *_: None, None, {})
    keys = ["host.name", "k8s.pod.name", "k8s.node.name", "process.pid"]
    for _ in range(5):
        batches, expected = [], TopologyGraph()
        for seq in range(1, rnd.randint(2, 8)):
            rows = []
            for _ in range(rnd.randint(1, 5)):  # runs of one resource, as a request has them
                pairs = [(rnd.choice(keys), rnd.choice(["a", "b", ""])) for _ in range(4)]
                rows += [(rnd.choice(["", "svc1", "svc2"]), pairs)] * rnd.randint(1, 20)
            times = [_T0 + rnd.randrange(10**12) for _ in rows]
            table = rnd.choice([Table.LOGS, Table.METRICS_GAUGE])
            time_column = "Timestamp" if table is Table.LOGS else "TimeUnix"
            records = pa.record_batch(
                {
                    time_column: pa.array(times, pa.timestamp("ns")),
                    "ServiceName": pa.array([service for service, _ in rows], pa.string()),
                    "ResourceAttributes": pa.array([pairs for _, pairs in rows], STRING_MAP),
                }
            )
            batches.append(CommittedBatch.of(seq, [(table, records)]))
            for (service, pairs), time in zip(rows, times, strict=True):
                found = dict(pairs)
                host, pod, node = (found.get(k) or "" for k in keys[:3])
                if pod and node:
                    expected.add(EdgeKind.RUNS_ON, ("pod", pod), ("host", node), time)
                for kind, name in (("host", host), ("pod", pod), ("host", node)):
                    if service and name:
                        expected.add(EdgeKind.RUNS_ON, ("service", service), (kind, name), time)
        consumer = TopologyConsumer(TopologyGraph())
        consumer.consume_many(batches, ctx)
        got = {(k, s, t): last for k, s, t, _, last in consumer.graph.edges()}
        assert got == {(k, s, t): last for k, s, t, _, last in expected.edges()}
