"""Bounded-memory summaries of one column: never the raw values.

:class:`NumericSketch` is a compiled t-digest (``fastdigest``) with exact count, mean, variance,
minimum and maximum beside it, and the exact value counts while the column has at most
:data:`SMALL_DISTINCT` distinct values (Evidently switches tests on such small counts, and a
binary or low-cardinality numeric column is then summarised without any error).
:class:`CategoricalSketch` counts categories up to a capacity; categories beyond it share one
``__other__`` bucket.

Both are updated a batch at a time (numpy / Arrow arrays) and merge, so a sliding window is the
merge of its slots.
"""

from __future__ import annotations

import base64
import math
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from fastdigest import TDigest

__all__ = ["OTHER", "SMALL_DISTINCT", "CategoricalSketch", "NumericSketch", "Sketch"]

SMALL_DISTINCT = 21
"""Exact value counts are kept while a numeric column has at most this many distinct values:
Evidently looks at ``nunique <= 5`` (test choice) and ``nunique > 20`` (binning)."""

OTHER = "__other__"


class NumericSketch:
    """A t-digest of the values, exact moments and extremes, exact counts while few distinct."""

    kind = "numerical"
    __slots__ = ("centroids", "digest", "hi", "lo", "m2", "mean", "n", "small")

    def __init__(self, centroids: int = 100) -> None:
        self.centroids = centroids
        self.digest = TDigest(max_centroids=centroids)
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.lo = math.inf
        self.hi = -math.inf
        self.small: dict[float, int] | None = {}

    def update(self, values: np.ndarray) -> None:
        """Add a batch of values (float64; NaN and infinities are skipped as missing)."""
        values = values[np.isfinite(values)]
        count = values.size
        if count == 0:
            return
        self.digest.batch_update(values)
        mean = float(values.mean())
        m2 = float(((values - mean) ** 2).sum())
        self._combine(count, mean, m2, float(values.min()), float(values.max()))
        if self.small is not None:
            keys, counts = np.unique(values, return_counts=True)
            self._add_small(keys.tolist(), counts.tolist())

    def _combine(self, count: int, mean: float, m2: float, lo: float, hi: float) -> None:
        # Chan et al.'s parallel variance: exact moments of the union.
        total = self.n + count
        delta = mean - self.mean
        self.mean += delta * count / total
        self.m2 += m2 + delta * delta * self.n * count / total
        self.n = total
        self.lo = min(self.lo, lo)
        self.hi = max(self.hi, hi)

    def _add_small(self, keys: list[float], counts: list[int]) -> None:
        small = self.small
        if small is None:
            return
        if len(keys) > SMALL_DISTINCT:
            self.small = None
            return
        for key, count in zip(keys, counts, strict=True):
            small[key] = small.get(key, 0) + count
        if len(small) > SMALL_DISTINCT:
            self.small = None

    def merge(self, other: NumericSketch) -> NumericSketch:
        """A new sketch of both (``other``'s centroid budget if larger)."""
        out = NumericSketch(max(self.centroids, other.centroids))
        out.absorb(self)
        out.absorb(other)
        return out

    def absorb(self, other: NumericSketch) -> None:
        """Add ``other`` into this sketch."""
        if other.n == 0:
            return
        if self.n == 0:
            self.digest = other.digest.copy()
        else:
            self.digest.merge_inplace(other.digest)
        small = None if other.small is None else dict(other.small)
        self._combine(other.n, other.mean, other.m2, other.lo, other.hi)
        if small is None:
            self.small = None
        else:
            self._add_small(list(small), list(small.values()))

    # -- reading -------------------------------------------------------------------------------

    @property
    def std(self) -> float:
        """Population standard deviation (``np.std``, ddof 0), exact."""
        return math.sqrt(self.m2 / self.n) if self.n else 0.0

    def cdf(self, x: np.ndarray) -> np.ndarray:
        """Share of values <= x: exact while the distinct values are few, else the digest's."""
        if self.small is not None:
            keys = np.array(sorted(self.small))
            cum = np.cumsum([self.small[k] for k in keys]) / self.n
            idx = np.searchsorted(keys, x, side="right") - 1
            return np.where(idx >= 0, cum[np.clip(idx, 0, None)], 0.0)
        out = np.asarray(self.digest.cdf_vec(np.asarray(x, dtype=np.float64)))
        return np.where(x < self.lo, 0.0, np.where(x >= self.hi, 1.0, out))

    def breakpoints(self) -> np.ndarray:
        """Where the estimated distribution function bends or jumps."""
        if self.small is not None:
            return np.array(sorted(self.small), dtype=np.float64)
        means = np.array([c[0] for c in self.digest.centroids], dtype=np.float64)
        return np.concatenate(([self.lo], means, [self.hi]))

    def rank_error(self) -> float:
        """Bound on |estimated - true| distribution function: 0 when exact; otherwise the
        largest mass of two neighbouring centroids (a point between two centroid means has its
        true rank somewhere inside their combined mass)."""
        if self.small is not None or self.n == 0:
            return 0.0
        weights = np.array([c[1] for c in self.digest.centroids], dtype=np.float64)
        if weights.size < 2:
            return float(weights.sum()) / self.n
        return float((weights[1:] + weights[:-1]).max()) / self.n

    def quantile_spread(self) -> float:
        """Bound on the integral of |estimated - true| quantile function (for Wasserstein):
        each centroid's values lie between its neighbours' means."""
        if self.small is not None or self.n == 0:
            return 0.0
        cents = self.digest.centroids
        means = np.concatenate(([self.lo], [c[0] for c in cents], [self.hi]))
        weights = np.array([c[1] for c in cents], dtype=np.float64)
        return float((weights / self.n * (means[2:] - means[:-2])).sum())

    def state_bytes(self) -> int:
        """Bytes this sketch holds: centroids (16 each), moments, and the small counts."""
        small = 0 if self.small is None else 16 * len(self.small)
        return 16 * self.digest.n_centroids + 48 + small

    def to_state(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "centroids": self.centroids,
            "digest": base64.b64encode(self.digest.to_bytes()).decode("ascii"),
            "n": self.n,
            "mean": self.mean,
            "m2": self.m2,
            "lo": self.lo if self.n else None,
            "hi": self.hi if self.n else None,
            "small": None if self.small is None else [[k, v] for k, v in self.small.items()],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> NumericSketch:
        out = cls(int(state["centroids"]))
        out.digest = TDigest.from_bytes(base64.b64decode(state["digest"]))
        out.n = int(state["n"])
        out.mean = float(state["mean"])
        out.m2 = float(state["m2"])
        out.lo = math.inf if state["lo"] is None else float(state["lo"])
        out.hi = -math.inf if state["hi"] is None else float(state["hi"])
        out.small = (
            None if state["small"] is None else {float(k): int(v) for k, v in state["small"]}
        )
        return out


class CategoricalSketch:
    """Counts per category, at most ``capacity`` categories plus :data:`OTHER`."""

    kind = "categorical"
    __slots__ = ("capacity", "counts", "n")

    def __init__(self, capacity: int = 100) -> None:
        self.capacity = capacity
        self.counts: dict[str, int] = {}
        self.n = 0

    def update(self, values: pa.Array) -> None:
        """Add a batch of category values (strings; nulls and empty strings are missing)."""
        values = values.drop_null()
        if len(values) == 0:
            return
        counted = pc.value_counts(values)
        keys = counted.field("values").to_pylist()
        counts = counted.field("counts").to_pylist()
        self._add(keys, counts)

    def _add(self, keys: list[str], counts: list[int]) -> None:
        table = self.counts
        for key, count in zip(keys, counts, strict=True):
            if key == "":
                continue
            if key not in table and len(table) >= self.capacity:
                key = OTHER
            table[key] = table.get(key, 0) + count
            self.n += count

    def merge(self, other: CategoricalSketch) -> CategoricalSketch:
        out = CategoricalSketch(max(self.capacity, other.capacity))
        out.absorb(self)
        out.absorb(other)
        return out

    def absorb(self, other: CategoricalSketch) -> None:
        self._add(list(other.counts), list(other.counts.values()))

    def state_bytes(self) -> int:
        return sum(16 + len(k) for k in self.counts) + 16

    def to_state(self) -> dict[str, Any]:
        return {"kind": self.kind, "capacity": self.capacity, "counts": self.counts, "n": self.n}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> CategoricalSketch:
        out = cls(int(state["capacity"]))
        out.counts = {str(k): int(v) for k, v in state["counts"].items()}
        out.n = int(state["n"])
        return out


Sketch = NumericSketch | CategoricalSketch


def sketch_from_state(state: dict[str, Any]) -> Sketch:
    if state["kind"] == NumericSketch.kind:
        return NumericSketch.from_state(state)
    return CategoricalSketch.from_state(state)
