"""Root-cause ranking of an incident's entities, and the trivial baseline beside it.

The ranking walks the incident's *anomalous subgraph*. Every entity with an alert is a suspect,
with the strength of its strongest alert; entities without alerts join when the telemetry points
at them — a dependency (a database, an external API) whose calls slowed down or failed around
the onset, a host or node under several anomalous services. Edges run from a symptom to what
could explain it:

- a caller to the services and dependencies it calls (a slow callee makes its callers slow);
- anything to the host, pod or node it runs on (infrastructure explains what runs on it);
- a service to the model or LLM it uses (a slow or failing model shows in its caller).

A random walk with restart (restart ∝ strength, steps ∝ the strength of the explaining suspect)
collects its mass where explanations end: the upstream-most anomalous component. The walk's
share is then weighed by onset: the cause starts first, so a suspect whose anomaly began well
after the incident's first loses weight. The baseline ranks by the size of each entity's jump
(observed against expected), nothing else; ``bench/incidents_eval.py`` reports both.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from opstrata.alerts import Alert, Candidate, Entity
from opstrata.topology import EdgeKind, Node, TopologyGraph, canonical, nodes_of_resource

__all__ = ["alert_nodes", "rank_by_jump", "rank_root_causes"]

_INFRA = frozenset({"host", "pod", "node"})
_SECOND = 1_000_000_000
_ONSET_TAU_SECONDS = 120.0
_RESTART = 0.15
_STEPS = 40
_DEPENDENCY_MIN_SCORE = 0.3
_ONSETS_TRIED = 3
_MIN_EVIDENCE = 0.2
_BURST_WINDOW_NS = 600 * _SECOND
_BURST_MARGIN_NS = 120 * _SECOND
_SCAN_STEP_NS = 120 * _SECOND
_SCAN_MINUTES = 5
_MAX_SCANS = 60
_UNKNOWN_EVIDENCE = 0.5


@dataclass(slots=True)
class AlertNodes:
    """Where an alert sits in the topology."""

    primary: Node
    owner: Node | None
    """The service a model, LLM or operation alert belongs to."""
    placement: list[Node]


def alert_nodes(alert: Alert) -> AlertNodes:
    resource = alert.resource
    service = resource.get("service.name", "")
    kind, name = alert.entity.kind, alert.entity.name
    if kind == "operation":
        owner_name = service or name.split("/", 1)[0]
        primary: Node = ("service", owner_name)
        owner = None
    elif kind in ("service", "host", "pod", "node", "model", "llm_model", "prompt"):
        primary = canonical((kind, name))
        owner = (
            ("service", service) if service and kind != "service" and kind not in _INFRA else None
        )
    elif service:
        primary, owner = ("service", service), None
    else:
        placed = nodes_of_resource(resource)
        primary, owner = (placed[0] if placed else (kind, name)), None
    placement = [node for node in nodes_of_resource(resource) if node != primary]
    return AlertNodes(primary, owner, placement)


@dataclass(slots=True)
class _Suspect:
    node: Node
    strength: float = 0.0
    onset: int | None = None
    alert_ids: list[str] = field(default_factory=list)
    summaries: list[str] = field(default_factory=list)
    inferred: str = ""


def estimated_onset(alert: Alert) -> int:
    """When the anomaly behind ``alert`` likely began. A test over a window (drift, quality)
    speaks only once enough of the window has changed, minutes after the change; alerts that
    carry their window (``details.window_start_unix_nano`` / ``window_end_unix_nano``; the
    first one ends at the onset) are dated half a window earlier, the expected change point,
    so slow detectors do not look like late symptoms."""
    details = alert.evidence.details
    start, end = details.get("window_start_unix_nano"), details.get("window_end_unix_nano")
    if isinstance(start, int) and isinstance(end, int) and start < end:
        return alert.first_seen_unix_nano - (end - start) // 2
    return alert.first_seen_unix_nano


def _jump(alert: Alert) -> float:
    """How far the observation left what was expected, relative to the expectation."""
    evidence = alert.evidence
    if evidence.observed is not None and evidence.expected is not None:
        scale = max(abs(evidence.expected), 1e-9)
        return abs(evidence.observed - evidence.expected) / scale
    return alert.score


def rank_by_jump(alerts: Sequence[Alert]) -> list[Candidate]:
    """The baseline: each entity ranked by the largest anomaly jump among its alerts."""
    best: dict[Node, tuple[float, list[str], int]] = {}
    for alert in alerts:
        node = alert_nodes(alert).primary
        jump = _jump(alert)
        size, ids, onset = best.get(node, (-1.0, [], alert.first_seen_unix_nano))
        best[node] = (
            max(size, jump),
            [*ids, alert.id],
            min(onset, alert.first_seen_unix_nano),
        )
    ranked = sorted(best.items(), key=lambda item: -item[1][0])
    top = ranked[0][1][0] if ranked and ranked[0][1][0] > 0 else 1.0
    return [
        Candidate(
            Entity(*node),
            round(size / top, 6),
            f"largest anomaly jump ({size:.3g})",
            sorted(ids),
            onset,
            {"jump": size},
        )
        for node, (size, ids, onset) in ranked
    ]


def _onset_minutes(alerts: Sequence[Alert]) -> dict[Node, list[int]]:
    """The first few distinct onset minutes of each alerting entity in the episode: where a
    cause shows first (testing later minutes too would let any noisy edge find a jump)."""
    minutes: dict[Node, set[int]] = {}
    for alert in alerts:
        minute = estimated_onset(alert) // (60 * _SECOND)
        minutes.setdefault(alert_nodes(alert).primary, set()).add(minute)
    return {node: sorted(found)[:_ONSETS_TRIED] for node, found in minutes.items()}


def _call_evidence(
    graph: TopologyGraph, caller: Node, callee: Node, minutes: list[int], episode: tuple[int, int]
) -> dict:
    """The strongest change of the calls ``caller → callee`` at one of the caller's first
    onsets, or anywhere in the incident's episode (every other minute, five-minute windows:
    a fault that hit an already-firing caller shows in its calls, not in a new onset)."""
    starts = [m * 60 * _SECOND for m in minutes]
    first, last = episode
    if first:
        last = max(first, last)
        starts += range(max(first, last - _MAX_SCANS * _SCAN_STEP_NS), last + 1, _SCAN_STEP_NS)
    jumps = [graph.call_jump(caller, callee, at, _SCAN_MINUTES) for at in starts]
    return max(jumps, key=lambda j: j.get("score", 0.0), default={})


def _suspects(
    alerts: Sequence[Alert],
    graph: TopologyGraph,
    episode: tuple[int, int] = (0, 0),
    weights: Mapping[str, float] | None = None,
) -> dict[Node, _Suspect]:
    suspects: dict[Node, _Suspect] = {}
    for alert in alerts:
        node = alert_nodes(alert).primary
        suspect = suspects.setdefault(node, _Suspect(node))
        weight = weights.get(alert.id, 1.0) if weights else 1.0
        suspect.strength = max(suspect.strength, alert.score * weight)
        onset = estimated_onset(alert)
        suspect.onset = onset if suspect.onset is None else min(suspect.onset, onset)
        suspect.alert_ids.append(alert.id)
        if len(suspect.summaries) < 3:
            suspect.summaries.append(alert.summary)
    services = [s for s in suspects.values() if s.node[0] == "service"]
    onsets = _onset_minutes(alerts)
    # Dependencies without telemetry of their own: blamed when the calls to them changed at
    # one of the caller's onsets.
    for caller in services:
        for callee in graph.successors(caller.node, (EdgeKind.CALLS,)):
            if callee in suspects and suspects[callee].alert_ids:
                continue
            jump = _call_evidence(graph, caller.node, callee, onsets.get(caller.node, []), episode)
            score = jump.get("score", 0.0)
            if score < _DEPENDENCY_MIN_SCORE:
                continue
            suspect = suspects.setdefault(callee, _Suspect(callee))
            if score > suspect.strength:
                suspect.strength = score
                suspect.inferred = (
                    f"calls from {caller.node[1]}: latency x{jump['latency_ratio']:.2f}, "
                    f"errors {jump['error_delta']:+.1%}"
                )
            suspect.onset = (
                caller.onset if suspect.onset is None else min(suspect.onset, caller.onset or 0)
            )
    # A host under several anomalous services, with no alert of its own: suspicious only when
    # the anomalies concentrate there — in a cascade every host carries some anomalous service.
    # Counted by service: a service's own model, LLM and prompt alerts are one tenant of the
    # host, not several.
    shared: dict[Node, dict[Node, _Suspect]] = {}
    for alert in alerts:
        nodes = alert_nodes(alert)
        tenant = nodes.owner or nodes.primary
        suspect = suspects[nodes.primary]
        for place in nodes.placement:
            above = shared.setdefault(place, {})
            if tenant not in above or suspect.strength > above[tenant].strength:
                above[tenant] = suspect
    anomalous = sum(1 for node in suspects if node[0] == "service")
    overall = anomalous / max(graph.placed_services(), anomalous, 1)
    for place, above in shared.items():
        if place in suspects or len(above) < 2:
            continue
        # Services that call one another share their anomaly through the call, not the host.
        independent = [
            t for t in above
            if not any(
                graph.has_edge(EdgeKind.CALLS, t, o) or graph.has_edge(EdgeKind.CALLS, o, t)
                for o in above if o != t
            )
        ]  # fmt: skip
        if len(independent) < 2:
            continue
        hosted = len(graph.predecessors(place, (EdgeKind.RUNS_ON,)))
        local = len(above) / max(hosted, len(above))
        excess = (local - overall) / max(1 - overall, 1e-9)
        if local < 0.6 or excess < 0.3:
            continue
        suspect = suspects[place] = _Suspect(place)
        suspect.strength = 0.5 * excess * max(s.strength for s in above.values())
        suspect.onset = min(s.onset or 0 for s in above.values())
        suspect.inferred = (
            f"hosts {len(above)} of {max(hosted, len(above))} anomalous entities "
            f"({local:.0%} here against {overall:.0%} overall)"
        )
    return suspects


def _explainers(
    suspect: _Suspect,
    suspects: dict[Node, _Suspect],
    owners: dict[Node, set[Node]],
    graph: TopologyGraph,
) -> set[Node]:
    node = suspect.node
    found: set[Node] = set()
    if node[0] == "service":
        found |= graph.successors(node, (EdgeKind.CALLS, EdgeKind.RUNS_ON, EdgeKind.USES))
    elif node[0] == "pod":
        found |= graph.successors(node, (EdgeKind.RUNS_ON,))
    found |= owners.get(node, set())
    return {other for other in found if other in suspects and other != node}


def _episode(alerts: Sequence[Alert]) -> tuple[list[Alert], tuple[int, int]]:
    """The alerts of the incident's main episode, and when it began: those still active at the
    start of the densest burst of onsets. A fault raises its alerts in a burst; noise that
    joined before it came and went, and would only blur the onsets."""
    times = np.sort(np.array([a.first_seen_unix_nano for a in alerts], dtype=np.int64))
    counts = np.searchsorted(times, times + _BURST_WINDOW_NS, side="right") - np.arange(len(times))
    # The latest of the densest windows: a relapse or a new wave is what is happening now.
    best = len(counts) - 1 - int(np.argmax(counts[::-1]))
    start = int(times[best]) - _BURST_MARGIN_NS
    chosen = [a for a in alerts if a.last_seen_unix_nano >= start]
    return chosen, (start, max(a.first_seen_unix_nano for a in chosen))


def rank_root_causes(
    alerts: Sequence[Alert],
    graph: TopologyGraph,
    weights: Mapping[str, float] | None = None,
) -> list[Candidate]:
    """Candidates for the root cause of one incident, best first, scores in [0, 1].
    ``weights`` (alert id → weight in (0, 1]) discount alerts of chronic sources."""
    if not alerts:
        return []
    alerts, episode = _episode(alerts)
    suspects = _suspects(alerts, graph, episode, weights)
    # What else explains an alert's entity: its placement and, for models, its owner's placement.
    owners: dict[Node, set[Node]] = {}
    for alert in alerts:
        nodes = alert_nodes(alert)
        links = owners.setdefault(nodes.primary, set())
        links.update(nodes.placement)
        if nodes.owner is not None and nodes.owner in suspects:
            # A model's owner service is explained by the model, not the other way round.
            owners.setdefault(nodes.owner, set()).add(nodes.primary)
    order = list(suspects)
    index = {node: i for i, node in enumerate(order)}
    n = len(order)
    strength = np.array([max(suspects[node].strength, 1e-3) for node in order])
    transition = np.zeros((n, n))
    explains: dict[Node, list[Node]] = {node: [] for node in order}
    onsets = _onset_minutes(alerts)
    for node in order:
        i = index[node]
        weights: dict[Node, float] = {}
        for target in _explainers(suspects[node], suspects, owners, graph):
            evidence = 1.0
            if graph.has_edge(EdgeKind.CALLS, node, target):
                # A callee explains its caller only if the calls to it changed: a callee with
                # an anomaly of its own but answering its caller as usual is not the cause.
                jump = _call_evidence(graph, node, target, onsets.get(node, []), episode)
                evidence = jump.get("score", _UNKNOWN_EVIDENCE)
                if evidence < _MIN_EVIDENCE:
                    continue
            weights[target] = strength[index[target]] * evidence
        if not weights:
            transition[i, i] = 1.0
            continue
        total = sum(weights.values())
        for target, weight in weights.items():
            transition[i, index[target]] = weight / total
            explains[target].append(node)
    restart = strength / strength.sum()
    mass = restart.copy()
    for _ in range(_STEPS):
        mass = _RESTART * restart + (1 - _RESTART) * mass @ transition
    onsets = [suspects[node].onset for node in order]
    first = min(onset for onset in onsets if onset is not None) if any(onsets) else 0
    scores = []
    for i in range(n):
        delay = max(0.0, ((onsets[i] or first) - first) / _SECOND)
        timing = math.exp(-delay / _ONSET_TAU_SECONDS)
        scores.append(float(mass[i] * (0.5 + 0.5 * timing) * (0.5 + 0.5 * min(1.0, strength[i]))))
    top = max(scores) or 1.0
    candidates = []
    for i in sorted(range(n), key=lambda i: -scores[i]):
        node = order[i]
        suspect = suspects[node]
        delay = ((onsets[i] or first) - first) / _SECOND
        explained = sorted(f"{k}:{v}" for k, v in explains[node])
        reason = suspect.inferred or (suspect.summaries[0] if suspect.summaries else "")
        if explained:
            reason = f"explains {len(explained)} anomalous: {', '.join(explained[:4])}; {reason}"
        candidates.append(
            Candidate(
                Entity(*node),
                round(scores[i] / top, 6),
                reason,
                sorted(suspect.alert_ids),
                suspect.onset,
                {
                    "strength": round(float(strength[i]), 6),
                    "onset_after_first_seconds": round(delay, 3),
                    "walk_share": round(float(mass[i]), 6),
                    "explains": explained,
                    "inferred": bool(suspect.inferred),
                },
            )
        )
    return candidates
