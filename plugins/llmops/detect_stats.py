"""The statistics behind the LLM-call alerts, and the per-entity state they need, in numpy arrays.

Every test asks one question of one event-time bucket of an entity's calls: could these calls
have come from the same distribution as the entity's recent calls? The answers are exact for
small samples, so a bucket with few calls is weak evidence and does not alert by itself:

- :func:`upper_tail_p` — of ``n`` bucket calls, ``k`` lie above the baseline's 95th percentile.
  If bucket and baseline calls are exchangeable (no change), the share of the population above
  the ``m``-th largest of ``N`` baseline values is Beta(m + 1, N - m) distributed, so ``k`` is
  beta-binomial: P(K ≥ k) is exact whatever the distribution of the values (latencies, costs,
  tokens) and whatever ``N``; a short baseline widens it by itself.
- :func:`error_p` — ``k`` failed calls of ``n``, against the baseline's ``e`` failures in ``N``
  calls with a weak prior (mean 1 %, worth 50 calls): the beta-binomial predictive tail.

:class:`CallRings` keeps each entity's last calls (a ring per entity of per-call values);
:class:`BucketHistory` keeps each entity's per-bucket totals over the last day, for volume.
"""

from __future__ import annotations

import numpy as np
from scipy.special import betaln, gammaln

__all__ = [
    "FIELDS",
    "BucketHistory",
    "CallRings",
    "betabinom_sf",
    "error_p",
    "order_statistic",
    "sorted_tail_p",
    "upper_tail_p",
    "usual_error_rate",
]

FIELDS = ("duration", "ttft", "cost", "tokens", "error")
"""Per-call values a ring keeps, in this order (``ttft`` NaN when the call had none)."""
TOTALS = ("calls", "cost", "tokens")
"""Per-bucket totals a history keeps, in this order."""
_HIGH_EVERY = 10

_ERROR_PRIOR = (0.5, 49.5)
"""Beta prior of an entity's error rate: mean 1 %, as much weight as 50 calls. It keeps a
baseline without failures from claiming a zero error rate; any real baseline outweighs it."""


def betabinom_sf(k: int, n: int, a: float, b: float) -> float:
    """P(K >= k) for K beta-binomial(n, a, b): the terms summed in log space (about a third of the
    cost of ``scipy.stats.betabinom.sf``, which is called per entity and bucket)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    j = np.arange(k, n + 1)
    log_terms = (gammaln(n + 1) - gammaln(j + 1) - gammaln(n - j + 1)
                 + betaln(j + a, n - j + b) - betaln(a, b))  # fmt: skip
    return float(min(1.0, np.exp(log_terms).sum()))


def upper_tail_p(baseline: np.ndarray, bucket: np.ndarray, level: float = 0.95) -> float:
    """P(at least as many of ``bucket`` above the baseline's ``level`` quantile) if nothing
    changed. NaN values are ignored; 1.0 when either side is empty."""
    return sorted_tail_p(np.sort(baseline[~np.isnan(baseline)]), bucket, level)


def order_statistic(ordered: np.ndarray, level: float = 0.95) -> float:
    """The ``level`` quantile of sorted values as one of them (``method="higher"``)."""
    return float(ordered[int(np.ceil(level * (len(ordered) - 1)))]) if len(ordered) else 0.0


def sorted_tail_p(ordered: np.ndarray, bucket: np.ndarray, level: float = 0.95) -> float:
    """:func:`upper_tail_p` with the baseline already sorted, without NaN (an entity's
    baseline is sorted once per bucket for all its tests)."""
    bucket = bucket[~np.isnan(bucket)]
    if len(ordered) == 0 or len(bucket) == 0:
        return 1.0
    # An order statistic, so the Beta law of the share above it holds; ties with it count as
    # not above, on both sides, which only makes the test more cautious.
    threshold = order_statistic(ordered, level)
    above_base = len(ordered) - int(np.searchsorted(ordered, threshold, side="right"))
    above = int(np.count_nonzero(bucket > threshold))
    if above == 0:
        return 1.0
    return betabinom_sf(above, len(bucket), above_base + 1, len(ordered) - above_base)


def usual_error_rate(base_errors: float, base_calls: float) -> float:
    """The baseline's error rate, its prior included (the mean of the Beta posterior)."""
    a, b = _ERROR_PRIOR
    return (a + base_errors) / (a + b + base_calls)


def error_p(errors: int, calls: int, base_errors: float, base_calls: float) -> float:
    """P(at least ``errors`` failures in ``calls``) at the baseline's error rate, its
    uncertainty included."""
    if errors == 0:
        return 1.0
    a = _ERROR_PRIOR[0] + base_errors
    b = _ERROR_PRIOR[1] + base_calls - base_errors
    return betabinom_sf(errors, calls, a, b)


def _grow(array: np.ndarray, axis: int, fill: float) -> np.ndarray:
    shape = list(array.shape)
    shape[axis] = max(16, shape[axis])
    return np.concatenate([array, np.full(shape, fill, dtype=array.dtype)], axis=axis)


class CallRings:
    """The last ``size`` admitted calls of each entity: ``values[field, entity, slot]``, NaN in
    slots not yet written. Entities get an index when first seen; arrays grow by doubling."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.index: dict[str, int] = {}
        self.values = np.full((len(FIELDS), 0, size), np.nan, dtype=np.float32)
        self.written = np.zeros(0, dtype=np.int64)
        self.buckets = np.zeros(0, dtype=np.int64)
        """Buckets judged per entity (warm-up)."""
        self.held = np.zeros(0, dtype=np.int64)
        """Anomalous buckets per entity since the last one admitted in full (see ``admit``)."""

    def id_of(self, name: str) -> int:
        entity = self.index.get(name)
        if entity is None:
            entity = self.index[name] = len(self.index)
            if entity >= len(self.written):
                self.values = _grow(self.values, 1, np.nan)
                self.written = _grow(self.written, 0, 0)
                self.buckets = _grow(self.buckets, 0, 0)
                self.held = _grow(self.held, 0, 0)
        return entity

    def baseline(self, entity: int) -> np.ndarray:
        """``(len(FIELDS), filled)``: the entity's kept calls, in no particular order."""
        filled = min(int(self.written[entity]), self.size)
        return self.values[:, entity, :filled]

    def admit(self, entity: int, calls: np.ndarray, limit: int) -> None:
        """Write up to ``limit`` of ``calls`` (``(len(FIELDS), n)``), spread evenly over them,
        into the entity's ring, over its oldest."""
        n = calls.shape[1]
        if n == 0 or limit <= 0:
            return
        if n > limit:
            stride = -(-n // limit)
            calls = calls[:, int(self.written[entity]) % stride :: stride][:, :limit]
            n = calls.shape[1]
        slots = (int(self.written[entity]) + np.arange(n)) % self.size
        self.values[:, entity, slots] = calls
        self.written[entity] += n


class BucketHistory:
    """Per-bucket totals of each entity over the last ``size`` buckets in which it had calls:
    ``values[total, entity, slot]``, NaN in slots not yet written."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.values = np.full((len(TOTALS), 0, size), np.nan, dtype=np.float32)
        self.written = np.zeros(0, dtype=np.int64)
        self.cache: dict[int, tuple[int, np.ndarray]] = {}

    def ensure(self, entities: int) -> None:
        while len(self.written) < entities:
            self.values = _grow(self.values, 1, np.nan)
            self.written = _grow(self.written, 0, 0)

    def high(self, entity: int, level: float = 0.99) -> np.ndarray:
        """Each total's ``level`` quantile over the kept buckets (NaN when none are); cached,
        recomputed every ``_HIGH_EVERY`` buckets added (a day's high moves slowly)."""
        written = int(self.written[entity])
        cached = self.cache.get(entity)
        if cached is not None and written - cached[0] < _HIGH_EVERY:
            return cached[1]
        filled = min(written, self.size)
        if filled == 0:
            return np.full(len(TOTALS), np.nan)
        high = np.quantile(self.values[:, entity, :filled], level, axis=1)
        self.cache[entity] = (written, high)
        return high

    def add(self, entity: int, totals: tuple[float, float, float]) -> None:
        self.values[:, entity, int(self.written[entity]) % self.size] = totals
        self.written[entity] += 1
