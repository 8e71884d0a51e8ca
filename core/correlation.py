"""The topology-aware incident engine: alerts that are one problem become one incident.

An alert joins an open incident when it is *related* to one of the incident's alerts that
overlaps it in event time (still firing, or seen within ``join_gap_seconds`` before its onset).
Related means any of:

- the same entity, or an entity the other's belongs to (a model and the service serving it);
- neighbours in the learned topology: a caller and its callee, a service and the model or LLM it
  uses, a service and the host/pod/node it runs on (from the graph or the alert's resource);
- two services whose calls to the same dependency changed at the onset (both slowed by one
  database);
- an infrastructure alert (host, pod, node) and an alert of anything placed on it.

When an alert relates to several open incidents, they were one problem seen from several ends:
they merge into the oldest (the others resolve with ``merged_into`` set). An incident with no
alert event for ``quiet_seconds`` of event time resolves; an alert on one of its entities
within ``reopen_seconds`` of that reopens it (a relapse); while it is open, such an alert joins
it even when the entity's earlier alerts have ended. Each alert belongs to at most one
open incident. Every change re-ranks the root-cause candidates (:mod:`opstrata.rootcause`) and
the baseline beside them. Everything runs on event time, so a replay correlates as the live
stream did.

An alert related to no open incident does not open one at once: it waits until it is
*confirmed* — corroborated by a related alert of another source (another kind of signal, or
the same kind on another entity), still firing after
``confirm_seconds`` (errors; a lone warning needs corroboration), or critical — so a lone
transient blip pages nobody (the "transient alert"
pause of paging products). Alerts from *chronic* sources (a source that fired again and again
over the last day, :mod:`opstrata.onset_history`) neither open incidents, nor confirm them,
nor keep them open, nor draw other alerts in; they join an incident they relate to as
evidence, weighed down in the ranking.
"""

from __future__ import annotations

from collections.abc import Iterable

from opstrata.alerts import (
    SEVERITY_RANK,
    Alert,
    Incident,
    IncidentChange,
    IncidentStatus,
    Severity,
    TimelineEntry,
)
from opstrata.incidents import new_id
from opstrata.onset_history import OnsetHistory
from opstrata.rootcause import AlertNodes, alert_nodes, rank_by_jump, rank_root_causes
from opstrata.topology import EdgeKind, Node, TopologyGraph

__all__ = ["TopologyCorrelator"]

_SECOND = 1_000_000_000
_INFRA = frozenset({"host", "pod", "node"})
_SHARED_DEPENDENCY_MIN_SCORE = 0.5
DEPLOYMENT = "deployment"
"""The kind of a change event (a service's new ``service.version``, from the aiops plugin)."""
_DEPLOY_EXPLAINS_NS = 900 * _SECOND


_SAME_MEASUREMENT = {"log_rate": "log volume", "log_burst": "log volume"}
"""Kinds that measure one thing two ways: a service's WARN-and-above log rate and its per-template
counts rise together on the same burst of log lines (the aiops plugin), so one does not confirm
the other — on a normal day each burst of rate-limit errors opened an incident on the pair alone."""


def _measurement(kind: str) -> str:
    return _SAME_MEASUREMENT.get(kind, kind)


def _independent(alert: Alert, nodes: AlertNodes, other: Alert) -> bool:
    """Whether ``other`` is separate evidence for ``alert``: another kind of signal, or the same
    kind on another entity. A service's latency and its operation's latency are one
    measurement seen twice, and do not corroborate each other."""
    if other.key == alert.key:
        return False
    if DEPLOYMENT in (alert.kind, other.kind):
        return _follows_deploy(alert, other)
    if _measurement(other.kind) != _measurement(alert.kind):
        return True
    theirs = alert_nodes(other)
    mine = {nodes.primary} | ({nodes.owner} if nodes.owner else set())
    return not mine & ({theirs.primary} | ({theirs.owner} if theirs.owner else set()))


def _follows_deploy(alert: Alert, other: Alert) -> bool:
    """A deploy corroborates only an alert of error severity or higher of its own service (or
    one of its operations) that starts within ``_DEPLOY_EXPLAINS_NS`` after it: a new version
    followed by its own errors is the classic bad release, while a neighbour's blip is no sign
    of it and what began before the deploy was not caused by it. A warning (warm-up latency
    after a rollout is normal) still needs another source or persistence. Two deploys say
    nothing about each other."""
    deploy, symptom = (alert, other) if alert.kind == DEPLOYMENT else (other, alert)
    if symptom.kind == DEPLOYMENT:
        return False
    if SEVERITY_RANK[symptom.severity] < SEVERITY_RANK[Severity.ERROR]:
        return False
    lag = symptom.first_seen_unix_nano - deploy.first_seen_unix_nano
    if not 0 <= lag <= _DEPLOY_EXPLAINS_NS:
        return False
    theirs = alert_nodes(symptom)
    return alert_nodes(deploy).primary in {theirs.primary, theirs.owner}


class _Members:
    """The nodes an incident's alerts sit on, for fast relatedness checks."""

    def __init__(self) -> None:
        self.primaries: set[Node] = set()
        self.owners: set[Node] = set()
        self.placements: set[Node] = set()
        self.onsets: dict[Node, int] = {}

    def add(self, nodes: AlertNodes, onset: int) -> None:
        self.primaries.add(nodes.primary)
        if nodes.owner is not None:
            self.owners.add(nodes.owner)
        self.placements.update(nodes.placement)
        self.onsets[nodes.primary] = min(onset, self.onsets.get(nodes.primary, onset))


class TopologyCorrelator:
    """Groups alerts into incidents by event time and topology (see the module docstring)."""

    def __init__(
        self,
        graph: TopologyGraph,
        quiet_seconds: float = 600,
        reopen_seconds: float = 1800,
        lookback_seconds: float = 300,
        join_gap_seconds: float = 300,
        confirm_seconds: float = 120,
        history: OnsetHistory | None = None,
    ) -> None:
        self.graph = graph
        self.quiet_ns = int(quiet_seconds * _SECOND)
        self.reopen_ns = int(reopen_seconds * _SECOND)
        self.lookback_ns = int(lookback_seconds * _SECOND)
        self.join_gap_ns = int(join_gap_seconds * _SECOND)
        self.confirm_ns = int(confirm_seconds * _SECOND)
        self.history = history if history is not None else OnsetHistory()
        self.incidents: dict[str, Incident] = {}
        self._members: dict[str, _Members] = {}
        self._last_event: dict[str, int] = {}
        self._alerts: dict[str, Alert] = {}
        self._ranked_score: dict[str, float] = {}
        self._pending: dict[str, Alert] = {}
        """Alerts related to no open incident, waiting to be confirmed."""
        self._weight: dict[str, float] = {}
        self._chronic: set[str] = set()

    # -- the IncidentEngine interface --------------------------------------------------------

    def load(self, incidents: list[Incident], alerts: list[Alert]) -> None:
        for alert in sorted(alerts, key=lambda a: a.first_seen_unix_nano):
            self._alerts[alert.id] = alert
            self._note_source(alert)
        for incident in incidents:
            self.incidents[incident.id] = incident
            self._last_event[incident.id] = incident.updated_unix_nano
            members = self._members[incident.id] = _Members()
            for alert_id in incident.alert_ids:
                alert = self._alerts.get(alert_id)
                if alert is not None:
                    members.add(alert_nodes(alert), alert.first_seen_unix_nano)

    def on_alert(self, alert: Alert, is_new: bool) -> list[IncidentChange]:
        if alert.id not in self._alerts:
            self._note_source(alert)
        self._alerts[alert.id] = alert
        now = alert.last_seen_unix_nano
        changes = self.advance(now)
        current = self.incidents.get(alert.incident_id or "")
        if current is not None and current.status is not IncidentStatus.RESOLVED:
            changes.append(self._join(current, alert, is_new))
            return changes
        nodes = alert_nodes(alert)
        related = [incident for incident in self._open() if self._related(alert, nodes, incident)]
        if not related and alert.id not in self._chronic:
            # The same entity again while its incident is still open: a relapse within it,
            # not a new story (its earlier alerts may have ended, so time alone would split it).
            related = [
                incident
                for incident in self._open()
                if self._related_ignoring_time(alert, nodes, incident)
            ]
        if not related:
            if alert.id not in self._chronic:
                relapsed = self._relapsed(alert, nodes, now)
                if relapsed is not None:
                    self._pending.pop(alert.id, None)
                    changes.append(self._reopen(relapsed, alert, now))
                    changes.extend(self._absorb_pending(relapsed, now))
                    return changes
            changes.extend(self._hold(alert, nodes, now))
            return changes
        self._pending.pop(alert.id, None)
        related.sort(key=lambda incident: (incident.opened_unix_nano, incident.id))
        keeper = related[0]
        changes.append(self._join(keeper, alert, True))
        self._confirm_earlier(keeper, alert, nodes)
        for other in related[1:]:
            changes.extend(self._merge(other, keeper, now))
        changes.extend(self._absorb_pending(keeper, now))
        return changes

    def advance(self, now_unix_nano: int) -> list[IncidentChange]:
        changes = []
        self._forget_before(now_unix_nano - self.reopen_ns)
        for incident in list(self._open()):
            last = self._last_event.get(incident.id, now_unix_nano)
            if now_unix_nano - last >= self.quiet_ns:
                # It ended when the quiet period did, however late the clock noticed.
                changes.append(
                    self._resolve(incident, last + self.quiet_ns, "resolved after quiet period")
                )
        return changes

    def acknowledge(self, incident_id: str) -> IncidentChange | None:
        incident = self.incidents.get(incident_id)
        if incident is None or incident.status is not IncidentStatus.OPEN:
            return None
        incident.status = IncidentStatus.ACKNOWLEDGED
        incident.acknowledged = True
        incident.timeline.append(TimelineEntry(incident.updated_unix_nano, "acknowledged"))
        return IncidentChange("acknowledged", incident)

    def resolve(self, incident_id: str) -> IncidentChange | None:
        incident = self.incidents.get(incident_id)
        if incident is None or incident.status is IncidentStatus.RESOLVED:
            return None
        return self._resolve(incident, incident.updated_unix_nano, "resolved by a user")

    # -- sources and confirmation ------------------------------------------------------------

    def _note_source(self, alert: Alert) -> None:
        onset = alert.first_seen_unix_nano
        if alert.kind == DEPLOYMENT:
            # A change event is no flapping symptom: a service that deploys often keeps the
            # corroboration (its alerts are keyed per version anyway; this covers any source).
            self._weight[alert.id] = 1.0
            return
        self._weight[alert.id] = self.history.weight(alert.key, onset)
        if self.history.chronic(alert.key, onset):
            self._chronic.add(alert.id)
        self.history.record(alert.key, onset)

    def _hold(self, alert: Alert, nodes: AlertNodes, now: int) -> list[IncidentChange]:
        """Keep an unrelated alert pending; open an incident once it is confirmed."""
        self._pending[alert.id] = alert
        self._prune_pending(now)
        if alert.id not in self._pending or alert.id in self._chronic:
            return []
        onset = alert.first_seen_unix_nano
        corroborating = [
            other
            for other in self._pending.values()
            if other.id not in self._chronic
            and other.id != alert.id
            and _independent(alert, nodes, other)
            and self._corroborates(other, onset)
            and self._related_to(nodes, self._members_of([other]), onset)
        ]
        # A warning is a notice until another source agrees; an error that lasts, or anything
        # critical, stands on its own.
        confirmed = (
            self.confirm_ns <= 0
            or alert.severity == "critical"
            or (
                SEVERITY_RANK[alert.severity] >= SEVERITY_RANK[Severity.ERROR]
                and alert.last_seen_unix_nano - onset >= self.confirm_ns
            )
            or bool(corroborating)
        )
        if not confirmed:
            return []
        # A deploy is evidence, not the symptom: the incident opens on what went wrong.
        group = sorted(
            [alert, *corroborating],
            key=lambda a: (a.kind == DEPLOYMENT, a.first_seen_unix_nano, a.id),
        )
        for member in group:
            self._pending.pop(member.id, None)
        opened = self._open_incident(group[0], now)
        incident = opened.incident
        for member in group[1:]:
            self._join(incident, member, True, rerank=False)
        self._rerank(incident)
        # Ranks again only if it drew more pending alerts in.
        return [opened, *self._absorb_pending(incident, now)]

    def _confirm_earlier(self, incident: Incident, alert: Alert, nodes: AlertNodes) -> None:
        """An alert that arrives after the incident opened but is dated before the opening (a
        slower detector's window) moves the opening back to when, in event time, it would have
        confirmed the incident with an alert already there — so the opening does not depend on
        which detector reported first (a replay in event order opens it then too)."""
        first = incident.timeline[0] if incident.timeline else None
        if (
            first is None
            or first.what != "opened"
            or incident.reopened
            or alert.id in self._chronic
            or alert.first_seen_unix_nano >= first.time_unix_nano
        ):
            return
        onset = alert.first_seen_unix_nano
        candidates = [onset] if alert.severity == "critical" else []
        for member_id in incident.alert_ids:
            member = self._alerts.get(member_id)
            if (
                member is not None
                and member.id != alert.id
                and member.id not in self._chronic
                and _independent(alert, nodes, member)
                and self._corroborates(member, onset)
                and self._related_to(nodes, self._members_of([member]), onset)
            ):
                candidates.append(max(onset, member.first_seen_unix_nano))
        if candidates and min(candidates) < first.time_unix_nano:
            incident.timeline[0] = TimelineEntry(min(candidates), first.what, first.alert_id)

    def _absorb_pending(self, incident: Incident, now: int) -> list[IncidentChange]:
        """Pending alerts related to what ``incident`` now holds join it."""
        self._prune_pending(now)
        joined = False
        for pending in sorted(self._pending.values(), key=lambda a: a.first_seen_unix_nano):
            if self._related(pending, alert_nodes(pending), incident):
                self._pending.pop(pending.id, None)
                self._join(incident, pending, True, rerank=False)
                joined = True
        if joined:
            self._rerank(incident)
            return [IncidentChange("updated", incident)]
        return []

    def _prune_pending(self, now: int) -> None:
        # An alert that ended stays in the pool for the join gap: the detectors of different
        # signals report at different paces (a host's CPU alert can end before the latency
        # alerts of the same minutes arrive), and it still corroborates what overlapped it.
        # A deploy stays for its whole window (15 min after it), which its last report may not
        # span: it corroborates what starts within that window, however late.
        horizon = now - self.join_gap_ns
        for alert_id in [
            a.id
            for a in self._pending.values()
            if a.incident_id
            or (
                a.last_seen_unix_nano < horizon
                and (a.kind != DEPLOYMENT or a.first_seen_unix_nano + _DEPLOY_EXPLAINS_NS < now)
            )
        ]:
            del self._pending[alert_id]

    @staticmethod
    def _corroborates(other: Alert, onset: int) -> bool:
        """A pending alert corroborates one starting at ``onset`` if it was firing then, in
        event time: still firing, or ended no earlier than that onset."""
        return other.status == "firing" or other.last_seen_unix_nano >= onset

    def _overlaps(self, alert: Alert, onset: int) -> bool:
        return alert.status == "firing" or alert.last_seen_unix_nano >= onset - self.join_gap_ns

    def _members_of(self, alerts: Iterable[Alert]) -> _Members:
        members = _Members()
        for alert in alerts:
            members.add(alert_nodes(alert), alert.first_seen_unix_nano)
        return members

    # -- grouping ----------------------------------------------------------------------------

    def _open(self) -> Iterable[Incident]:
        return [i for i in self.incidents.values() if i.status is not IncidentStatus.RESOLVED]

    def _active_members(self, incident: Incident, onset: int) -> _Members:
        """The nodes of the incident's alerts that overlap ``onset`` in time: firing, or seen
        within the join gap before it. An incident that lives on does not absorb whatever
        touches an alert it had long ago."""
        active = (self._alerts.get(alert_id) for alert_id in incident.alert_ids)
        return self._members_of(
            alert
            for alert in active
            if alert is not None and alert.id not in self._chronic and self._overlaps(alert, onset)
        )

    def _related(self, alert: Alert, nodes: AlertNodes, incident: Incident) -> bool:
        onset = alert.first_seen_unix_nano
        if onset < incident.opened_unix_nano - self.lookback_ns:
            return False
        return self._related_to(nodes, self._active_members(incident, onset), onset)

    def _related_to(self, nodes: AlertNodes, members: _Members, onset: int) -> bool:
        if not members.primaries:
            return False
        mine = {nodes.primary} | ({nodes.owner} if nodes.owner else set())
        theirs = members.primaries | members.owners
        if mine & theirs:
            return True
        # Infrastructure and what runs on it.
        if nodes.primary[0] in _INFRA and (
            nodes.primary in members.placements
            or any(self.graph.has_edge(EdgeKind.RUNS_ON, m, nodes.primary) for m in theirs)
        ):
            return True
        if any(place in members.primaries for place in nodes.placement):
            return True
        for node in mine:
            if node[0] in _INFRA:
                continue
            neighbours = self.graph.neighbours(node)
            if neighbours & theirs:
                return True
            # Infrastructure alerts in the incident under this service (graph placement).
            if any(n[0] in _INFRA for n in neighbours & members.primaries):
                return True
        return self._share_failing_dependency(nodes, members, onset)

    def _share_failing_dependency(self, nodes: AlertNodes, members: _Members, onset: int) -> bool:
        if nodes.primary[0] != "service":
            return False
        mine = self.graph.successors(nodes.primary, (EdgeKind.CALLS,))
        for other in members.primaries:
            if other[0] != "service":
                continue
            for dependency in mine & self.graph.successors(other, (EdgeKind.CALLS,)):
                a = self.graph.call_jump(nodes.primary, dependency, onset).get("score", 0.0)
                b = self.graph.call_jump(other, dependency, onset).get("score", 0.0)
                if min(a, b) >= _SHARED_DEPENDENCY_MIN_SCORE:
                    return True
        return False

    def _relapsed(self, alert: Alert, nodes: AlertNodes, now: int) -> Incident | None:
        recent = [
            incident
            for incident in self.incidents.values()
            if incident.status is IncidentStatus.RESOLVED
            and incident.merged_into is None
            and now - (incident.resolved_unix_nano or 0) <= self.reopen_ns
        ]
        recent.sort(key=lambda incident: -(incident.resolved_unix_nano or 0))
        for incident in recent:
            if self._related_ignoring_time(alert, nodes, incident):
                return incident
        return None

    def _related_ignoring_time(self, alert: Alert, nodes: AlertNodes, incident: Incident) -> bool:
        """A relapse is the same trouble again: an alert on an entity the incident had (or the
        service owning it). A neighbour's alert after the end is a new story."""
        members = self._members.get(incident.id)
        if members is None:
            return False
        mine = {nodes.primary} | ({nodes.owner} if nodes.owner else set())
        return bool(mine & (members.primaries | members.owners))

    # -- changes -----------------------------------------------------------------------------

    def _open_incident(self, alert: Alert, confirmed_at: int | None = None) -> IncidentChange:
        incident = Incident(
            id=new_id("inc", alert.first_seen_unix_nano),
            title="",
            status=IncidentStatus.OPEN,
            severity=alert.severity,
            opened_unix_nano=alert.first_seen_unix_nano,
            updated_unix_nano=alert.last_seen_unix_nano,
        )
        incident.timeline.append(
            TimelineEntry(max(alert.first_seen_unix_nano, confirmed_at or 0), "opened", alert.id)
        )
        self.incidents[incident.id] = incident
        self._members[incident.id] = _Members()
        change = self._join(incident, alert, True)
        return IncidentChange("opened", change.incident)

    def _join(
        self, incident: Incident, alert: Alert, is_new: bool, rerank: bool = True
    ) -> IncidentChange:
        before = SEVERITY_RANK[incident.severity]
        known = alert.id in incident.alert_ids
        alert.incident_id = incident.id
        if not known:
            incident.alert_ids.append(alert.id)
            self._members[incident.id].add(alert_nodes(alert), alert.first_seen_unix_nano)
            if incident.timeline and incident.timeline[-1].alert_id != alert.id:
                incident.timeline.append(
                    TimelineEntry(
                        alert.first_seen_unix_nano,
                        f"alert {alert.kind} on {alert.entity.kind} {alert.entity.name}",
                        alert.id,
                    )
                )
        if alert.entity not in incident.entities:
            incident.entities.append(alert.entity)
        if alert.layer not in incident.layers:
            incident.layers.append(alert.layer)
        service = alert.resource.get("service.name") or (
            alert.entity.name if alert.entity.kind == "service" else ""
        )
        if service and service not in incident.services:
            incident.services.append(service)
        if alert.entity.kind in ("model", "llm_model") and alert.entity.name not in incident.models:
            incident.models.append(alert.entity.name)
        if SEVERITY_RANK[alert.severity] > SEVERITY_RANK[incident.severity]:
            incident.severity = alert.severity
        incident.alert_events += 1
        incident.updated_unix_nano = max(incident.updated_unix_nano, alert.last_seen_unix_nano)
        if alert.id not in self._chronic or incident.id not in self._last_event:
            # A chronic source's repeats do not keep an incident open.
            self._last_event[incident.id] = max(
                self._last_event.get(incident.id, 0), alert.last_seen_unix_nano
            )
        # Repeats that did not strengthen their alert leave the ranking as it was.
        if rerank and (not known or alert.score > self._ranked_score.get(alert.id, -1.0)):
            self._rerank(incident)
        if SEVERITY_RANK[incident.severity] > before:
            incident.timeline.append(
                TimelineEntry(incident.updated_unix_nano, f"escalated to {incident.severity}")
            )
            return IncidentChange("escalated", incident)
        if is_new and not known:
            return IncidentChange("updated", incident)
        return IncidentChange("refreshed", incident)

    def _rerank(self, incident: Incident) -> None:
        alerts = [self._alerts[i] for i in incident.alert_ids if i in self._alerts]
        for alert in alerts:
            self._ranked_score[alert.id] = alert.score
        incident.candidates = rank_root_causes(alerts, self.graph, self._weight)
        incident.baseline_candidates = rank_by_jump(alerts)
        top = incident.candidates[0].entity if incident.candidates else None
        n = len(incident.alert_ids)
        where = f"{top.kind} {top.name}" if top else "unknown"
        incident.title = f"{where}: {n} alert{'s' if n != 1 else ''}" + (
            f" across {len(incident.services)} services" if len(incident.services) > 1 else ""
        )

    def _merge(self, other: Incident, keeper: Incident, now: int) -> list[IncidentChange]:
        for alert_id in other.alert_ids:
            alert = self._alerts.get(alert_id)
            if alert is not None and alert_id not in keeper.alert_ids:
                self._join(keeper, alert, True, rerank=False)
        keeper.timeline.append(TimelineEntry(now, f"merged {other.id} into this incident"))
        keeper.opened_unix_nano = min(keeper.opened_unix_nano, other.opened_unix_nano)
        keeper.alert_events += max(0, other.alert_events - len(other.alert_ids))
        self._rerank(keeper)
        other.merged_into = keeper.id
        other.status = IncidentStatus.RESOLVED
        other.resolved_unix_nano = now
        other.updated_unix_nano = max(other.updated_unix_nano, now)
        other.timeline.append(TimelineEntry(now, f"merged into {keeper.id}"))
        return [IncidentChange("merged", other), IncidentChange("updated", keeper)]

    def _reopen(self, incident: Incident, alert: Alert, now: int) -> IncidentChange:
        incident.status = IncidentStatus.OPEN
        incident.acknowledged = False
        incident.resolved_unix_nano = None
        incident.reopened += 1
        incident.timeline.append(TimelineEntry(now, "reopened", alert.id))
        self._join(incident, alert, True)
        return IncidentChange("reopened", incident)

    def _resolve(self, incident: Incident, now: int, why: str) -> IncidentChange:
        incident.status = IncidentStatus.RESOLVED
        incident.resolved_unix_nano = now
        incident.updated_unix_nano = max(incident.updated_unix_nano, now)
        incident.timeline.append(TimelineEntry(now, why))
        return IncidentChange("resolved", incident)

    def _forget_before(self, cutoff: int) -> None:
        """Drop incidents resolved before ``cutoff`` (past their reopen window) and their
        alerts: they are stored; memory holds only what can still change."""
        done = [
            incident
            for incident in self.incidents.values()
            if incident.status is IncidentStatus.RESOLVED
            and (incident.resolved_unix_nano or 0) < cutoff
        ]
        for incident in done:
            del self.incidents[incident.id]
            self._members.pop(incident.id, None)
            self._last_event.pop(incident.id, None)
            if incident.merged_into is None:
                for alert_id in incident.alert_ids:
                    self._alerts.pop(alert_id, None)
                    self._ranked_score.pop(alert_id, None)
                    self._weight.pop(alert_id, None)
                    self._chronic.discard(alert_id)
        # Alerts that never joined an incident: forgotten once out of the pending pool.
        unattached = [
            a.id
            for a in self._alerts.values()
            if a.incident_id is None and a.id not in self._pending
        ]
        for alert_id in [i for i in unattached if self._alerts[i].last_seen_unix_nano < cutoff]:
            del self._alerts[alert_id]
            self._weight.pop(alert_id, None)
            self._chronic.discard(alert_id)
        self.history.forget_before(cutoff - self.history.window_ns)
