"""Deploys: a service whose ``service.version`` changes is a change event.

The first question an SRE asks of a failing service is "what changed?" — a new version is the
usual answer. Spans carry the version as a resource attribute, so a version a service has
never run before, once the service has been seen for a while, is a deploy. It is raised as an
``info`` alert of kind ``deployment`` (key ``aiops/deployment/<service>/<version>``: one
alert per release, so a service that deploys often is not a flapping source and a second deploy
within the window does not reuse the first's alert): never an incident on its own, but the
correlator lets it corroborate an alert of error severity or higher of the same service that
starts within ``DEPLOY_WINDOW_S`` after it (a new ERROR log template, an error ratio), and the
ranking sees it as evidence on that service. It resolves ``DEPLOY_WINDOW_S`` of event time
after the new version was first seen — also across a restart (the open deploys are saved).

Per batch the work is column-wise: one map look-up, the distinct (service, version) pairs, a
set look-up of each; only a batch with a pair never seen before does more (a group-by).
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from opstrata import AlertEvent, Entity, Evidence, Layer, Severity
from opstrata.plugins.aiops.arrowkeys import map_as_dict
from opstrata.plugins.aiops.series import locating_resource

__all__ = ["DEPLOY_WINDOW_S", "DeployWatch"]

DEPLOY_WINDOW_S = 900
"""How long (event time) a deploy stays firing, i.e. may explain its service's new alerts."""
SETTLED_S = 600
"""A service must have been seen this long before a new version of it counts as a deploy:
when a service (or opstrata) starts, every version it runs is new and none is a change."""
_NS = 1_000_000_000
_VERSION = "service.version"
_KV = pa.list_(pa.struct([("key", pa.string()), ("value", pa.string())]))


class DeployWatch:
    """Versions seen per service; a new one on a settled service raises a ``deployment``."""

    def __init__(self, emit: Callable[[AlertEvent], None]) -> None:
        self.emit = emit
        self.versions: dict[str, dict[str, int]] = {}
        """service -> version -> when it was first seen (event time, ns)."""
        self.first_seen: dict[str, int] = {}
        self.open: dict[str, tuple[int, AlertEvent]] = {}
        """alert key -> (when that deploy resolves, the firing event)."""
        self.seen: set[str] = set()
        """``service NUL version`` of every pair seen (the fast path's look-up)."""

    def observe(self, services: pa.Array, resources: pa.Array, times: pa.Array) -> None:
        """Note the (service, version) pairs of a batch (spans' ``ServiceName``,
        ``ResourceAttributes``, ``Timestamp`` as int64 ns) and raise what is new."""
        if not len(services):
            return
        # The version entries of the flattened maps (a map look-up per row costs ~8x more).
        if isinstance(resources, pa.ChunkedArray):
            resources = resources.combine_chunks()
        lists = resources.view(_KV) if pa.types.is_map(resources.type) else resources
        flat = lists.flatten()
        hit = pc.fill_null(pc.equal(flat.field("key"), _VERSION), False)
        rows = pc.filter(pc.list_parent_indices(lists), hit)
        if not len(rows):
            return
        versions = pc.fill_null(pc.filter(flat.field("value"), hit), "")
        keys = pc.binary_join_element_wise(pc.take(services, rows), versions, "\x00")
        times = pc.take(times, rows)
        # Almost always every pair is known: one unique() and a set look-up per batch.
        fresh = [k for k in pc.unique(keys).to_pylist() if k not in self.seen]
        if not fresh:
            return
        table = pa.table({"k": keys, "t": times, "i": rows})
        table = table.filter(pc.is_in(table.column("k"), pa.array(fresh)))
        pairs = table.group_by(["k"]).aggregate([("t", "min"), ("i", "min")])
        for key, first, row in zip(
            pairs.column("k").to_pylist(),
            pairs.column("t_min").to_pylist(),
            pairs.column("i_min").to_pylist(),
            strict=True,
        ):
            self.seen.add(key)
            service, version = key.split("\x00", 1)
            if not service or not version:
                continue
            known = self.versions.setdefault(service, {})
            if version in known:
                continue
            since = self.first_seen.setdefault(service, first)
            previous = sorted(known, key=known.__getitem__)
            known[version] = first
            if previous and first - since >= SETTLED_S * _NS:
                resource = locating_resource(map_as_dict(resources, row))
                self._raise(service, version, previous[-1], first, resource)

    def advance(self, now: int) -> None:
        """Resolve the deploys whose window has passed by event time ``now``."""
        for key, (until, event) in list(self.open.items()):
            if now >= until:
                del self.open[key]
                version = event.evidence.details["version"]
                self.emit(
                    msgspec.structs.replace(
                        event,
                        time_unix_nano=until,
                        summary=f"{event.entity.name}: deploy window of {version} over",
                        resolved=True,
                    )
                )

    def _raise(
        self, service: str, version: str, previous: str, t: int, resource: dict[str, str]
    ) -> None:
        event = AlertEvent(
            time_unix_nano=t,
            kind="deployment",
            layer=Layer.AIOPS,
            entity=Entity("service", service),
            summary=f"{service} deployed {version} (was {previous})",
            severity=Severity.INFO,
            score=1.0,
            resource=resource,
            evidence=Evidence(
                series=f"deployment|{service}",
                details={"version": version, "previous_version": previous},
            ),
            key=f"aiops/deployment/{service}/{version}",
        )
        self.open[event.key] = (t + DEPLOY_WINDOW_S * _NS, event)
        self.emit(event)

    def state(self) -> dict:
        # The open deploys too: one still in its window at a restart must get its resolved
        # event afterwards, or it stays firing for ever.
        return {"versions": self.versions, "first_seen": self.first_seen, "open": dict(self.open)}

    def restore(self, state: dict) -> None:
        self.versions = {s: dict(v) for s, v in state.get("versions", {}).items()}
        self.seen = {f"{s}\x00{v}" for s, versions in self.versions.items() for v in versions}
        self.first_seen = dict(state.get("first_seen", {}))
        self.open = dict(state.get("open", {}))
