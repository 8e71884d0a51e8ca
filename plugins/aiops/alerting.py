"""From scores to alerts: onset, dedup while an anomaly lasts, severity, resolution.

Alerts are raised per *group* — the series of one alert family (:func:`alert_group`: the p50
and p99 of one histogram, one metric of one entity over its routes and pods) raise one alert
between them. Per group the tracker keeps a few arrays (firing, onset, peak score, anomalous
points, normal points in a row). Only points that are anomalous, or belong to a firing group,
are looked at one by one — on a healthy fleet that is almost none.
"""

from __future__ import annotations

import collections
import math
import threading
from collections.abc import Callable, Sequence

import numpy as np

from opstrata import AlertEvent, Evidence, Layer, Severity
from opstrata.plugins.aiops.engine import POINT_TESTS, TESTS
from opstrata.plugins.aiops.series import SeriesMeta, SeriesRegistry

__all__ = ["AlertTracker", "severity_of"]

_RANK = {Severity.WARNING: 1, Severity.ERROR: 2, Severity.CRITICAL: 3}
ARRAYS = ("firing", "onset", "peak", "points", "normal_run", "rank", "seen_t")
"""The tracker's per-group arrays (saved with the detector state)."""


def severity_of(score: float, points: int) -> Severity:
    """Stronger (smaller tail probability) and longer anomalies are more severe."""
    strength = -math.log10(max(1.0 - score, 1e-16))
    if (strength >= 10 and points >= 5) or points >= 30:
        return Severity.CRITICAL
    if strength >= 8 or points >= 5:
        return Severity.ERROR
    return Severity.WARNING


class AlertTracker:
    """Turns scored points into AlertEvents, one alert (one ``key``) per anomaly episode."""

    def __init__(
        self, registry: SeriesRegistry, emit: Callable[[AlertEvent], None], resolve_after: int
    ) -> None:
        self.registry = registry
        self.emit = emit
        self.resolve_after = resolve_after
        self.firing = np.zeros(0, np.bool_)
        self.onset = np.zeros(0, np.int64)
        self.peak = np.zeros(0)
        self.points = np.zeros(0, np.int32)
        self.normal_run = np.zeros(0, np.int32)
        self.rank = np.zeros(0, np.int8)
        self.seen_t = np.zeros(0, np.int64)
        self.lock = threading.Lock()
        self.recent: collections.deque[dict] = collections.deque(maxlen=1000)
        """Anomaly episodes, newest last, for the API (firing ones are updated in place)."""
        self.open: dict[int, dict] = {}
        self.last_sent: dict[int, AlertEvent] = {}
        self.peak_point: dict[int, tuple] = {}
        """Firing group -> (value, expected, sigma, test, trace ids, series id) of its strongest
        point: the evidence an alert carries."""

    def _grow(self, size: int) -> None:
        if size <= self.firing.size:
            return
        cap = max(size, 2 * self.firing.size, 64)
        for name in ARRAYS:
            old = getattr(self, name)
            new = np.zeros(cap, old.dtype)
            new[: old.size] = old
            setattr(self, name, new)

    def observe(
        self,
        ids: np.ndarray,
        times: np.ndarray,
        values: np.ndarray,
        scores: np.ndarray,
        expected: np.ndarray,
        sigma: np.ndarray,
        tests: np.ndarray,
        exemplars: Sequence[Sequence[str]] | None = None,
    ) -> np.ndarray:
        """Points in time order per series; returns the label (1 anomalous) of each point."""
        self._grow(len(self.registry.group_keys))
        thresholds = self.registry.thresholds[ids]
        directions = self.registry.directions[ids]
        groups = self.registry.groups[ids]
        anomalous = scores >= thresholds
        anomalous &= ~((directions > 0) & (values <= expected))
        anomalous &= ~((directions < 0) & (values >= expected))
        look = np.flatnonzero(anomalous | self.firing[groups])
        for i in look.tolist():
            self._step(
                int(groups[i]),
                int(ids[i]),
                i,
                bool(anomalous[i]),
                times,
                values,
                scores,
                expected,
                sigma,
                tests,
                exemplars,
            )
        return anomalous.astype(np.int8)

    def _step(self, g, sid, i, anomalous, times, values, scores, expected, sigma, tests, exemplars):
        # ``g`` is the group (all state is per group), ``sid`` the series of this point.
        s = g
        meta = self.registry.metas[sid]
        t = int(times[i])
        if not anomalous and t <= self.seen_t[s]:
            return  # another series of the group, same time: one normal step per moment
        self.seen_t[s] = t
        if anomalous:
            self.normal_run[s] = 0
            if not self.firing[s]:
                self.firing[s] = True
                self.onset[s] = t
                self.peak[s] = 0.0
                self.points[s] = 0
                self.rank[s] = 0
            self.points[s] += 1
            if float(scores[i]) > self.peak[s] or s not in self.peak_point:
                self.peak[s] = float(scores[i])
                trace_ids = list(exemplars[i]) if exemplars is not None else []
                self.peak_point[s] = (
                    float(values[i]),
                    float(expected[i]),
                    float(sigma[i]),
                    int(tests[i]),
                    trace_ids,
                    sid,
                )
            severity = severity_of(float(self.peak[s]), int(self.points[s]))
            if _RANK[severity] > self.rank[s]:
                self.rank[s] = _RANK[severity]
                value, expect, sigma_, test, trace_ids, peak_sid = self.peak_point[s]
                peak_meta = self.registry.metas[peak_sid]
                self._send(g, peak_meta, t, value, expect, sigma_, test, severity, trace_ids)
            else:
                self._touch(s, t, float(values[i]), float(scores[i]))
            return
        self.normal_run[s] += 1
        if self.normal_run[s] >= self.resolve_after:
            self.firing[s] = False
            self.peak_point.pop(s, None)
            # The resolving event repeats the alert's evidence: the alert book keeps the
            # evidence of the event with the highest score, which this one may tie.
            last = self.last_sent.pop(s, None)
            event = AlertEvent(
                time_unix_nano=t,
                kind=meta.kind,
                layer=Layer.AIOPS,
                entity=meta.entity,
                summary=(last.summary if last is not None else meta.name) + " (back to normal)",
                severity=last.severity if last is not None else Severity.WARNING,
                score=float(self.peak[s]),
                resource=meta.resource,
                evidence=last.evidence if last is not None else Evidence(series=meta.key),
                key=self.key(meta),
                resolved=True,
            )
            self.emit(event)
            with self.lock:
                episode = self.open.pop(s, None)
                if episode is not None:
                    episode["resolved_unix_nano"] = t
                    episode["status"] = "resolved"

    @staticmethod
    def key(meta: SeriesMeta) -> str:
        """One alert per group: ``aiops/<kind>/<group>``."""
        return f"aiops/{meta.kind}/{meta.group or meta.key}"

    def _touch(self, s: int, t: int, value: float, score: float) -> None:
        with self.lock:
            episode = self.open.get(s)
            if episode is not None:
                episode["last_unix_nano"] = t
                episode["points"] = int(self.points[s])
                episode["score"] = max(episode["score"], score)

    def _send(
        self,
        g: int,
        meta: SeriesMeta,
        t: int,
        value: float,
        expected: float,
        sigma: float,
        test: int,
        severity: Severity,
        trace_ids: list[str],
    ) -> None:
        s = g
        onset = int(self.onset[s])
        score = float(self.peak[s])
        threshold = float(meta.threshold)
        # The band: how far from the forecast a point may be before it scores the threshold
        # (the spike test's exponential tail, with its typical fit).
        width = sigma * (
            1.0 + 0.6 * math.log(max(0.32 * len(TESTS) / max(1 - threshold, 1e-16), 1.0))
        )
        lower, upper = expected - width, expected + width
        direction = "above" if value > expected else "below"
        unit = f" {meta.unit}" if meta.unit else ""
        summary = (
            f"{meta.name} of {meta.entity.kind} {meta.entity.name} {direction} normal: "
            f"{value:.4g}{unit}, expected {expected:.4g} ({lower:.4g}..{upper:.4g})"
        )
        details = {
            "series_id": meta.id,
            "onset_unix_nano": onset,
            "last_unix_nano": t,
            "points": int(self.points[s]),
            "test": POINT_TESTS[test] if 0 <= test < len(POINT_TESTS) else str(test),
            "tail_probability": max(1.0 - score, 0.0),
            "labels": meta.labels,
        }
        event = AlertEvent(
            time_unix_nano=onset,
            kind=meta.kind,
            layer=Layer.AIOPS,
            entity=meta.entity,
            summary=summary,
            severity=severity,
            score=score,
            resource=meta.resource,
            evidence=Evidence(
                series=meta.key,
                observed=value,
                expected=expected,
                lower=lower,
                upper=upper,
                exemplar_trace_ids=trace_ids[:10],
                details=details,
            ),
            key=self.key(meta),
        )
        self.emit(event)
        self.last_sent[s] = event
        with self.lock:
            episode = self.open.get(s)
            if episode is None:
                episode = {"series_id": meta.id, "status": "firing", "resolved_unix_nano": None}
                self.open[s] = episode
                self.recent.append(episode)
            episode.update(
                key=event.key,
                kind=meta.kind,
                entity={"kind": meta.entity.kind, "name": meta.entity.name},
                series=meta.key,
                name=meta.name,
                onset_unix_nano=onset,
                last_unix_nano=t,
                points=int(self.points[s]),
                score=score,
                severity=str(severity),
                observed=value,
                expected=expected,
                lower=lower,
                upper=upper,
                exemplar_trace_ids=trace_ids[:10],
                resource=meta.resource,
                labels=meta.labels,
            )
