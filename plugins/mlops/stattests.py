"""Drift tests on sketches, chosen and thresholded as Evidently chooses them.

Evidently's default (``get_stattest`` without a test named), for a reference of ``n_ref`` rows
and ``n_unique`` distinct values over reference and current together:

=====================  ==========================  ==========================
                       reference <= 1000 rows      reference > 1000 rows
=====================  ==========================  ==========================
numerical, n_unique>5  Kolmogorov-Smirnov (p)      Wasserstein, normed (d)
numerical, n_unique<=5 chi-squared (p); Z if <= 2  Jensen-Shannon (d)
categorical            chi-squared (p); Z if <= 2  Jensen-Shannon (d)
=====================  ==========================  ==========================

p-value tests drift below 0.05 (KS at or below), distances at or above 0.1; PSI (on request)
at or above 0.1. Binned tests follow Evidently's ``get_binned_data``: Sturges bins over the
combined range when the reference has more than 20 distinct values, value counts otherwise.

Categorical counts and numeric columns with few distinct values are exact, so those statistics
equal Evidently's. For numeric columns the distribution functions come from the t-digests;
every result carries ``error_bound``, a bound on |sketch statistic - exact statistic| for KS
and Wasserstein (see :meth:`NumericSketch.rank_error`), 0 when exact.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats
from scipy.spatial import distance

from opstrata.plugins.mlops.sketch import CategoricalSketch, NumericSketch, Sketch

__all__ = ["DEFAULT_THRESHOLDS", "TESTS", "TestResult", "choose_test", "drift_test", "n_unique"]

DEFAULT_THRESHOLDS = {
    "ks": 0.05,
    "chisquare": 0.05,
    "z": 0.05,
    "wasserstein": 0.1,
    "jensenshannon": 0.1,
    "psi": 0.1,
}
TESTS = tuple(DEFAULT_THRESHOLDS)
_P_TESTS = frozenset({"ks", "chisquare", "z"})


@dataclass(frozen=True, slots=True)
class TestResult:
    test: str
    statistic: float
    """KS D, chi-squared, Z, or the distance itself for distance tests."""
    p_value: float | None
    distance: float | None
    threshold: float
    drifted: bool
    error_bound: float = 0.0

    @property
    def score(self) -> float:
        """Evidently's drift score: the p-value of p-value tests, the distance otherwise."""
        return self.p_value if self.p_value is not None else float(self.distance or 0.0)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def n_unique(ref: Sketch, cur: Sketch) -> int:
    """Distinct values over both, exact up to :data:`SMALL_DISTINCT` (then a larger number)."""
    if isinstance(ref, CategoricalSketch) and isinstance(cur, CategoricalSketch):
        return len(set(ref.counts) | set(cur.counts))
    assert isinstance(ref, NumericSketch) and isinstance(cur, NumericSketch)
    if ref.small is None or cur.small is None:
        return 1_000_000
    return len(set(ref.small) | set(cur.small))


def choose_test(ref: Sketch, cur: Sketch) -> str:
    """Evidently's default test for this column (``_get_default_stattest``)."""
    values = n_unique(ref, cur)
    numerical = isinstance(ref, NumericSketch)
    if ref.n <= 1000:
        if numerical and values > 5:
            return "ks"
        return "chisquare" if values > 2 else "z"
    if numerical and values > 5:
        return "wasserstein"
    return "jensenshannon"


def drift_test(
    ref: Sketch, cur: Sketch, test: str = "", threshold: float | None = None
) -> TestResult:
    """Run ``test`` (Evidently's default choice when empty) on the two sketches."""
    test = test or choose_test(ref, cur)
    limit = DEFAULT_THRESHOLDS[test] if threshold is None else threshold
    if test == "ks":
        return _ks(_numeric(ref), _numeric(cur), limit)
    if test == "wasserstein":
        return _wasserstein(_numeric(ref), _numeric(cur), limit)
    if test in ("chisquare", "z"):
        ref_counts, cur_counts = _counts(ref), _counts(cur)
        if test == "z":
            return _z(ref_counts, cur_counts, limit)
        return _chisquare(ref_counts, cur_counts, limit)
    ref_p, cur_p = _binned(ref, cur)
    if test == "jensenshannon":
        value = float(distance.jensenshannon(ref_p, cur_p))
        return TestResult(test, value, None, value, limit, value >= limit)
    if test == "psi":
        ref_p, cur_p = _fill_zeroes(ref_p), _fill_zeroes(cur_p)
        value = float(np.sum((ref_p - cur_p) * np.log(ref_p / cur_p)))
        return TestResult(test, value, None, value, limit, value >= limit)
    raise ValueError(f"unknown drift test {test!r}; known: {', '.join(TESTS)}")


def _numeric(sketch: Sketch) -> NumericSketch:
    if not isinstance(sketch, NumericSketch):
        raise ValueError("this test needs a numerical column")
    return sketch


# -- numeric tests ------------------------------------------------------------------------------


def _grid(ref: NumericSketch, cur: NumericSketch) -> np.ndarray:
    """Every breakpoint of both estimated distribution functions, plus midpoints."""
    points = np.unique(np.concatenate((ref.breakpoints(), cur.breakpoints())))
    if ref.small is not None and cur.small is not None:
        return points  # step functions: their jumps are all there is
    mids = (points[1:] + points[:-1]) / 2
    return np.unique(np.concatenate((points, mids)))


def ks_p_value(d: float, n1: int, n2: int) -> float:
    """Two-sided two-sample KS p-value exactly as ``scipy.stats.ks_2samp(method='auto')``."""
    if max(n1, n2) <= 10_000:
        exact = getattr(stats._stats_py, "_attempt_exact_2kssamp", None)
        if exact is not None:
            ok, _, prob = exact(n1, n2, math.gcd(n1, n2), d, "two-sided")
            if ok:
                return float(np.clip(prob, 0, 1))
    m, n = sorted([float(n1), float(n2)], reverse=True)
    return float(np.clip(stats.kstwo.sf(d, np.round(m * n / (m + n))), 0, 1))


def ks_statistic(ref: NumericSketch, cur: NumericSketch) -> float:
    grid = _grid(ref, cur)
    return float(np.max(np.abs(ref.cdf(grid) - cur.cdf(grid)))) if grid.size else 0.0


def _ks(ref: NumericSketch, cur: NumericSketch, limit: float) -> TestResult:
    d = ks_statistic(ref, cur)
    p = ks_p_value(d, ref.n, cur.n)
    bound = ref.rank_error() + cur.rank_error()
    return TestResult("ks", d, p, None, limit, p <= limit, bound)


def wasserstein(ref: NumericSketch, cur: NumericSketch) -> float:
    """First Wasserstein distance: the integral of |F_ref - F_cur| (not normed)."""
    grid = _grid(ref, cur)
    if grid.size < 2:
        return 0.0
    mids = (grid[1:] + grid[:-1]) / 2
    return float(np.sum(np.abs(ref.cdf(mids) - cur.cdf(mids)) * np.diff(grid)))


def _wasserstein(ref: NumericSketch, cur: NumericSketch, limit: float) -> TestResult:
    norm = max(ref.std, 0.001)
    value = wasserstein(ref, cur) / norm
    bound = (ref.quantile_spread() + cur.quantile_spread()) / norm
    return TestResult("wasserstein", value, None, value, limit, value >= limit, bound)


# -- tests on counts ----------------------------------------------------------------------------


def _counts(sketch: Sketch) -> dict[object, int]:
    if isinstance(sketch, CategoricalSketch):
        return dict(sketch.counts)
    if sketch.small is None:
        raise ValueError("counts of a numerical column with many distinct values")
    return dict(sketch.small)


def _chisquare(ref: dict[object, int], cur: dict[object, int], limit: float) -> TestResult:
    keys = list(set(ref) | set(cur))
    n_ref, n_cur = sum(ref.values()), sum(cur.values())
    f_exp = np.array([ref.get(k, 0) * n_cur / n_ref for k in keys])
    f_obs = np.array([cur.get(k, 0) for k in keys], dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        statistic, p = stats.chisquare(f_obs, f_exp)
    p = float(p)
    return TestResult("chisquare", float(statistic), p, None, limit, p < limit)


def _z(ref: dict[object, int], cur: dict[object, int], limit: float) -> TestResult:
    if len(ref) == 1 and len(cur) == 1 and set(ref) == set(cur):
        return TestResult("z", 0.0, 1.0, None, limit, False)
    first = sorted(set(ref) | set(cur))[0]
    n1, n2 = sum(ref.values()), sum(cur.values())
    p1 = (n1 - ref.get(first, 0)) / n1
    p2 = (n2 - cur.get(first, 0)) / n2
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1.0 / n1 + 1.0 / n2))
    p = float(2 * (1 - stats.norm.cdf(np.abs(z))))
    return TestResult("z", float(z), p, None, limit, p < limit)


def _binned(ref: Sketch, cur: Sketch) -> tuple[np.ndarray, np.ndarray]:
    """Evidently's ``get_binned_data``: shares per Sturges bin, or per value."""
    many = isinstance(ref, NumericSketch) and (ref.small is None or len(ref.small) > 20)
    if many and isinstance(ref, NumericSketch) and isinstance(cur, NumericSketch):
        bins = math.ceil(math.log2(ref.n + cur.n) + 1.0)
        lo, hi = min(ref.lo, cur.lo), max(ref.hi, cur.hi)
        if hi <= lo:
            return np.ones(1), np.ones(1)
        inner = np.linspace(lo, hi, bins + 1)[1:-1]
        return _bin_shares(ref, inner), _bin_shares(cur, inner)
    ref_counts = _value_counts(ref)
    cur_counts = _value_counts(cur)
    keys = list(set(ref_counts) | set(cur_counts))
    ref_p = np.array([ref_counts.get(k, 0) / ref.n for k in keys])
    cur_p = np.array([cur_counts.get(k, 0) / cur.n for k in keys])
    return ref_p, cur_p


def _value_counts(sketch: Sketch) -> dict[object, int]:
    if isinstance(sketch, CategoricalSketch):
        return sketch.counts
    if sketch.small is not None:
        return sketch.small
    # A reference with few values against a current with many: the current's values away
    # from the reference's are not countable from the digest; they count as one other value.
    return {"__many__": sketch.n}


def _bin_shares(sketch: NumericSketch, inner_edges: np.ndarray) -> np.ndarray:
    # np.histogram's bins are [e_i, e_i+1); the share below an edge is F at the point before it.
    below = sketch.cdf(np.nextafter(inner_edges, -np.inf))
    cum = np.concatenate(([0.0], below, [1.0]))
    return np.clip(np.diff(cum), 0.0, None)


def _fill_zeroes(shares: np.ndarray) -> np.ndarray:
    shares = shares.copy()
    nonzero = shares[shares != 0]
    if nonzero.size == 0:
        return shares
    smallest = float(nonzero.min())
    shares[shares == 0] = smallest / 10**6 if smallest <= 0.0001 else 0.0001
    return shares


def is_p_value_test(test: str) -> bool:
    return test in _P_TESTS
