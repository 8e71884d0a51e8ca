"""Judging one entity's calls in one closed event-time bucket: latency and TTFT regressions,
cost and token spikes, error bursts (see ``docs/llmops.md``, Alerts).

Each test compares the bucket's calls one by one with the entity's recent calls (a ring per
entity, :mod:`~opstrata.plugins.llmops.detect_stats`) and fires only when two things hold:
the difference is significant (p-value at most ``alerts.p_value``: few calls are weak evidence,
so a sparse bucket cannot alert on noise) and it is large (an effect-size floor from the
settings, so a huge bucket cannot alert on a trivial shift). Cost and tokens are also judged
by volume: a bucket total far above the entity's usual daily high, so a traffic-driven rise
alerts only when it is outside the day's normal range.

A bucket that raised an alert enters the baselines at an eighth of its weight: an ongoing
fault cannot quickly make itself the norm, while a lasting change is learned within hours.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from opstrata.alerts import AlertEvent, Entity, Evidence, Layer, Severity
from opstrata.plugins.llmops.config import AlertSettings
from opstrata.plugins.llmops.detect_stats import (
    FIELDS,
    BucketHistory,
    CallRings,
    error_p,
    order_statistic,
    sorted_tail_p,
    usual_error_rate,
)
from opstrata.plugins.llmops.prices import PICO

__all__ = ["BucketCalls", "BucketJudge", "bucket_calls"]

_DURATION, _TTFT, _COST, _TOKENS, _ERROR = (FIELDS.index(f) for f in FIELDS)
_ANOMALY_WEIGHT = 8
"""An alerting bucket counts as 1/8 of a normal one in the baselines."""
_HORIZON_BUCKETS = 30
"""A ring holds at least this many buckets' calls: busy entities admit a spread subset."""
_DAY_SECONDS = 86_400
_VOLUME_HISTORY = 30
"""Buckets of history before volume is judged: a daily high from a few minutes (after a start
at night, say) would make the morning's rise a spike."""
_LATENCY_TESTS = (
    ("latency_regression", _DURATION, "p95 latency ms"),
    ("ttft_regression", _TTFT, "p95 time to first token ms"),
)
_SPIKE_TESTS = (  # alert, per-call field, total in BucketHistory, unit, unit scale
    ("cost_spike", _COST, 1, "USD", PICO),
    ("token_spike", _TOKENS, 2, "tokens", 1),
)


@dataclass
class BucketCalls:
    """One entity's calls in one closed bucket: per-call values ``(len(FIELDS), n)``, and their
    trace ids for exemplars (picked only when an alert needs them: most buckets raise none)."""

    values: np.ndarray
    traces: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))
    services: dict[str, int] = field(default_factory=dict)

    @property
    def calls(self) -> int:
        return int(self.values.shape[1])

    def exemplars(self, which: str) -> list[str]:
        """Trace ids of the ``slow``est, costliest (``cost``) or failed (``error``) calls."""
        values = self.values
        if which == "slow":
            order = _top(values[_DURATION])
        elif which == "cost":
            order = _top(values[_COST] + values[_TOKENS])
        elif which == "error":
            order = np.flatnonzero(values[_ERROR] > 0)
        else:
            return []
        return [str(t) for t in self.traces[order[:3]] if t]


def _top(values: np.ndarray, count: int = 3) -> np.ndarray:
    """Positions of the ``count`` largest values, largest first (a partition, not a sort)."""
    if len(values) <= count:
        return np.argsort(-values, kind="stable")
    best = np.argpartition(-values, count - 1)[:count]
    return best[np.argsort(-values[best], kind="stable")]


def bucket_calls(
    rows: np.ndarray, cols: dict[str, np.ndarray], services: np.ndarray | None = None
) -> BucketCalls:
    """The calls at ``rows`` of a closed bucket's columns; ``services``: the bucket's sorted
    service names when ``cols["ServiceCode"]`` numbers each call's (counted, not sorted again)."""
    values = np.stack([cols[name][rows] for name in ("duration", "ttft", "cost", "tokens",
                                                     "IsError")]).astype(np.float64)  # fmt: skip
    if services is not None:
        counts = np.bincount(cols["ServiceCode"][rows], minlength=len(services))
        seen = np.flatnonzero(counts)
        names, counts = services[seen], counts[seen]
    else:
        names, counts = np.unique(cols["ServiceName"][rows], return_counts=True)
    return BucketCalls(
        values=values,
        traces=cols["TraceId"][rows],
        services={str(s): int(c) for s, c in zip(names, counts, strict=True)},
    )


@dataclass
class _Finding:
    alert: str
    observed: float
    expected: float
    series: str
    exemplar: str
    details: dict[str, object]
    note: str = ""
    usually: str = "usually"


def _quantile(values: np.ndarray, level: float) -> float:
    values = values[~np.isnan(values)]
    return float(np.quantile(values, level)) if len(values) else 0.0


def _mean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else 0.0


class BucketJudge:
    """Per dimension (``llm_model``, ``service``): the entities' rings and daily histories;
    ``judge`` tests a bucket, emits what fires or stops firing, then updates the baselines."""

    def __init__(
        self,
        settings: AlertSettings,
        emit: Callable[[AlertEvent], None],
        resource_of: Callable[[str], dict[str, str]],
        dimensions: tuple[str, ...],
    ) -> None:
        self.settings = settings
        self.emit = emit
        self.resource_of = resource_of
        day = max(1, _DAY_SECONDS // settings.bucket_seconds)
        self.rings = {kind: CallRings(settings.baseline_calls) for kind in dimensions}
        self.history = {kind: BucketHistory(day) for kind in dimensions}
        self.credit: dict[tuple[str, int], float] = {}
        self.recent: dict[tuple[str, int], deque[tuple[int, np.ndarray, bool]]] = {}
        """Per entity, (start, calls, alerted) of its last ``window_buckets - 1`` buckets (not
        yet in the ring): those within the window are pooled with a new bucket."""
        self.firing: set[tuple[str, str, str]] = set()

    def judge(self, start: int, kind: str, name: str, bucket: BucketCalls) -> None:
        rings, history = self.rings[kind], self.history[kind]
        entity = rings.id_of(name)
        history.ensure(len(rings.written))
        findings = self._findings(start, kind, entity, bucket)
        service = max(bucket.services, key=bucket.services.get) if bucket.services else ""
        resource = self.resource_of(name if kind == "service" else service)
        fired = {f.alert for f in findings}
        for finding in findings:
            self._emit(start, kind, name, bucket, finding, resource)
        for key in [k for k in self.firing if k[1:] == (kind, name) and k[0] not in fired]:
            self.firing.discard(key)
            self.emit(AlertEvent(
                time_unix_nano=start, kind=key[0], layer=Layer.LLMOPS, entity=Entity(kind, name),
                summary=f"{key[0].replace('_', ' ')} over", resource=resource, resolved=True,
            ))  # fmt: skip
        self._learn(start, kind, entity, bucket, anomalous=bool(findings))

    def _findings(self, start: int, kind: str, entity: int, bucket: BucketCalls) -> list[_Finding]:
        s = self.settings
        rings = self.rings[kind]
        if rings.buckets[entity] < s.warmup_buckets:
            return []
        # Sorted once for all the tests: NaN (no TTFT, unwritten) sorts last and is cut off.
        ordered = np.sort(rings.baseline(entity), axis=1)
        valid = np.count_nonzero(~np.isnan(ordered), axis=1)
        base = [ordered[f, : valid[f]] for f in range(len(FIELDS))]
        now = bucket.values
        since = start - (s.window_buckets - 1) * s.bucket_seconds * 1_000_000_000
        recent = [v for at, v, _ in self.recent.get((kind, entity), ()) if at >= since]
        window = np.concatenate([*recent, now], axis=1) if recent else now
        found: list[_Finding] = []
        if kind == "llm_model":
            for alert, at, what in _LATENCY_TESTS:
                usual = order_statistic(base[at], 0.95)
                floor = s.latency_factor * usual
                hit = usual > 0 and self._above(
                    base[at], now[at], window[at], lambda v, f=floor: _quantile(v, 0.95) >= f
                )
                if hit:
                    found.append(_Finding(alert, _quantile(now[at], 0.95), usual, what, "slow",
                                          hit))  # fmt: skip
        high = self.history[kind].high(entity)
        filled = min(int(self.history[kind].written[entity]), self.history[kind].size)
        n = bucket.calls
        for alert, at, total_at, unit, scale in _SPIKE_TESTS:
            total = float(now[at].sum())  # cost and tokens are never NaN (0 when absent)
            usual_per_call = float(base[at].mean()) if len(base[at]) else 0.0
            per_call = total / n if n else 0.0
            series = f"{unit} per bucket"
            floor = s.per_call_factor * usual_per_call
            hit = usual_per_call > 0 and self._above(
                base[at], now[at], window[at], lambda v, f=floor: _mean(v) >= f
            )
            if hit:
                found.append(_Finding(
                    alert, total / scale, usual_per_call * n / scale, series, "cost",
                    {**hit, f"{unit}_per_call": per_call / scale,
                     f"usual_{unit}_per_call": usual_per_call / scale},
                    note=f"; per call {per_call / scale:.4g} vs {usual_per_call / scale:.4g}",
                ))  # fmt: skip
            elif (
                filled >= max(s.warmup_buckets, _VOLUME_HISTORY)
                and high[total_at] > 0
                and (total > s.spike_factor * high[total_at])
            ):
                found.append(_Finding(
                    alert, total / scale, float(high[total_at]) / scale, series, "cost",
                    {"test": "volume", "usual_high_calls": float(high[0])},
                    note=f"; {n} calls, against a high of {high[0]:.3g}",
                    usually="usual daily high",
                ))  # fmt: skip
        burst = self._burst(base[_ERROR], now[_ERROR], window[_ERROR])
        if burst:
            found.append(_Finding("error_burst", float(np.nanmean(now[_ERROR])),
                                  burst.pop("usual"), "share of calls failed", "error",
                                  burst))  # fmt: skip
        return found

    def _above(self, base: np.ndarray, now: np.ndarray, window: np.ndarray,
               large: Callable[[np.ndarray], bool]) -> dict[str, object]:  # fmt: skip
        """Evidence that the bucket's calls sit above the baseline: significantly more of them
        above its 95th percentile than chance allows, either in the bucket alone or pooled
        with the buckets before it in the window, and ``large`` (the effect-size floor) for
        the bucket and for what was tested. Empty when there is none."""
        s = self.settings
        if not large(now):
            return {}
        calls = int(np.count_nonzero(~np.isnan(now)))
        if calls >= s.min_calls and (p := sorted_tail_p(base, now)) <= s.p_value:
            return {"p_value": p, "test": "per_call"}
        pooled = int(np.count_nonzero(~np.isnan(window)))
        if not (pooled > calls and pooled >= s.min_calls and large(window)):
            return {}
        # Each call is looked at in up to window_buckets tests: Bonferroni keeps the family's
        # false-alarm rate at p_value.
        if (p := sorted_tail_p(base, window)) <= s.p_value / s.window_buckets:
            return {"p_value": p, "test": "per_call_window", "window_calls": pooled}
        return {}

    def _burst(self, base: np.ndarray, now: np.ndarray, window: np.ndarray) -> dict[str, float]:
        """An error burst in the bucket alone or pooled with the window's earlier buckets:
        enough failures, a share above the floor (in the bucket too), and a significant excess
        over the baseline's error rate, its uncertainty included. Empty when there is none."""
        s = self.settings
        known = base
        usual = usual_error_rate(float(known.sum()), float(len(known)))
        floor = max(s.error_rate, 2 * usual)
        for values, test in ((now, "bucket"), (window, "window")):
            values = values[~np.isnan(values)]
            errors, calls = int(values.sum()), len(values)
            if test == "window" and (window is now or calls == len(now)):
                break
            if calls < s.min_calls or errors < s.min_errors or errors < floor * calls:
                continue
            if np.nanmean(now) < floor:
                break
            p = error_p(errors, calls, float(known.sum()), float(len(known)))
            if p <= (s.p_value if test == "bucket" else s.p_value / s.window_buckets):
                return {"p_value": p, "test": "errors" if test == "bucket" else "errors_window",
                        "errors": errors, "usual": usual,
                        **({"window_calls": calls} if test == "window" else {})}  # fmt: skip
        return {}

    def _emit(self, start: int, kind: str, name: str, bucket: BucketCalls, finding: _Finding,
              resource: dict[str, str]) -> None:  # fmt: skip
        # Plain floats: numpy scalars do not serialise into stored alerts.
        observed, expected = float(finding.observed), float(finding.expected)
        self.firing.add((finding.alert, kind, name))
        self.emit(
            AlertEvent(
                time_unix_nano=start,
                kind=finding.alert,
                layer=Layer.LLMOPS,
                entity=Entity(kind, name),
                summary=f"{finding.alert.replace('_', ' ')}: {finding.series} {observed:.4g} "
                f"({finding.usually} {expected:.4g}{finding.note})",
                severity=Severity.ERROR if finding.alert == "error_burst" else Severity.WARNING,
                score=min(1.0, observed / (observed + expected)) if expected else 1.0,
                resource=resource,
                evidence=Evidence(
                    series=finding.series,
                    observed=observed,
                    expected=expected,
                    exemplar_trace_ids=bucket.exemplars(finding.exemplar),
                    details={
                        "calls": bucket.calls,
                        "bucket_seconds": self.settings.bucket_seconds,
                        "baseline_calls": self._baseline_size(kind, name),
                        **{
                            k: float(v) if isinstance(v, np.floating) else v
                            for k, v in finding.details.items()
                        },
                    },
                ),
            )
        )

    def _baseline_size(self, kind: str, name: str) -> int:
        rings = self.rings[kind]
        return min(int(rings.written[rings.index[name]]), rings.size)

    def _learn(
        self, start: int, kind: str, entity: int, bucket: BucketCalls, anomalous: bool
    ) -> None:
        """The bucket's totals join the daily history now; its calls wait in the window
        (``window_buckets - 1`` buckets) and then join the ring, so a window is never tested
        against itself. An alerting bucket joins both at ``1/_ANOMALY_WEIGHT`` weight."""
        rings, history = self.rings[kind], self.history[kind]
        rings.buckets[entity] += 1
        # Cost and tokens are never NaN (0 when the call had none): plain sums.
        totals = (float(bucket.calls), float(bucket.values[_COST].sum()),
                  float(bucket.values[_TOKENS].sum()))  # fmt: skip
        if not anomalous:
            history.add(entity, totals)
        else:
            rings.held[entity] += 1
            if rings.held[entity] % _ANOMALY_WEIGHT == 0:
                history.add(entity, totals)
        waiting = self.recent.setdefault((kind, entity), deque())
        waiting.append((start, bucket.values, anomalous))
        while len(waiting) > max(0, self.settings.window_buckets - 1):
            _, values, was_anomalous = waiting.popleft()
            self._admit(kind, entity, values, was_anomalous)

    def _admit(self, kind: str, entity: int, values: np.ndarray, anomalous: bool) -> None:
        rings = self.rings[kind]
        limit = max(1, -(-rings.size // _HORIZON_BUCKETS))
        if not anomalous:
            rings.admit(entity, values, limit)
            return
        key = (kind, entity)
        credit = self.credit.get(key, 0.0) + min(values.shape[1], limit) / _ANOMALY_WEIGHT
        whole = int(credit)
        rings.admit(entity, values, whole)
        self.credit[key] = credit - whole
