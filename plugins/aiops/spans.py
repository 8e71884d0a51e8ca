"""RED series from spans: request rate, error ratio, p50 and p99 latency per event-time window,
per service and per operation (``service/span name``), from the spans where requests enter a
service (kind server or consumer, or root spans).

Per batch, each window's counts are added with ``bincount`` and its latencies to a mergeable
log-bucket histogram; the slowest and the failed spans' trace ids are kept as exemplars. When
event time passes a window (plus lateness) its points go to the detector.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from opstrata import Entity
from opstrata.plugins.aiops.arrowkeys import int_times, map_as_dict, text_column
from opstrata.plugins.aiops.deploys import DeployWatch
from opstrata.plugins.aiops.scorer import SeriesScorer
from opstrata.plugins.aiops.series import BOTH, UP, SeriesMeta, locating_resource
from opstrata.plugins.aiops.sketch import LogHistogram
from opstrata.plugins.aiops.windows import EventClock

__all__ = ["RedSeries"]

EXEMPLARS = 5
ZERO_WINDOWS = 30
"""Windows after its last request in which a service's request rate is reported as zero."""
_MEASURES = (
    # suffix, kind, direction, unit
    ("request_rate", "traffic", BOTH, "1/s"),
    ("error_ratio", "error_rate", UP, "1"),
    ("latency_p50", "latency", UP, "ms"),
    ("latency_p99", "latency", UP, "ms"),
)


_QUANTILE_OF = {2: 0.5, 3: 0.99}
"""Measure index -> the quantile it is (latency_p50, latency_p99)."""


class _Window:
    __slots__ = ("count", "errors", "errors_ex", "hist", "slow")

    def __init__(self) -> None:
        self.count = np.zeros(0, np.int64)
        self.errors = np.zeros(0, np.int64)
        self.hist = LogHistogram()
        self.slow: dict[int, list[tuple[float, str]]] = {}
        self.errors_ex: dict[int, list[str]] = {}


class RedSeries:
    def __init__(self, scorer: SeriesScorer, width_ns: int, lateness: int, min_spans: int) -> None:
        self.scorer = scorer
        self.clock = EventClock(width_ns, lateness)
        self.min_spans = min_spans
        self.entities: dict[str, int] = {}
        self.entity_meta: list[tuple[Entity, dict[str, str]]] = []
        self.windows: dict[int, _Window] = {}
        self.late_spans = 0
        self.last_closed: int | None = None
        self.last_seen: dict[int, int] = {}
        """Service entity id -> the last window it had requests in."""
        self.deploys = DeployWatch(scorer.tracker.emit)

    def _entity_ids(self, keys: pa.Array, resources: pa.Array, kind: str) -> np.ndarray:
        encoded = pc.dictionary_encode(keys)
        indices = encoded.indices.to_numpy(zero_copy_only=False)
        names = encoded.dictionary.to_pylist()
        ids = np.empty(len(names), np.int64)
        for i, name in enumerate(names):
            eid = self.entities.get(kind + "\x00" + name)
            if eid is None:
                row = int(np.argmax(indices == i))
                resource = locating_resource(map_as_dict(resources, row))
                eid = len(self.entity_meta)
                self.entities[kind + "\x00" + name] = eid
                self.entity_meta.append((Entity(kind, name), resource))
            ids[i] = eid
        return ids[indices]

    def consume(self, spans: pa.RecordBatch) -> int:
        if not spans.num_rows:
            return 0
        kind = spans.column("SpanKind")
        entry = pc.or_(
            pc.is_in(kind, pa.array(["Server", "Consumer"])),
            pc.equal(pc.fill_null(spans.column("ParentSpanId"), ""), ""),
        )
        times_all = int_times(spans, "Timestamp")
        self.clock.advance(int(np.median(times_all)))
        self.deploys.observe(
            text_column(spans, "ServiceName"), spans.column("ResourceAttributes"),
            pa.array(times_all),
        )  # fmt: skip
        spans = spans.filter(entry)
        if not spans.num_rows:
            return 0
        service = text_column(spans, "ServiceName")
        operation = pc.binary_join_element_wise(service, text_column(spans, "SpanName"), "/")
        resources = spans.column("ResourceAttributes")
        ids = np.concatenate(
            [
                self._entity_ids(service, resources, "service"),
                self._entity_ids(operation, resources, "operation"),
            ]
        )
        times = np.tile(int_times(spans, "Timestamp"), 2)
        durations_ms = np.tile(spans.column("Duration").to_numpy(zero_copy_only=False) / 1e6, 2)
        failed = np.tile(
            pc.equal(spans.column("StatusCode"), "Error")
            .fill_null(False)
            .to_numpy(zero_copy_only=False),
            2,
        )
        trace_ids = spans.column("TraceId").to_pylist() * 2
        window = times // self.clock.width
        accepted = np.array([self.clock.accepts(int(w)) for w in np.unique(window)])
        late = np.isin(window, np.unique(window)[~accepted])
        self.late_spans += int(late.sum())
        size = len(self.entity_meta)
        for w in np.unique(window[~late]).tolist():
            rows = np.flatnonzero(window == w)
            acc = self.windows.get(w)
            if acc is None:
                acc = self.windows[w] = _Window()
            if acc.count.size < size:
                acc.count = np.pad(acc.count, (0, size - acc.count.size))
                acc.errors = np.pad(acc.errors, (0, size - acc.errors.size))
            e = ids[rows]
            acc.count += np.bincount(e, minlength=size)
            acc.errors += np.bincount(e[failed[rows]], minlength=size)
            acc.hist = acc.hist.merge(LogHistogram.of(e, durations_ms[rows]))
            # Exemplars: the slowest spans of each entity, and some failed ones.
            order = rows[np.lexsort((-durations_ms[rows], e))]
            first = np.r_[True, ids[order][1:] != ids[order][:-1]]
            rank = np.arange(order.size) - np.maximum.accumulate(
                np.where(first, np.arange(order.size), 0)
            )
            for i in order[rank < EXEMPLARS].tolist():
                slot = acc.slow.setdefault(int(ids[i]), [])
                slot.append((float(durations_ms[i]), trace_ids[i]))
                if len(slot) > EXEMPLARS:
                    slot.sort(reverse=True)
                    del slot[EXEMPLARS:]
            for i in rows[failed[rows]].tolist():
                slot_e = acc.errors_ex.setdefault(int(ids[i]), [])
                if len(slot_e) < EXEMPLARS:
                    slot_e.append(trace_ids[i])
        self.flush()
        return int(spans.num_rows)

    def flush(self, everything: bool = False) -> None:
        """Close complete windows in order, the empty ones since the last closed window too
        (up to ``ZERO_WINDOWS``): a service that stops getting requests shows as a zero rate."""
        self.deploys.advance(self.clock.now)
        ready = sorted(self.windows) if everything else self.clock.closable(list(self.windows))
        if self.last_closed is not None:
            limit = self.clock.now // self.clock.width - self.clock.lateness
            empty_until = min(limit, self.last_closed + 1 + ZERO_WINDOWS)
            ready = sorted(set(ready) | set(range(self.last_closed + 1, empty_until)))
        for w in ready:
            if self.last_closed is not None and w <= self.last_closed:
                self.windows.pop(w, None)
                continue
            self._close(w, self.windows.pop(w, None) or _Window())
            self.last_closed = w

    def _close(self, w: int, acc: _Window) -> None:
        width_s = self.clock.width / 1e9
        start = w * self.clock.width
        present = np.flatnonzero(acc.count > 0)
        for eid in present.tolist():
            if self.entity_meta[eid][0].kind == "service":
                self.last_seen[eid] = w
        # Services seen recently but without a request in this window: a zero rate.
        silent = [e for e, last in self.last_seen.items() if last < w and w - last <= ZERO_WINDOWS]
        groups, quantiles, q_noise, _ = acc.hist.quantiles_with_noise((0.5, 0.99))
        q_of = {int(g): j for j, g in enumerate(groups.tolist())}
        keys, values, exemplars, metas = [], [], [], []
        noise, weights, levels, owners = [], [], [], []

        def add(entity, resource, m, value, trace_ids, point_noise, samples, eid=-1) -> None:
            suffix, kind, direction, unit = _MEASURES[m]
            keys.append(f"red|{entity.kind}|{entity.name}|{suffix}")
            values.append(value)
            exemplars.append(trace_ids)
            noise.append(point_noise)
            weights.append(samples)
            levels.append(_QUANTILE_OF.get(m, np.nan))
            owners.append(eid)
            metas.append(
                SeriesMeta(
                    id=0,
                    key="",
                    name=suffix,
                    kind=kind,
                    entity=entity,
                    resource=resource,
                    unit=unit,
                    direction=direction,
                    ratio=m == 1,
                    rate=m == 0,
                )
            )

        for eid in present.tolist():
            entity, resource = self.entity_meta[eid]
            count = int(acc.count[eid])
            slow = [t for _, t in sorted(acc.slow.get(eid, []), reverse=True)]
            # (measure, value, exemplars, the value's own standard error, its sample count)
            # (a rate's "sample" is the seconds it covers: its count is rate x seconds)
            measures = [(0, count / width_s, [], (0.0, 0.0), width_s)]
            if count >= self.min_spans:
                j = q_of.get(eid)
                errors_ex = acc.errors_ex.get(eid, [])
                ratio = acc.errors[eid] / count
                measures.append((1, ratio, errors_ex, (0.0, 0.0), float(count)))
                if j is not None:
                    q, qn = quantiles[j], q_noise[j]
                    measures.append((2, float(q[0]), slow, tuple(qn[0]), float(count)))
                    measures.append((3, float(q[1]), slow, tuple(qn[1]), float(count)))
            for measure in measures:
                add(entity, resource, *measure, eid=eid)
        for eid in silent:
            entity, resource = self.entity_meta[eid]
            add(entity, resource, 0, 0.0, [], (0.0, 0.0), width_s)
        if not keys:
            return
        ids = self.scorer.registry.ids(keys, lambda i, key: metas[i])
        owner = np.array(owners, np.int64)
        hist = acc.hist
        self.scorer.feed(
            ids,
            np.full(len(keys), start, np.int64),
            np.array(values),
            exemplars,
            noise=np.array(noise, np.float64).reshape(-1, 2),
            weights=np.array(weights),
            # Latency quantiles are judged by how many of the window's requests lie beyond
            # the forecast (the sketch knows each one to 2 %), not by the quantile alone.
            quantiles=np.array(levels, np.float64),
            tail_counts=lambda points, thresholds: hist.counts_beyond(owner[points], thresholds),
        )
