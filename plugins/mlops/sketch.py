"""Bounded-memory summaries of one column: never the raw values.

:class:`NumericSketch` keeps exact value counts while the column has at most
:data:`SMALL_DISTINCT` distinct values (flags, counts, ratings, ages, hours: summarised without
any error, ties and all), and a compiled t-digest (``fastdigest``) once it has more; exact count,
mean, variance, minimum and maximum beside either.
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

SMALL_DISTINCT = 128
"""Exact value counts are kept, instead of a digest, while a numeric column has at most this many
distinct values: counts, flags, ratings, ages, hours are then summarised without error (and
Evidently's ``nunique <= 5`` test choice and ``nunique > 20`` binning see exact counts)."""

HEAVY_MAX = 8
HEAVY_SHARE = 0.01
OTHER = "__other__"


class NumericSketch:
    """Exact counts while few distinct values; then a t-digest for the continuous part and
    exact counts of the point masses (values holding >= 1 % of the rows when the digest
    started, at most :data:`HEAVY_MAX` of them: the zeros of a zero-inflated column, a default
    value). Exact moments and extremes beside either."""

    kind = "numerical"
    __slots__ = ("_d", "_packed", "centroids", "heavy", "hi", "lo", "m2", "mean", "n", "small")

    def __init__(self, centroids: int = 100) -> None:
        self.centroids = centroids
        self._d: TDigest | None = None
        self._packed: bytes | None = None
        self.heavy: dict[float, int] = {}
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.lo = math.inf
        self.hi = -math.inf
        self.small: dict[float, int] | None = {}

    @property
    def digest(self) -> TDigest | None:
        """The t-digest (None while the counts are exact), unpacked on first use."""
        if self._d is None and self._packed is not None:
            self._d = TDigest.from_bytes(self._packed)
            self._packed = None
        return self._d

    @digest.setter
    def digest(self, value: TDigest | None) -> None:
        self._d, self._packed = value, None

    def _peek(self) -> TDigest | None:
        """The digest for reading, without keeping it unpacked."""
        if self._d is None and self._packed is not None:
            return TDigest.from_bytes(self._packed)
        return self._d

    def pack(self) -> None:
        """Hold the digest as bytes until it is next used: a live ``TDigest`` object costs
        about 4 KB beyond its centroids, and ``batch_update`` keeps its batch buffer."""
        if self._d is not None:
            self._packed = self._d.to_bytes()
            self._d = None

    def update(self, values: np.ndarray) -> None:
        """Add a batch of values (float64; NaN and infinities are skipped as missing)."""
        values = values[np.isfinite(values)]
        count = values.size
        if count == 0:
            return
        mean = float(values.mean())
        m2 = float(((values - mean) ** 2).sum())
        self._combine(count, mean, m2, float(values.min()), float(values.max()))
        if self.small is not None:
            keys, counts = np.unique(values, return_counts=True)
            if keys.size > SMALL_DISTINCT:  # many values at once: no dict of them
                self._to_digest(keys, counts)
                return
            small = self.small
            for key, n in zip(keys.tolist(), counts.tolist(), strict=True):
                small[key] = small.get(key, 0) + n
            if len(small) > SMALL_DISTINCT:
                self._to_digest()
            return
        self._digest_update(values)

    def _digest_update(self, values: np.ndarray) -> None:
        assert self.digest is not None
        if self.heavy:
            keys = np.fromiter(self.heavy, dtype=np.float64, count=len(self.heavy))
            mask = np.isin(values, keys)
            if mask.any():
                found, counts = np.unique(values[mask], return_counts=True)
                for key, n in zip(found.tolist(), counts.tolist(), strict=True):
                    self.heavy[key] += n
                values = values[~mask]
        if values.size:
            self.digest.batch_update(values)

    def _combine(self, count: int, mean: float, m2: float, lo: float, hi: float) -> None:
        # Chan et al.'s parallel variance: exact moments of the union.
        total = self.n + count
        delta = mean - self.mean
        self.mean += delta * count / total
        self.m2 += m2 + delta * delta * self.n * count / total
        self.n = total
        self.lo = min(self.lo, lo)
        self.hi = max(self.hi, hi)

    def _to_digest(self, keys: np.ndarray | None = None, counts: np.ndarray | None = None) -> None:
        """Too many distinct values: the point masses stay counted, the rest starts the digest
        (``keys``/``counts``: a batch's distinct values, added to the exact counts so far)."""
        small = self.small or {}
        self.small = None
        old_keys = np.fromiter(small.keys(), dtype=np.float64, count=len(small))
        old_counts = np.fromiter(small.values(), dtype=np.float64, count=len(small))
        if keys is not None and counts is not None and not small:
            all_keys, all_counts = keys, counts.astype(np.float64)
        elif keys is not None and counts is not None:
            all_keys, inverse = np.unique(np.concatenate((old_keys, keys)), return_inverse=True)
            all_counts = np.zeros(all_keys.size)
            np.add.at(all_counts, inverse, np.concatenate((old_counts, counts)))
        else:
            all_keys, all_counts = old_keys, old_counts
        total = all_counts.sum()
        top = np.argsort(-all_counts, kind="stable")[:HEAVY_MAX]
        top = top[all_counts[top] >= HEAVY_SHARE * total]
        self.heavy = {float(all_keys[i]): int(all_counts[i]) for i in top}
        rest = np.ones(all_keys.size, dtype=bool)
        rest[top] = False
        if rest.any():
            self.digest = TDigest.from_values(
                all_keys[rest], w=all_counts[rest], max_centroids=self.centroids
            )
        else:
            self.digest = TDigest(max_centroids=self.centroids)

    def merge(self, other: NumericSketch) -> NumericSketch:
        """A new sketch of both (the larger centroid budget)."""
        out = NumericSketch(max(self.centroids, other.centroids))
        out.absorb(self)
        out.absorb(other)
        return out

    def absorb(self, other: NumericSketch) -> None:
        """Add ``other`` into this sketch."""
        if other.n == 0:
            return
        self._combine(other.n, other.mean, other.m2, other.lo, other.hi)
        if other.small is not None and self.small is not None:
            for key, n in other.small.items():
                self.small[key] = self.small.get(key, 0) + n
            if len(self.small) > SMALL_DISTINCT:
                self._to_digest()
            return
        if self.small is not None:
            self._to_digest()
        assert self.digest is not None
        if other.small is not None:
            # Its values: point masses this sketch counts are added to them, the rest digested.
            rest = []
            for key, n in other.small.items():
                if key in self.heavy:
                    self.heavy[key] += n
                else:
                    rest.append((key, n))
            if rest:
                self.digest.merge_inplace(_weighted_digest(rest, self.centroids))
            return
        other_digest = other._peek()
        assert other_digest is not None
        for key, n in other.heavy.items():
            self.heavy[key] = self.heavy.get(key, 0) + n
        self.digest.merge_inplace(other_digest)

    # -- reading -------------------------------------------------------------------------------

    @property
    def std(self) -> float:
        """Population standard deviation (``np.std``, ddof 0), exact."""
        return math.sqrt(self.m2 / self.n) if self.n else 0.0

    def _centroids(self) -> tuple[np.ndarray, np.ndarray]:
        digest = self._peek()
        assert digest is not None
        cents = np.array(digest.centroids, dtype=np.float64).reshape(-1, 2)
        return cents[:, 0], cents[:, 1]

    def cdf(self, x: np.ndarray) -> np.ndarray:
        """Share of values <= x: exact while the distinct values are few; else the counted
        point masses plus the digest's estimate for the rest."""
        x = np.asarray(x, dtype=np.float64)
        if self.small is not None:
            return _step_cdf(self.small, x, self.n)
        digest = self._peek()
        assert digest is not None
        heavy_n = sum(self.heavy.values())
        rest_n = self.n - heavy_n
        out = np.zeros(x.shape)
        if rest_n > 0 and digest.n_centroids:
            lo, hi = digest.min(), digest.max()
            est = np.asarray(digest.cdf_vec(x))
            out += np.where(x < lo, 0.0, np.where(x >= hi, 1.0, est)) * rest_n
        if heavy_n:
            out += _step_cdf(self.heavy, x, 1)
        return out / self.n

    def breakpoints(self) -> np.ndarray:
        """Where the estimated distribution function bends or jumps."""
        if self.small is not None:
            return np.array(sorted(self.small), dtype=np.float64)
        means, _ = self._centroids()
        heavy = np.fromiter(self.heavy, dtype=np.float64, count=len(self.heavy))
        return np.unique(np.concatenate(([self.lo], means, heavy, [self.hi])))

    def rank_error(self) -> float:
        """Bound on |estimated - true| distribution function: 0 when exact; otherwise the
        largest mass of two neighbouring centroids (a point between two centroid means has its
        true rank somewhere inside their combined mass; point masses are exact)."""
        if self.small is not None or self.n == 0:
            return 0.0
        _, weights = self._centroids()
        if weights.size < 2:
            return float(weights.sum()) / self.n
        return float((weights[1:] + weights[:-1]).max()) / self.n

    def quantile_spread(self) -> float:
        """Bound on the integral of |estimated - true| quantile function (for Wasserstein):
        each centroid's values lie between its neighbours' means."""
        if self.small is not None or self.n == 0:
            return 0.0
        means, weights = self._centroids()
        if weights.size == 0:
            return 0.0
        means = np.concatenate(([self.lo], means, [self.hi]))
        return float((weights / self.n * (means[2:] - means[:-2])).sum())

    def state_bytes(self) -> int:
        """Bytes of summary held: 16 per centroid, exact value or point mass, plus moments."""
        if self.small is not None:
            return 16 * len(self.small) + 48
        digest = len(self._packed) if self._packed is not None else 0
        if self._d is not None:
            digest = 16 * self._d.n_centroids
        return digest + 16 * len(self.heavy) + 48

    def to_state(self) -> dict[str, Any]:
        self.pack()
        packed = self._packed
        return {
            "kind": self.kind,
            "centroids": self.centroids,
            "digest": None if packed is None else base64.b64encode(packed).decode(),
            "heavy": [[k, v] for k, v in self.heavy.items()],
            "n": self.n,
            "mean": self.mean,
            "m2": self.m2,
            "lo": self.lo if self.n else None,
            "hi": self.hi if self.n else None,
            # Values and counts as two lists, not pairs: building a pair per value was most of
            # a periodic save's time (thousands of window slots of a few dozen values each).
            "small_values": None if self.small is None else list(self.small),
            "small_counts": None if self.small is None else list(self.small.values()),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> NumericSketch:
        out = cls(int(state["centroids"]))
        if state["digest"] is not None:
            out._packed = base64.b64decode(state["digest"])
        out.heavy = {float(k): int(v) for k, v in state.get("heavy", [])}
        out.n = int(state["n"])
        out.mean = float(state["mean"])
        out.m2 = float(state["m2"])
        out.lo = math.inf if state["lo"] is None else float(state["lo"])
        out.hi = -math.inf if state["hi"] is None else float(state["hi"])
        if "small_values" in state:
            values, counts = state["small_values"], state["small_counts"]
            if values is None:
                out.small = None
            else:
                out.small = dict(zip(map(float, values), counts, strict=True))
        else:  # saved as pairs before
            small = state["small"]
            out.small = None if small is None else {float(k): int(v) for k, v in small}
        return out


def _weighted_digest(pairs: list[tuple[float, int]], centroids: int) -> TDigest:
    if not pairs:
        return TDigest(max_centroids=centroids)
    keys = np.array([k for k, _ in pairs], dtype=np.float64)
    weights = np.array([c for _, c in pairs], dtype=np.float64)
    return TDigest.from_values(keys, w=weights, max_centroids=centroids)


def _step_cdf(counts: dict[float, int], x: np.ndarray, n: int) -> np.ndarray:
    """The exact distribution function of counted values at ``x`` (divided by ``n``)."""
    keys = np.array(sorted(counts), dtype=np.float64)
    cum = np.cumsum([counts[k] for k in keys]) / n
    idx = np.searchsorted(keys, x, side="right") - 1
    return np.where(idx >= 0, cum[np.clip(idx, 0, None)], 0.0)


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

    def pack(self) -> None:
        """Nothing to pack: counts are plain."""

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
