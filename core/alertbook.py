"""From alert events to stored alerts and incidents: dedup, the incident engine, notifiers.

Consumers emit from their own threads; the events queue here (bounded; a full queue makes the
emitting consumer wait, never ingest) and one thread folds them, in arrival order, into alerts
(one per key), hands new and changed alerts to the incident engine, stores both, and passes
incident changes to the notifiers. Dedup and correlation are counted separately.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Sequence

from opstrata.alerts import SEVERITY_RANK, Alert, AlertEvent, IncidentChange
from opstrata.incidents import IncidentEngine, new_id
from opstrata.notifiers import NotifierRunner

__all__ = ["AlertBook"]

log = logging.getLogger(__name__)

_STOP = object()


class AlertBook:
    def __init__(
        self,
        store,
        engine: IncidentEngine,
        notifiers: Sequence[NotifierRunner] = (),
        capacity: int = 10_000,
    ) -> None:
        self.store = store
        self.engine = engine
        self.notifiers = list(notifiers)
        self._queue: queue.Queue[object] = queue.Queue(capacity)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._by_key: dict[str, Alert] = {}
        self._stored_incident: dict[str, str | None] = {}
        """The incident each firing alert was last stored with."""
        self.events = 0
        self.alerts_created = 0
        self.incident_changes = 0
        self.dropped = 0
        self._clock = 0
        self._advanced_to = 0

    def start(self) -> None:
        alerts = self.store.load_alerts(firing_only=True)
        self._by_key = {alert.key: alert for alert in alerts}
        self._stored_incident = {alert.id: alert.incident_id for alert in alerts}
        self.engine.load(self.store.load_incidents(open_only=True), alerts)
        self._thread = threading.Thread(target=self._run, name="alertbook", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout)
            self._thread = None

    def observe(self, time_unix_nano: int) -> None:
        """Event time seen in the telemetry: incidents resolve after quiet periods of *event*
        time even when no alert arrives (a replay resolves them exactly as live traffic did)."""
        if time_unix_nano > self._clock:
            self._clock = time_unix_nano

    def emit(self, plugin: str, event: AlertEvent) -> None:
        """Queue one alert event (called from consumer threads)."""
        try:
            self._queue.put((plugin, event), timeout=30)
        except queue.Full:
            self.dropped += 1
            log.warning("alert queue full: dropped an alert event of %s", plugin)

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until every queued event has been handled (for tests and shutdown)."""
        done = threading.Event()
        self._queue.put(done, timeout=timeout)
        done.wait(timeout)

    def acknowledge(self, incident_id: str) -> IncidentChange | None:
        with self._lock:
            change = self.engine.acknowledge(incident_id)
            self._publish([change] if change else [])
            return change

    def resolve(self, incident_id: str) -> IncidentChange | None:
        with self._lock:
            change = self.engine.resolve(incident_id)
            self._publish([change] if change else [])
            return change

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=1.0)
            except queue.Empty:
                item = None
            if self._clock > self._advanced_to:
                self._advance(self._clock)
            if item is None:
                continue
            if item is _STOP:
                return
            if isinstance(item, threading.Event):
                item.set()
                continue
            plugin, event = item  # type: ignore[misc]
            try:
                with self._lock:
                    self._handle(plugin, event)
            except Exception:
                log.exception("alert event of %s could not be handled", plugin)

    def _handle(self, plugin: str, event: AlertEvent) -> None:
        self.events += 1
        key = event.key or f"{plugin}/{event.kind}/{event.entity.kind}/{event.entity.name}"
        alert = self._by_key.get(key)
        is_new = alert is None
        if alert is None:
            if event.resolved:
                return
            alert = Alert(
                id=new_id("alr", event.time_unix_nano),
                key=key,
                plugin=plugin,
                layer=event.layer,
                kind=event.kind,
                entity=event.entity,
                resource=dict(event.resource),
                severity=event.severity,
                score=event.score,
                summary=event.summary,
                evidence=event.evidence,
                first_seen_unix_nano=event.time_unix_nano,
                last_seen_unix_nano=event.time_unix_nano,
            )
            self._by_key[key] = alert
            self.alerts_created += 1
        else:
            alert.events += 1
            alert.last_seen_unix_nano = max(alert.last_seen_unix_nano, event.time_unix_nano)
            if event.score >= alert.score:
                alert.score = event.score
                alert.evidence = event.evidence
                alert.summary = event.summary
            if SEVERITY_RANK[event.severity] > SEVERITY_RANK[alert.severity]:
                alert.severity = event.severity
            if event.resolved:
                alert.status = "resolved"
                del self._by_key[key]
        changes = self.engine.on_alert(alert, is_new) if not event.resolved else []
        changes += self.engine.advance(event.time_unix_nano)
        self.store.save_alerts([alert])
        if alert.status == "resolved":
            self._stored_incident.pop(alert.id, None)
        else:
            self._stored_incident[alert.id] = alert.incident_id
        self._publish(changes)

    def _advance(self, now: int) -> None:
        self._advanced_to = now
        try:
            with self._lock:
                self._publish(self.engine.advance(now))
        except Exception:
            log.exception("incident engine failed to advance to %d", now)

    def _publish(self, changes: list[IncidentChange]) -> None:
        if not changes:
            return
        self.incident_changes += len(changes)
        self.store.save_incidents([change.incident for change in changes])
        for change in changes:
            if change.change == "resolved":
                self._resolve_alerts(change.incident.alert_ids)
            if change.change == "refreshed":
                continue
            for runner in self.notifiers:
                runner.submit(change)
        self._save_moved()

    def _save_moved(self) -> None:
        """Alerts the engine put into an incident other than the one stored with them (a
        pending alert joining the incident it confirmed, a merged incident's alerts): store
        that."""
        moved = [
            alert
            for alert in self._by_key.values()
            if self._stored_incident.get(alert.id) != alert.incident_id
        ]
        if moved:
            self.store.save_alerts(moved)
            for alert in moved:
                self._stored_incident[alert.id] = alert.incident_id

    def _resolve_alerts(self, alert_ids: list[str]) -> None:
        """An incident's end ends its alerts: a relapse raises them anew (and reopens it)."""
        ids = set(alert_ids)
        ended = [alert for alert in self._by_key.values() if alert.id in ids]
        for alert in ended:
            alert.status = "resolved"
            del self._by_key[alert.key]
            self._stored_incident.pop(alert.id, None)
        if ended:
            self.store.save_alerts(ended)
