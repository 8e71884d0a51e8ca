"""What is connected to what, learned from the telemetry itself.

The incident correlator needs the shape of the system: which service calls which (from
parent/child spans across services, and ``peer.service`` / ``db.system`` / ``server.address``
for calls that leave instrumented code), where each service runs (``host.name``,
``k8s.pod.name``, ``k8s.node.name`` of its resource), and which model or LLM it uses
(``ml.model.name``, ``gen_ai.*`` / ``llm.model_name`` span attributes).

:class:`TopologyGraph` keeps that as typed edges between nodes ``(kind, name)`` — the same kinds
and names alerts use for their entity — plus per-minute call statistics on each call edge, so a
dependency that has no telemetry of its own (a database) can still be blamed when the calls to
it slow down or fail. :class:`TopologyConsumer` feeds it from committed span batches, a batch at
a time, with Arrow kernels for the per-span work.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path
from typing import ClassVar

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from opstrata.consumers import CommittedBatch, Consumer, ConsumerContext, latest_event_time
from opstrata.resource_runs import resource_runs
from opstrata.schema import Signal, Table

__all__ = [
    "EdgeKind",
    "Node",
    "TopologyConsumer",
    "TopologyGraph",
    "canonical",
    "nodes_of_resource",
]

log = logging.getLogger(__name__)

Node = tuple[str, str]
"""``(kind, name)``: ``("service", "checkout")``, ``("host", "node-3")``, ``("model", "f:v3")``."""

_MINUTE = 60_000_000_000
_STATS_MINUTES = 180
_FORGET_AFTER_NS = 7 * 86_400 * 1_000_000_000
_PEER_KEYS = ("peer.service", "db.system.name", "db.system", "messaging.system", "server.address")
PLACEMENT_KEYS = (("host.name", "host"), ("k8s.pod.name", "pod"), ("k8s.node.name", "node"))


class EdgeKind(StrEnum):
    CALLS = "calls"
    """caller service → callee service or dependency"""
    RUNS_ON = "runs_on"
    """service → host / pod / node; pod → node"""
    USES = "uses"
    """service → model / llm_model"""


class _EdgeState(msgspec.Struct):
    first_seen: int
    last_seen: int
    # minute → [calls, errors, duration sum in ns]; only call edges carry them.
    minutes: dict[int, list[float]] = {}


class _Saved(msgspec.Struct):
    edges: list[tuple[str, str, str, str, str, _EdgeState]]
    aliases: dict[str, str]


def canonical(node: Node) -> Node:
    """A Kubernetes node is the host it is: one graph node for both names of one machine."""
    return ("host", node[1]) if node[0] == "node" else node


def nodes_of_resource(resource: dict[str, str]) -> list[Node]:
    """The placement nodes (host, pod) a resource names, ``k8s.node.name`` as a host."""
    found: list[Node] = []
    for key, kind in PLACEMENT_KEYS:
        if resource.get(key):
            node = canonical((kind, resource[key]))
            if node not in found:
                found.append(node)
    return found


class TopologyGraph:
    """Typed edges between nodes, with the event time each was last seen. Thread-safe: the
    topology consumer writes, the incident engine reads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._edges: dict[tuple[EdgeKind, Node, Node], _EdgeState] = {}
        self._out: dict[Node, set[tuple[EdgeKind, Node]]] = {}
        self._in: dict[Node, set[tuple[EdgeKind, Node]]] = {}
        self._aliases: dict[str, str] = {}
        """peer name (``cart.svc:8080``) → the instrumented service that answers to it"""

    # -- writing -----------------------------------------------------------------------------

    def add(self, kind: EdgeKind, source: Node, target: Node, time_unix_nano: int) -> None:
        source, target = canonical(source), canonical(target)
        if source == target or not source[1] or not target[1]:
            return
        with self._lock:
            self._add(kind, source, target, time_unix_nano)

    def _add(self, kind: EdgeKind, source: Node, target: Node, time: int) -> _EdgeState:
        key = (kind, source, target)
        state = self._edges.get(key)
        if state is None:
            state = self._edges[key] = _EdgeState(time, time)
            self._out.setdefault(source, set()).add((kind, target))
            self._in.setdefault(target, set()).add((kind, source))
        else:
            state.first_seen = min(state.first_seen, time)
            state.last_seen = max(state.last_seen, time)
        return state

    def alias(self, peer: str, service: str) -> None:
        """Calls addressed to ``peer`` are answered by the instrumented ``service``."""
        if not peer or not service or peer == service:
            return
        with self._lock:
            if self._aliases.get(peer) == service:
                return
            self._aliases[peer] = service
            # Edges learned under the peer's name before we knew who answers move over.
            old, new = ("service", peer), ("service", service)
            for kind, source in list(self._in.get(old, ())):
                state = self._edges.pop((kind, source, old))
                self._out[source].discard((kind, old))
                if source == new:
                    continue
                merged = self._add(kind, source, new, state.first_seen)
                merged.last_seen = max(merged.last_seen, state.last_seen)
                for minute, (calls, errors, duration) in state.minutes.items():
                    bucket = merged.minutes.setdefault(minute, [0.0, 0.0, 0.0])
                    bucket[0] += calls
                    bucket[1] += errors
                    bucket[2] += duration
            self._in.pop(old, None)

    def add_call_stats(
        self,
        caller: str,
        callee: str,
        minute: int,
        calls: int,
        errors: int,
        duration_sum: float,
        time_unix_nano: int,
    ) -> None:
        with self._lock:
            callee = self._aliases.get(callee, callee)
            if callee == caller:
                return
            state = self._add(
                EdgeKind.CALLS, ("service", caller), ("service", callee), time_unix_nano
            )
            bucket = state.minutes.setdefault(minute, [0.0, 0.0, 0.0])
            bucket[0] += calls
            bucket[1] += errors
            bucket[2] += duration_sum
            if len(state.minutes) > _STATS_MINUTES:
                for old in sorted(state.minutes)[: len(state.minutes) - _STATS_MINUTES]:
                    del state.minutes[old]

    def forget_before(self, cutoff_unix_nano: int) -> int:
        """Drop edges last seen before ``cutoff`` (pods that were replaced, retired services);
        return how many went."""
        with self._lock:
            stale = [
                key for key, state in self._edges.items() if state.last_seen < cutoff_unix_nano
            ]
            for kind, source, target in stale:
                del self._edges[(kind, source, target)]
                self._out[source].discard((kind, target))
                self._in[target].discard((kind, source))
            return len(stale)

    # -- reading -----------------------------------------------------------------------------

    def resolve(self, name: str) -> str:
        with self._lock:
            return self._aliases.get(name, name)

    def successors(self, node: Node, kinds: Iterable[EdgeKind] = tuple(EdgeKind)) -> set[Node]:
        wanted = set(kinds)
        with self._lock:
            return {target for kind, target in self._out.get(node, ()) if kind in wanted}

    def predecessors(self, node: Node, kinds: Iterable[EdgeKind] = tuple(EdgeKind)) -> set[Node]:
        wanted = set(kinds)
        with self._lock:
            return {source for kind, source in self._in.get(node, ()) if kind in wanted}

    def neighbours(self, node: Node) -> set[Node]:
        return self.successors(node) | self.predecessors(node)

    def placed_services(self) -> int:
        """How many services the graph knows a placement of."""
        with self._lock:
            return sum(
                1
                for node, out in self._out.items()
                if node[0] == "service" and any(k is EdgeKind.RUNS_ON for k, _ in out)
            )

    def has_edge(self, kind: EdgeKind, source: Node, target: Node) -> bool:
        with self._lock:
            return (kind, source, target) in self._edges

    def edges(self) -> list[tuple[EdgeKind, Node, Node, int, int]]:
        """Every edge as ``(kind, source, target, first_seen, last_seen)``."""
        with self._lock:
            return [
                (kind, source, target, state.first_seen, state.last_seen)
                for (kind, source, target), state in self._edges.items()
            ]

    def call_jump(
        self, caller: Node, callee: Node, onset_unix_nano: int, minutes_after: int = 3
    ) -> dict[str, float]:
        """How much the calls ``caller → callee`` changed from a minute before ``onset`` to
        ``minutes_after`` after it, against the hour before: ``latency_ratio`` and
        ``error_delta`` (a share), with a ``score`` in [0, 1]; empty when the edge has no
        statistics before the onset."""
        with self._lock:
            state = self._edges.get((EdgeKind.CALLS, caller, callee))
            if state is None or not state.minutes:
                return {}
            minutes = dict(state.minutes)
        onset = onset_unix_nano // _MINUTE
        before = [minutes[m] for m in minutes if onset - 60 <= m < onset - 1]
        after = [minutes[m] for m in minutes if onset - 1 <= m <= onset + minutes_after]
        if len(before) < 3 or not after:
            return {}
        base = np.array(before)
        now = np.array(after)
        base_latency = base[:, 2] / np.maximum(base[:, 0], 1)
        typical = float(np.median(base_latency)) or 1.0
        spread = float(np.median(np.abs(base_latency - typical))) * 1.4826 + 0.05 * typical
        latency = float(now[:, 2].sum() / max(now[:, 0].sum(), 1))
        base_errors = float(base[:, 1].sum() / max(base[:, 0].sum(), 1))
        errors = float(now[:, 1].sum() / max(now[:, 0].sum(), 1))
        latency_z = (latency - typical) / spread
        error_delta = errors - base_errors
        # A logistic squash keeps the score comparable with alert scores (a likelihood-ish 0..1).
        score = max(1 / (1 + np.exp(-(latency_z - 4) / 1.5)), min(1.0, max(0.0, error_delta * 5)))
        return {
            "latency_ratio": latency / typical,
            "latency_z": latency_z,
            "error_delta": error_delta,
            "score": float(score),
        }

    # -- persistence -------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        with self._lock:
            saved = _Saved(
                edges=[
                    (kind.value, s[0], s[1], t[0], t[1], state)
                    for (kind, s, t), state in self._edges.items()
                ],
                aliases=dict(self._aliases),
            )
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(msgspec.json.encode(saved))
        tmp.replace(path)

    def load(self, path: Path) -> None:
        try:
            saved = msgspec.json.decode(path.read_bytes(), type=_Saved)
        except FileNotFoundError:
            return
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("unreadable topology file %s: learning it afresh", path)
            return
        with self._lock:
            self._aliases.update(saved.aliases)
            for kind, s_kind, s_name, t_kind, t_name, state in saved.edges:
                edge = self._add(
                    EdgeKind(kind), (s_kind, s_name), (t_kind, t_name), state.first_seen
                )
                edge.last_seen = max(edge.last_seen, state.last_seen)
                edge.minutes.update(state.minutes)


class _SpanIndex:
    """Recently seen spans of one side of a call, by span id, in two generations so memory
    stays bounded without per-entry expiry."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.current: dict[str, tuple[str, str]] = {}
        self.previous: dict[str, tuple[str, str]] = {}

    def update(self, keys: list[str], values: list[tuple[str, str]]) -> None:
        self.current.update(zip(keys, values, strict=True))
        if len(self.current) > self.capacity:
            self.previous, self.current = self.current, {}

    def pop(self, key: str) -> tuple[str, str] | None:
        found = self.current.pop(key, None)
        return found if found is not None else self.previous.pop(key, None)


# Arrow values made from Python objects once, not per batch: while pyarrow's optional
# ``dateutil`` is not installed, every conversion of a Python value (a list, or a literal passed
# to a compute function) retries that import from disk, ~100 µs each here.
_KEYS: dict[str, pa.Scalar] = {}
_OUTBOUND_KINDS = pa.array(["Client", "Producer"])
_INBOUND_KINDS = pa.array(["Server", "Consumer"])
_EMPTY = pa.scalar("", pa.string())
_ERROR = pa.scalar("Error", pa.string())
_COLON = pa.scalar(":", pa.string())
_MINUTE_NS = pa.scalar(_MINUTE, pa.int64())


def _lookup(column: pa.Array, key: str) -> pa.Array:
    scalar = _KEYS.get(key)
    if scalar is None:
        scalar = _KEYS[key] = pa.scalar(key, pa.string())
    return pc.map_lookup(column, scalar, "first")


def _first_present(column: pa.Array, keys: tuple[str, ...]) -> pa.Array:
    values = [_lookup(column, key) for key in keys]
    return pc.coalesce(*values) if len(values) > 1 else values[0]


def _placement_columns(records: pa.RecordBatch, time_column: str) -> tuple[pa.Array, ...]:
    return (
        records.column("ResourceAttributes"),
        records.column("ServiceName"),
        records.column(time_column),
    )


class TopologyConsumer(Consumer):
    """Learns the topology from every committed span batch (and placement from logs and
    metrics), and saves it in its state directory so a restart keeps what was learned."""

    name: ClassVar[str] = "topology"
    signals: ClassVar[frozenset[Signal]] = frozenset(Signal)

    def __init__(self, graph: TopologyGraph, index_capacity: int = 200_000) -> None:
        self.graph = graph
        self._clients = _SpanIndex(index_capacity)
        """client/producer span id → (service, peer name)"""
        self._orphans = _SpanIndex(index_capacity)
        """parent span id of server/consumer spans whose parent was not seen yet → (service, "")"""
        self._batches = 0
        self._latest = 0

    def start(self, ctx: ConsumerContext) -> None:
        self.graph.load(ctx.state_dir / "topology.json")

    def stop(self, ctx: ConsumerContext) -> None:
        self.graph.save(ctx.state_dir / "topology.json")

    def consume(self, batch: CommittedBatch, ctx: ConsumerContext) -> None:
        # The logs and metrics tables of a batch are learned from together: each call has a
        # fixed cost, and a request of metric points fills up to five tables.
        placement: list[tuple[pa.Array, pa.Array, pa.Array]] = []
        for table, records in batch.tables.items():
            if not records.num_rows:
                continue
            if table is Table.TRACES:
                self._learn_spans(records)
            else:
                time_column = "TimeUnix" if table is not Table.LOGS else "Timestamp"
                placement.append(_placement_columns(records, time_column))
        if len(placement) == 1:
            self._learn_placement(*placement[0])
        elif placement:
            self._learn_placement(
                *(pa.concat_arrays(list(parts)) for parts in zip(*placement, strict=True))
            )
        self._batches += 1
        self._latest = max(self._latest, latest_event_time(batch))
        if self._batches % 200 == 0:
            self.graph.forget_before(self._latest - _FORGET_AFTER_NS)
            self.graph.save(ctx.state_dir / "topology.json")

    def _learn_placement(self, resource: pa.Array, services: pa.Array, times: pa.Array) -> None:
        # Placement is a property of the resource, and a batch holds few resources in long runs
        # (every item of one ResourceLogs/ResourceMetrics/ResourceSpans repeats it): read the
        # placement keys once per run, not once per item.
        starts = resource_runs(resource, services)
        times = times.cast(pa.int64()).to_numpy(zero_copy_only=False)
        latest = np.maximum.reduceat(times, starts).tolist()
        placed: dict[tuple[str, str, str, str], int] = {}
        for start, time in zip(starts.tolist(), latest, strict=True):
            # A handful of runs: Python on one row each is cheaper than compute kernels.
            attributes = dict(resource.slice(start, 1).to_pylist()[0])
            row = (services[start].as_py(), *(attributes.get(k) or "" for k, _ in PLACEMENT_KEYS))
            if placed.get(row, -1) < time:
                placed[row] = time
        for (service, host, pod, node), time in placed.items():
            if pod and node:
                self.graph.add(EdgeKind.RUNS_ON, ("pod", pod), ("host", node), time)
            if not service:
                continue
            for kind, name in (("host", host), ("pod", pod), ("node", node)):
                if name:
                    place = canonical((kind, name))
                    self.graph.add(EdgeKind.RUNS_ON, ("service", service), place, time)

    def _learn_spans(self, spans: pa.RecordBatch) -> None:
        self._learn_placement(*_placement_columns(spans, "Timestamp"))
        services = spans.column("ServiceName")
        kinds = spans.column("SpanKind")
        attributes = spans.column("SpanAttributes")
        times = spans.column("Timestamp").cast(pa.int64())
        self._learn_models(services, attributes, times)

        outbound = pc.is_in(kinds, _OUTBOUND_KINDS)
        inbound = pc.is_in(kinds, _INBOUND_KINDS)
        peers = pc.fill_null(_first_present(attributes, _PEER_KEYS), _EMPTY)
        latest = int(pc.max(times).as_py() or 0)

        # Calls leaving a service: per-minute statistics per (caller, peer).
        calls = pa.table(
            {
                "caller": services,
                "peer": peers,
                "minute": pc.divide(times, _MINUTE_NS),
                "error": pc.cast(pc.equal(spans.column("StatusCode"), _ERROR), pa.int64()),
                "duration": spans.column("Duration"),
            }
        ).filter(pc.and_(outbound, pc.not_equal(peers, _EMPTY)))
        if calls.num_rows:
            grouped = calls.group_by(["caller", "peer", "minute"]).aggregate(
                [("error", "count"), ("error", "sum"), ("duration", "sum")]
            )
            for row in grouped.to_pylist():
                self.graph.add_call_stats(
                    row["caller"],
                    row["peer"],
                    row["minute"],
                    row["error_count"],
                    row["error_sum"],
                    float(row["duration_sum"]),
                    latest,
                )

        # Cross-service parent/child pairs: either side may arrive first.
        client_rows = spans.filter(outbound)
        client_ids = client_rows.column("SpanId").to_pylist()
        client_values = list(
            zip(
                client_rows.column("ServiceName").to_pylist(),
                peers.filter(outbound).to_pylist(),
                strict=True,
            )
        )
        server_rows = spans.filter(inbound)
        parents = server_rows.column("ParentSpanId").to_pylist()
        callees = server_rows.column("ServiceName").to_pylist()
        self._clients.update(client_ids, client_values)
        pairs: set[tuple[str, str, str]] = set()
        waiting_ids, waiting = [], []
        for parent, callee in zip(parents, callees, strict=True):
            if not parent:
                continue
            found = self._clients.pop(parent)
            if found is None:
                waiting_ids.append(parent)
                waiting.append((callee, ""))
            else:
                pairs.add((found[0], callee, found[1]))
        for span_id, (caller, peer) in zip(client_ids, client_values, strict=True):
            found = self._orphans.pop(span_id)
            if found is not None:
                pairs.add((caller, found[0], peer))
        self._orphans.update(waiting_ids, waiting)
        for caller, callee, peer in pairs:
            if caller == callee:
                continue
            self.graph.add(EdgeKind.CALLS, ("service", caller), ("service", callee), latest)
            self.graph.alias(peer, callee)

    def _learn_models(self, services: pa.Array, attributes: pa.Array, times: pa.Array) -> None:
        ml_name = _lookup(attributes, "ml.model.name")
        ml_version = pc.fill_null(_lookup(attributes, "ml.model.version"), _EMPTY)
        model = pc.if_else(
            pc.equal(ml_version, _EMPTY),
            ml_name,
            pc.binary_join_element_wise(ml_name, ml_version, _COLON),
        )
        llm = _first_present(
            attributes, ("gen_ai.response.model", "gen_ai.request.model", "llm.model_name")
        )
        found = pa.table({"service": services, "model": model, "llm": llm, "time": times})
        for column, kind in (("model", "model"), ("llm", "llm_model")):
            used = found.filter(pc.is_valid(found.column(column)))
            if not used.num_rows:
                continue
            pairs = used.group_by(["service", column]).aggregate([("time", "max")])
            for row in pairs.to_pylist():
                self.graph.add(
                    EdgeKind.USES, ("service", row["service"]), (kind, row[column]), row["time_max"]
                )
