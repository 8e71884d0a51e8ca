"""What is connected to what, learned from the telemetry itself.

The incident correlator needs the shape of the system: which service calls which (from
parent/child spans across services, and ``peer.service`` / ``db.system`` / ``server.address``
for calls that leave instrumented code), where each service runs (``host.name``,
``k8s.pod.name``, ``k8s.node.name`` of its resource), and which model or LLM it uses
(``ml.model.name``, ``gen_ai.*`` / ``llm.model_name`` span attributes).

:class:`TopologyGraph` keeps that as typed edges between nodes ``(kind, name)`` — the same kinds
and names alerts use for their entity — plus per-minute call statistics on each call edge, so a
dependency that has no telemetry of its own (a database) can still be blamed when the calls to
it slow down or fail. :class:`TopologyConsumer` (``opstrata.topology_consumer``) feeds it from
committed batches, many at a time, with Arrow and numpy kernels for the per-span work.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path

import msgspec
import numpy as np

__all__ = [
    "EdgeKind",
    "Node",
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
    seq: int = -1
    """The sequence number of the last committed batch the graph includes (-1: not said)."""


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

    def add_many(self, kind: EdgeKind, edges: Iterable[tuple[Node, Node, int]]) -> None:
        """:meth:`add` of many edges of one kind, ``(source, target, time_unix_nano)``, under
        one hold of the lock."""
        known = self._edges
        with self._lock:
            for source, target, time in edges:
                source, target = canonical(source), canonical(target)
                if source == target or not source[1] or not target[1]:
                    continue
                # An edge seen before, inline: this runs for every placement of every group of
                # batches the topology consumer takes.
                state = known.get((kind, source, target))
                if state is None:
                    self._add(kind, source, target, time)
                elif time > state.last_seen:
                    state.last_seen = time
                elif time < state.first_seen:
                    state.first_seen = time

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

    def save(self, path: Path, seq: int = -1) -> None:
        """Write the graph to ``path`` atomically, with ``seq``: the last batch it includes."""
        with self._lock:
            saved = _Saved(
                edges=[
                    (kind.value, s[0], s[1], t[0], t[1], state)
                    for (kind, s, t), state in self._edges.items()
                ],
                aliases=dict(self._aliases),
                seq=seq,
            )
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(msgspec.json.encode(saved))
        tmp.replace(path)

    def load(self, path: Path) -> int:
        """Add the graph saved at ``path``; return the last batch it includes (-1: none said)."""
        try:
            saved = msgspec.json.decode(path.read_bytes(), type=_Saved)
        except FileNotFoundError:
            return -1
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("unreadable topology file %s: learning it afresh", path)
            return -1
        with self._lock:
            self._aliases.update(saved.aliases)
            for kind, s_kind, s_name, t_kind, t_name, state in saved.edges:
                edge = self._add(
                    EdgeKind(kind), (s_kind, s_name), (t_kind, t_name), state.first_seen
                )
                edge.last_seen = max(edge.last_seen, state.last_seen)
                edge.minutes.update(state.minutes)
        return saved.seq
