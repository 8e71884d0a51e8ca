"""Deploys: a service whose ``service.version`` changes is a change event.

The first question an SRE asks of a failing service is "what changed?" — a new version is the
usual answer. Spans carry the version as a resource attribute, so a version a service has
never run before, once the service has been seen for a while, is a deploy. It is raised as an
``info`` alert of kind ``deployment`` (key ``aiops/deployment/<service>``): never an incident
on its own, but the correlator lets it corroborate an alert of the same service that starts
within ``DEPLOY_WINDOW_S`` after it (a new ERROR log template, an error ratio), and the
ranking sees it as evidence on that service. It resolves ``DEPLOY_WINDOW_S`` of event time
after the new version was first seen.

Per batch the work is column-wise: one map lookup and one group-by over (service, version);
only the handful of distinct pairs is looked at in Python.
"""

from __future__ import annotations

from collections.abc import Callable

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


class DeployWatch:
    """Versions seen per service; a new one on a settled service raises a ``deployment``."""

    def __init__(self, emit: Callable[[AlertEvent], None]) -> None:
        self.emit = emit
        self.versions: dict[str, dict[str, int]] = {}
        """service -> version -> when it was first seen (event time, ns)."""
        self.first_seen: dict[str, int] = {}
        self.open: dict[str, tuple[int, AlertEvent]] = {}
        """service -> (when its deploy resolves, the firing event)."""

    def observe(self, services: pa.Array, resources: pa.Array, times: pa.Array) -> None:
        """Note the (service, version) pairs of a batch (spans' ``ServiceName``,
        ``ResourceAttributes``, ``Timestamp`` as int64 ns) and raise what is new."""
        if not len(services):
            return
        versions = pc.fill_null(pc.map_lookup(resources, _VERSION, "first"), "")
        table = pa.table(
            {"s": services, "v": versions, "t": times, "i": pa.array(range(len(services)))}
        )
        pairs = table.group_by(["s", "v"]).aggregate([("t", "min"), ("i", "min")])
        for service, version, first, row in zip(
            pairs.column("s").to_pylist(),
            pairs.column("v").to_pylist(),
            pairs.column("t_min").to_pylist(),
            pairs.column("i_min").to_pylist(),
            strict=True,
        ):
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
        for service, (until, event) in list(self.open.items()):
            if now >= until:
                del self.open[service]
                self.emit(
                    AlertEvent(
                        time_unix_nano=until,
                        kind=event.kind,
                        layer=event.layer,
                        entity=event.entity,
                        summary=f"{service}: deploy window of {event.evidence.details['version']}"
                        " over",
                        severity=Severity.INFO,
                        score=event.score,
                        resource=event.resource,
                        evidence=event.evidence,
                        key=event.key,
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
            key=f"aiops/deployment/{service}",
        )
        self.open[service] = (t + DEPLOY_WINDOW_S * _NS, event)
        self.emit(event)

    def state(self) -> dict:
        return {"versions": self.versions, "first_seen": self.first_seen}

    def restore(self, state: dict) -> None:
        self.versions = {s: dict(v) for s, v in state.get("versions", {}).items()}
        self.first_seen = dict(state.get("first_seen", {}))
