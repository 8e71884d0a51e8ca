"""Series and alerts from log records.

- a template id for every record (:class:`TemplateMiner`), for the side table;
- counts per event-time window: per service and severity (``log_rate``), per service and
  template (``log_burst``, increases only), zero-filled while a series is recent so that a
  burst stands out against its quiet windows;
- ``new_log_template``: a template never seen before, first seen at severity ERROR or above;
- ``log_silence``: a service that logged steadily and then logged nothing for
  ``silence_windows`` windows.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from opstrata import AlertEvent, Entity, Evidence, Layer, Severity
from opstrata.plugins.aiops.arrowkeys import int_times, map_as_dict, text_column
from opstrata.plugins.aiops.config import AiopsConfig
from opstrata.plugins.aiops.drain import TemplateMiner
from opstrata.plugins.aiops.scorer import SeriesScorer
from opstrata.plugins.aiops.series import BOTH, UP, SeriesMeta, locating_resource
from opstrata.plugins.aiops.windows import EventClock

__all__ = ["LogSeries", "severity_class"]

ERROR_NUMBER = 17
_CLASSES = ("unspecified", "trace", "debug", "info", "warn", "error", "fatal")
ZERO_FILL_WINDOWS = 60
"""A count series gets a zero in windows where it is absent for this many windows after it
was last seen; then it goes quiet until it appears again."""


def severity_class(numbers: np.ndarray) -> np.ndarray:
    """OTLP severity number (1-24) -> index into ``_CLASSES`` (0 when unspecified)."""
    return np.where(numbers > 0, (np.clip(numbers, 1, 24) - 1) // 4 + 1, 0)


class LogSeries:
    def __init__(
        self, scorer: SeriesScorer, config: AiopsConfig, emit: Callable[[AlertEvent], None]
    ) -> None:
        self.scorer = scorer
        self.config = config
        self.emit = emit
        width = int(config.interval_seconds * 1e9)
        self.clock = EventClock(width, config.lateness_windows)
        self.miner = TemplateMiner(config.template_similarity, config.template_depth)
        self.windows: dict[int, dict[str, int]] = {}
        self.services: dict[str, dict[str, str]] = {}
        self.first_seen: dict[str, int] = {}
        """Event time of each service's first log record: its templates are learnt silently
        for a warm-up (everything is new when a service starts logging)."""
        self.last_window: dict[str, int] = {}
        self.service_rate: dict[str, float] = {}
        self.silent: dict[str, int] = {}
        self.firing_silence: set[str] = set()
        self.metas: dict[str, SeriesMeta] = {}
        self.last_closed: int | None = None

    def consume(self, logs: pa.RecordBatch) -> np.ndarray | None:
        """Count one batch; returns the template id of every record (None when mining is off)."""
        if not logs.num_rows:
            return None
        times = int_times(logs, "Timestamp")
        observed = int_times(logs, "ObservedTimestamp")
        times = np.where(times > 0, times, observed)
        self.clock.advance(int(np.median(times)))
        services = text_column(logs, "ServiceName").to_pylist()
        severity = severity_class(
            logs.column("SeverityNumber")
            .fill_null(0)
            .to_numpy(zero_copy_only=False)
            .astype(np.int64)
        )
        resources = logs.column("ResourceAttributes")
        for row, service in enumerate(services):
            if service not in self.services:
                self.services[service] = locating_resource(map_as_dict(resources, row))
            if service not in self.first_seen:
                self.first_seen[service] = int(times[row])
        templates = None
        if self.config.log_templates:
            bodies = pc.fill_null(logs.column("Body"), "").to_pylist()
            templates = self.miner.add(bodies)
            self._new_templates(logs, templates, severity, services, times)
        window = times // self.clock.width
        service_arr = pa.array(services, pa.string())
        key_arrays = [
            (
                "rate|",
                pc.binary_join_element_wise(
                    service_arr, pa.array(np.asarray(_CLASSES)[severity]), "|"
                ),
            ),
            ("svc|", service_arr),
        ]
        if templates is not None:
            key_arrays.append(
                (
                    "tpl|",
                    pc.binary_join_element_wise(
                        service_arr, pa.array(templates).cast(pa.string()), "|"
                    ),
                )
            )
        for w in np.unique(window).tolist():
            if not self.clock.accepts(w):
                continue
            rows = pa.array(np.flatnonzero(window == w))
            counts = self.windows.setdefault(w, {})
            for prefix, keys in key_arrays:
                tally = pc.value_counts(keys.take(rows))
                for k, c in zip(
                    tally.field("values").to_pylist(),
                    tally.field("counts").to_pylist(),
                    strict=True,
                ):
                    counts[prefix + k] = counts.get(prefix + k, 0) + c
        self.flush()
        return templates

    def _new_templates(self, logs, templates, severity, services, times) -> None:
        numbers = logs.column("SeverityNumber").fill_null(0).to_numpy(zero_copy_only=False)
        # The same warm-up as a series: `warmup` windows of the service's own event time.
        warmup = self.config.warmup * self.clock.width
        for cid, row in self.miner.last_new.items():
            if int(numbers[row]) < ERROR_NUMBER:
                continue
            service = services[row]
            if int(times[row]) - self.first_seen.get(service, int(times[row])) < warmup:
                continue
            trace = logs.column("TraceId")[row].as_py() or ""
            body = str(logs.column("Body")[row].as_py() or "")
            template = self.miner.template(cid)
            self.emit(
                AlertEvent(
                    time_unix_nano=int(times[row]),
                    kind="new_log_template",
                    layer=Layer.AIOPS,
                    entity=Entity("service", service) if service else Entity("metric", "logs"),
                    summary=f"new {_CLASSES[int(severity[row])].upper()} log template: "
                    f"{template[:120]}",
                    severity=Severity.ERROR if int(numbers[row]) < 21 else Severity.CRITICAL,
                    score=1.0,
                    resource=self.services.get(service, {}),
                    evidence=Evidence(
                        series=f"log_template|{service}|{cid}",
                        exemplar_trace_ids=[trace] if trace else [],
                        details={
                            "template_id": cid,
                            "template": template,
                            "example": body[:500],
                            "severity_number": int(numbers[row]),
                        },
                    ),
                    key=f"aiops/new_log_template/{service}/{cid}",
                )
            )

    def flush(self, everything: bool = False) -> None:
        """Close the complete windows in order — also the empty ones since the last closed
        window (up to ``ZERO_FILL_WINDOWS`` of them), so zeros and silences are seen."""
        ready = sorted(self.windows) if everything else self.clock.closable(list(self.windows))
        if self.last_closed is not None:
            limit = self.clock.now // self.clock.width - self.clock.lateness
            empty_until = min(limit, self.last_closed + 1 + ZERO_FILL_WINDOWS)
            ready = sorted(set(ready) | set(range(self.last_closed + 1, empty_until)))
        for w in ready:
            if self.last_closed is not None and w <= self.last_closed:
                self.windows.pop(w, None)  # arrived after its window closed: dropped
                continue
            self._close(w, self.windows.pop(w, {}))

    def _meta(self, key: str) -> SeriesMeta:
        kind, service, what = key.split("|", 2)
        entity = Entity("service", service)
        resource = self.services.get(service, {})
        if kind == "rate":
            return SeriesMeta(
                id=0,
                key=key,
                name=f"log_rate_{what}",
                kind="log_rate",
                entity=entity,
                resource=resource,
                unit="1/window",
                direction=UP if what in ("error", "fatal", "warn") else BOTH,
                counts=True,
                labels={"severity": what},
            )
        return SeriesMeta(
            id=0,
            key=key,
            name="log_template_count",
            kind="log_burst",
            entity=entity,
            resource=resource,
            unit="1/window",
            direction=UP,
            counts=True,
            labels={"template_id": what, "template": self.miner.template(int(what))},
        )

    def _close(self, w: int, counts: dict[str, int]) -> None:
        # Zero-fill: every recent series gets a point, absent ones a zero.
        for key in counts:
            self.last_window[key] = w
        keys = [
            k
            for k, last in self.last_window.items()
            if w - last <= ZERO_FILL_WINDOWS and not k.startswith("svc|")
        ]
        start = w * self.clock.width
        if keys:
            ids = self.scorer.registry.ids(keys, lambda i, key: self._meta(key))
            values = np.array([counts.get(k, 0) for k in keys], np.float64)
            self.scorer.feed(ids, np.full(len(keys), start, np.int64), values)
        self._silence(w, counts, start)
        self.last_closed = w

    def _silence(self, w: int, counts: dict[str, int], start: int) -> None:
        for service in self.services:
            n = counts.get("svc|" + service, 0)
            rate = self.service_rate.get(service, 0.0)
            if n > 0:
                self.service_rate[service] = rate + 0.1 * (n - rate) if rate else float(n)
                self.silent[service] = 0
                if service in self.firing_silence:
                    self.firing_silence.discard(service)
                    self.emit(self._silence_event(service, start, rate, resolved=True))
                continue
            if rate <= 0:
                continue
            self.silent[service] = self.silent.get(service, 0) + 1
            if (
                self.silent[service] == self.config.silence_windows
                and rate >= self.config.silence_min_rate
            ):
                self.firing_silence.add(service)
                onset = start - (self.config.silence_windows - 1) * self.clock.width
                self.emit(self._silence_event(service, onset, rate, resolved=False))

    def _silence_event(self, service: str, t: int, rate: float, resolved: bool) -> AlertEvent:
        return AlertEvent(
            time_unix_nano=t,
            kind="log_silence",
            layer=Layer.AIOPS,
            entity=Entity("service", service),
            summary=(
                f"logs of {service} are back"
                if resolved
                else f"{service} stopped logging (usually {rate:.0f} records per window)"
            ),
            severity=Severity.INFO if resolved else Severity.ERROR,
            score=1.0,
            resource=self.services.get(service, {}),
            evidence=Evidence(
                series=f"log_count|{service}",
                observed=0.0,
                expected=rate,
                details={"windows": self.config.silence_windows},
            ),
            key=f"aiops/log_silence/{service}",
            resolved=resolved,
        )
