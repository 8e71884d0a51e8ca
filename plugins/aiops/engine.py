"""The streaming anomaly detector: one row of numpy state per series, updated a batch at a time.

One model, several tests. Every series has a robust baseline — a level, plus a daily and a
weekly profile that are used only where they explain the data — and a robust scale. Each new
point is compared with its forecast; the standardised residual feeds four tests, each turned
into a tail probability so that one threshold means the same on every series:

- ``spike``: the residual's own size, against an exponential tail fitted per series to past
  residuals (a peaks-over-threshold fit, so heavy-tailed series are not always "anomalous");
- ``shift``: a two-sided CUSUM of residuals (k = 0.5 sigma), corrected for autocorrelation, whose
  stationary tail is ``exp(-2kS)`` (Siegmund) — level shifts that no single point betrays;
- ``trend``: the same with k = 0.15 sigma, for slow drifts and changes of slope;
- ``variance``: a fast average of |z| against its slow mean and spread.

The score is ``1 - min(p) * tests`` (a Bonferroni bound), in [0, 1]. A confirmed level shift
re-bases the level, so a lasting change is reported while it is new, not forever.

Points of one series must come in time order. Within a batch the points of a series are taken
in *rounds* (the i-th point of every series together), so each round is a handful of vectorised
numpy steps, and the result is the same however the stream is cut into batches: the offline
``opstrata detect`` runs this same code, one round per point.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import special

__all__ = ["POINT_TESTS", "TESTS", "RobustSeasonalDetector", "TailCounts", "normal_sf"]

DAY_NS = 86_400 * 10**9
WEEK_NS = 7 * DAY_NS
DAY_BUCKETS = 24
WEEK_BUCKETS = 168
TESTS = ("spike", "shift", "trend", "variance")
POINT_TESTS = (*TESTS, "count")
"""Names of what made a point anomalous (``point_test``): the four tests, and the count test
of ratio points (errors of a window against the baseline rate) and of rate points (events of
a window against the baseline's rate)."""
DISPERSION_PRIOR = 10.0
RATIO_SHIFT = 0.05
"""The smallest rise of an error ratio worth an alert on its own (absolute; relative: x2): the
alternative of the ratio CUSUM, ``p1 = max(2 p0, p0 + RATIO_SHIFT)``."""
RATIO_JUMP = 0.25
"""The alternative of the second ratio CUSUM, for failures that jump (a bad release):
``p1 = max(4 p0, p0 + RATIO_JUMP)``. One alternative alone understates the evidence of a
change far from it (6 of 14 failing against 2 % is worth 7 nats against 7 %, 14 against 27 %)."""
RATIO_CUSUM_CAP = 40.0
"""The ratio CUSUM's ceiling (nats): a long failure does not take hours to forget once over."""
"""Pseudo-variance (in expected events) behind the count test's prior of no over-dispersion."""
TailCounts = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``(points, thresholds) -> (k, 2)``: samples of each point surely below / above a value."""
TAIL_U = 2.5
"""|z| beyond which the spike test fits its exponential tail (peaks over threshold)."""

# Seasonality modes, a bit mask per series: which profiles the series may use.
SEASON_NONE, SEASON_DAILY, SEASON_WEEKLY = 1, 2, 4
SEASONALITY_MASKS = {"none": 1, "daily": 3, "weekly": 7, "auto": 7}

_COLUMNS = (
    "level",
    "level_f",
    "trend_f",
    "level_s",
    "slow_day",
    "slow_week",
    "scale",
    "last_value",
    "expected",
    "sigma",
    "dt",
    "err0",
    "errf",
    "err1",
    "tail_f",
    "tail_b",
    "cus_pos",
    "cus_neg",
    "drift_pos",
    "drift_neg",
    "prev_z",
    "rho",
    "v_fast",
    "v_mean",
    "v_sq",
    "r_fast",
    "score",
    "tail_m2",
    "res_below",
    "res_above",
    "rat_n",
    "rat_dnum",
    "rat_dden",
    "rat_prev_k",
    "rat_prev_w",
    "rat_prev_p",
    "run_k",
    "run_rate",
    "run_w",
    "frac",
    "rat_cus",
    "rat_cus_p0",
    "rat_cus_phi",
    "rat_e",
    "rat_cus_big",
)
"""Per-series scalars: one row each of a (columns x series) float64 matrix, so a round gathers
and scatters the state of its series in one call each."""
_LEVEL = 0
_LEVEL_F = 1
_TREND_F = 2
_LEVEL_S = 3
_SLOW_DAY = 4
_SLOW_WEEK = 5
_SCALE = 6
_LAST_VALUE = 7
_EXPECTED = 8
_SIGMA = 9
_DT = 10
_ERR0 = 11
_ERRF = 12
_ERR1 = 13
_TAIL_F = 14
_TAIL_B = 15
_CUS_POS = 16
_CUS_NEG = 17
_DRIFT_POS = 18
_DRIFT_NEG = 19
_PREV_Z = 20
_RHO = 21
_V_FAST = 22
_V_MEAN = 23
_V_SQ = 24
_R_FAST = 25
_SCORE = 26
_TAIL_M2 = 27
_RES_BELOW = 28
_RES_ABOVE = 29
_RAT_N = 30
_RAT_DNUM = 31
_RAT_DDEN = 32
_RAT_PREV_K = 33
_RAT_PREV_W = 34
_RAT_PREV_P = 35
_RUN_K = 36
_RUN_RATE = 37
_RUN_W = 38
_FRAC = 39
_RAT_CUS = 40
_RAT_CUS_P0 = 41
_RAT_CUS_PHI = 42
_RAT_E = 43
_RAT_CUS_BIG = 44
_Z_STATS = np.array(
    [
        _TAIL_F,
        _TAIL_B,
        _TAIL_M2,
        _CUS_POS,
        _CUS_NEG,
        _DRIFT_POS,
        _DRIFT_NEG,
        _PREV_Z,
        _RHO,
        _V_FAST,
        _V_MEAN,
        _V_SQ,
        _R_FAST,
    ]
)
"""What the tests learn from standardised residuals: a point that says nothing about its measure
(infinite noise) leaves them as they were."""


def normal_sf(z: np.ndarray) -> np.ndarray:
    """Upper tail of the standard normal, P(Z > z), to ~1e-7 absolute (A&S 7.1.26)."""
    return _normal_sf(z)


def _fast_normal_sf(z: np.ndarray) -> np.ndarray:
    """P(Z > z) for z >= 0 within a few per cent of the tail (Lin 1989), for scores."""
    zc = np.maximum(z, 0.0)
    return 0.5 * np.exp(-0.717 * zc - 0.416 * zc * zc)


def _normal_sf(z: np.ndarray) -> np.ndarray:
    x = np.abs(z) / np.sqrt(2.0)
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    erfc = poly * np.exp(-x * x)
    return np.where(z >= 0, 0.5 * erfc, 1.0 - 0.5 * erfc)


def _sign_test(
    z: np.ndarray,
    pred: np.ndarray,
    weights: np.ndarray | None,
    q: np.ndarray,
    index: np.ndarray,
    tail_counts: TailCounts,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The sign test of quantile points (see ``update``): the count of samples surely beyond
    the forecast, against ``Binomial(n, 1 - q)`` above it (``Binomial(n, q)`` below); its tail
    probability as a normal quantile caps |z|. Returns (capped z, which points were tested,
    signed count beyond (+ above, - below), sample size, the binomial probability, tail p)."""
    size = z.size
    signed, n_all, prob_all = np.zeros(size), np.zeros(size), np.full(size, 0.5)
    p_all, tested = np.ones(size), np.zeros(size, np.bool_)
    if weights is None:
        return z, tested, signed, n_all, prob_all, p_all
    sel = np.flatnonzero(np.isfinite(q) & (weights > 0) & (z != 0))
    if not sel.size:
        return z, tested, signed, n_all, prob_all, p_all
    counts = np.asarray(tail_counts(index[sel], pred[sel]), np.float64).reshape(-1, 2)
    n = weights[sel]
    up = z[sel] > 0
    k = np.minimum(np.where(up, counts[:, 1], counts[:, 0]), n)
    prob = np.clip(np.where(up, 1.0 - q[sel], q[sel]), 0.0, 1.0)
    tail = _binomial_sf(k, n, prob)
    cap = np.where(tail < 0.5, -special.ndtri(np.clip(tail, 1e-300, 0.5)), 0.0)
    out = z.copy()
    out[sel] = np.sign(z[sel]) * np.minimum(np.abs(z[sel]), cap)
    tested[sel] = True
    signed[sel] = np.where(up, k, -k)
    n_all[sel], prob_all[sel], p_all[sel] = n, prob, tail
    return out, tested, signed, n_all, prob_all, p_all


def _binomial_sf(k: np.ndarray, n: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """P(Binomial(n, prob) >= k) = I_prob(k, n - k + 1); 1 for k <= 0."""
    k = np.minimum(k, n)
    return np.where(
        k > 0, special.betainc(np.maximum(k, 1e-12), np.maximum(n - k + 1.0, 1.0), prob), 1.0
    )


def _remember_window(
    v: np.ndarray, where: np.ndarray, k: np.ndarray, w: np.ndarray, p: np.ndarray
) -> None:
    """Keep this window's count, exposure and p-value (at ``where``) for the next window's
    two-in-a-row test."""
    v[_RAT_PREV_K] = np.where(where, k, v[_RAT_PREV_K])
    v[_RAT_PREV_W] = np.where(where, w, v[_RAT_PREV_W])
    v[_RAT_PREV_P] = np.where(where, p, v[_RAT_PREV_P])


def _ratio_count_test(
    x: np.ndarray,
    pred: np.ndarray,
    w: np.ndarray,
    exposure: np.ndarray,
    disp_num: np.ndarray,
    disp_den: np.ndarray,
) -> np.ndarray:
    """Tail probability of a ratio point's event count (errors of ``w`` requests) against
    its baseline: the exact conditional test of two Poisson rates. The baseline is ``pred``
    (the forecast ratio) over ``exposure`` requests, so ``E = pred * exposure`` events; given
    the total ``T = k + E``, the window's share is ``Binomial(T, w / (w + exposure))`` if both
    have one rate. A young baseline (small exposure) is uncertain and the test says so. Counts
    are divided by the series' over-dispersion (quasi-Poisson): real error counts come in
    bursts more often than a Poisson process has them. Only excesses count (p = 1 below)."""
    p = np.ones(x.size)
    base = np.clip(pred, 0.0, 1.0)
    k = x * w
    ok = (w > 0) & (exposure > 0) & (k > base * w)
    if not ok.any():
        return p
    # Shrunk towards 1 (Poisson) by ten events' worth of variance: a few rare failures say
    # little about how bursty a series is.
    phi = np.maximum((disp_num[ok] + DISPERSION_PRIOR) / (disp_den[ok] + DISPERSION_PRIOR), 1.0)
    k_o = k[ok] / phi
    events = base[ok] * exposure[ok] / phi
    share = w[ok] / (w[ok] + exposure[ok])
    # The mid-p value, P(X > k) + P(X = k) / 2 (Lancaster): the exact test of a discrete
    # count is conservative by up to the probability of the count itself.
    at_least = special.betainc(np.maximum(k_o, 1e-12), events + 1.0, share)
    beyond = special.betainc(k_o + 1.0, np.maximum(events, 1e-12), share)
    p[ok] = 0.5 * (at_least + beyond)
    return p


def _ratio_cusum(
    v: np.ndarray, rat: np.ndarray, k: np.ndarray, w: np.ndarray, pred: np.ndarray
) -> np.ndarray:
    """Sequential evidence that an error ratio rose: a Bernoulli CUSUM of the log-likelihood
    ratio of each window's ``k`` errors of ``w`` requests under ``p1`` against ``p0`` (Page),
    ``S = max(0, S + k ln(p1/p0) + (w - k) ln((1 - p1)/(1 - p0)))``, the counts divided by the
    series' over-dispersion. Under ``p0``, ``exp(S)`` is a likelihood ratio, so
    ``P(S >= s) <= exp(-s)`` at every window (Ville): the tail probability is ``exp(-S)``,
    whatever the volume — three weak windows in a row (2 of 13, 2 of 18, 8 of 20 against
    1.4 %) add up, one noisy window at the learnt ratio does not. ``p0`` is the baseline's upper
    one-sigma bound as
    it was when the run began (the level and the dispersion go on learning inside a run, and
    a rise would teach them to expect it);
    ``p1 = max(2 p0, p0 + RATIO_SHIFT)``, and a second CUSUM for jumps, ``p1 = max(4 p0, p0 +
    RATIO_JUMP)``: the tail is ``2 exp(-max(S, S_jump))``. Returns the tail probability per
    point (1 where the point is not a warm ratio point)."""
    out = np.ones(k.size)
    sel = np.flatnonzero(rat & (w > 0))
    if not sel.size:
        return out
    exposure = v[_RAT_N, sel]
    # The errors behind the baseline, faded as its requests are: errors / requests is the
    # ratio's unbiased estimate (the forecast, a Huber-clipped level, sits low on a skewed
    # ratio of few requests). State saved before it had none: the forecast stands in.
    errors = np.where(
        (v[_RAT_E, sel] == 0.0) & (exposure > 0.0), np.clip(pred[sel], 0.0, 1.0) * exposure,
        v[_RAT_E, sel],
    )  # fmt: skip
    base = np.clip(errors / np.maximum(exposure, 1e-12), 0.0, 1.0)
    # The baseline's upper one-sigma bound (one pseudo-error over its exposure, plus its
    # binomial standard error): a baseline that came out low by chance would make the usual
    # ratio look like a rise, and a run frozen on it would never end.
    rough = (base * exposure + 1.0) / (exposure + 1.0)
    fresh_p0 = rough + np.sqrt(rough * (1.0 - rough) / (exposure + 1.0))
    running = np.maximum(v[_RAT_CUS, sel], v[_RAT_CUS_BIG, sel]) > 0.0
    p0 = np.clip(np.where(running, v[_RAT_CUS_P0, sel], fresh_p0), 1e-9, 0.98)
    phi = np.maximum(
        (v[_RAT_DNUM, sel] + DISPERSION_PRIOR) / (v[_RAT_DDEN, sel] + DISPERSION_PRIOR), 1.0
    )
    phi = np.where(running, np.maximum(v[_RAT_CUS_PHI, sel], 1.0), phi)
    kk, nn = k[sel] / phi, w[sel] / phi
    # Two alternatives, a rise and a jump, each its own CUSUM; Bonferroni over the two.
    for col, times, shift in ((_RAT_CUS, 2.0, RATIO_SHIFT), (_RAT_CUS_BIG, 4.0, RATIO_JUMP)):
        p1 = np.minimum(np.maximum(times * p0, p0 + shift), 0.99)
        llr = kk * np.log(p1 / p0) + (nn - kk) * np.log((1.0 - p1) / (1.0 - p0))
        v[col, sel] = np.clip(v[col, sel] + llr, 0.0, RATIO_CUSUM_CAP)
    cus = np.maximum(v[_RAT_CUS, sel], v[_RAT_CUS_BIG, sel])
    v[_RAT_CUS_P0, sel] = np.where(cus > 0.0, p0, 0.0)
    v[_RAT_CUS_PHI, sel] = np.where(cus > 0.0, phi, 0.0)
    out[sel] = np.minimum(2.0 * np.exp(-cus), 1.0)
    return out


def rate_count_test(
    k: np.ndarray, w: np.ndarray, rate: np.ndarray, exposure: np.ndarray, phi: np.ndarray
) -> np.ndarray:
    """Two-sided tail probability of ``k`` events in ``w`` seconds against a baseline ``rate``
    (per second) learnt over ``exposure`` seconds: the exact conditional test of two Poisson
    rates — given ``T = k + E`` events in all (``E = rate * exposure``), the window's share is
    ``Binomial(T, w / (w + exposure))`` if both have one rate — with counts divided by the
    over-dispersion ``phi`` (quasi-Poisson; a byte counter's "events" are bytes, ``phi`` ~ the
    bytes per event). Mid-p (Lancaster), the one-sided tail in the direction of the deviation,
    doubled. 1 where there is no exposure."""
    k, w = np.asarray(k, np.float64), np.asarray(w, np.float64)
    rate, exposure = np.asarray(rate, np.float64), np.asarray(exposure, np.float64)
    p = np.ones(k.size)
    ok = (w > 0) & (exposure > 0) & np.isfinite(k) & (k >= 0)
    if not ok.any():
        return p
    phi_o = np.maximum(np.asarray(phi, np.float64)[ok], 1e-9)
    kk = k[ok] / phi_o
    events = np.maximum(rate[ok], 0.0) * exposure[ok] / phi_o
    share = w[ok] / (w[ok] + exposure[ok])
    up = k[ok] > np.maximum(rate[ok], 0.0) * w[ok]
    tiny = 1e-12
    # Above: P(X > k) + P(X = k) / 2; below: P(X < k) + P(X = k) / 2, with
    # P(X >= j) = I_share(j, T - j + 1) and P(X <= j) = I_{1 - share}(T - j, j + 1).
    at_least = special.betainc(np.maximum(kk, tiny), events + 1.0, share)
    beyond = special.betainc(kk + 1.0, np.maximum(events, tiny), share)
    at_most = special.betainc(np.maximum(events, tiny), kk + 1.0, 1.0 - share)
    below = np.where(
        kk >= 1.0, special.betainc(events + 1.0, np.maximum(kk, tiny), 1.0 - share), 0.0
    )
    one_sided = np.where(up, 0.5 * (at_least + beyond), 0.5 * (at_most + below))
    p[ok] = np.minimum(2.0 * one_sided, 1.0)
    return p


class RobustSeasonalDetector:
    """The default detector (registered as ``robust``; ``spike``, ``level_shift``, ``trend`` and
    ``variance`` are the same model with one test each).

    Parameters (``params``): ``tests`` (subset of :data:`TESTS`), ``warmup`` (points before
    scoring, 30), ``level_alpha`` (0.05), ``scale_alpha`` (0.02), ``huber`` (3.0, residuals are
    clipped at this many sigma before they update the baseline), ``seasonality`` (``auto``,
    ``none``, ``daily``, ``weekly``), ``rel_floor`` (1e-6, the smallest sigma relative to
    the level), ``young`` (100: how much more a series just out of warm-up must deviate, as a
    factor on its tail probability, fading over three warm-ups).
    """

    point_noise = True
    """``update`` takes each point's own ``noise`` and ``weights`` (see there)."""

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        params = dict(params or {})
        tests = tuple(params.get("tests", TESTS))
        unknown = set(tests) - set(TESTS)
        if unknown or not tests:
            raise ValueError(f"tests: {sorted(unknown) or 'none given'}; known: {list(TESTS)}")
        self.tests = tests
        self.warmup = int(params.get("warmup", 30))
        self.level_alpha = float(params.get("level_alpha", 0.05))
        self.scale_alpha = float(params.get("scale_alpha", 0.02))
        self.huber = float(params.get("huber", 3.0))
        self.rel_floor = float(params.get("rel_floor", 1e-6))
        self.young = float(params.get("young", 100.0))
        # The pair rule by default: the CUSUM learns its baseline during an incident, is slow to
        # forget at low traffic and ignores the daily cycle (docs/aiops.md, Limits).
        self.ratio_test = str(params.get("ratio_test", "pair"))
        if self.ratio_test not in ("pair", "cusum", "both"):
            raise ValueError(f"ratio_test: {self.ratio_test!r}; known: pair, cusum, both")
        self.default_mask = SEASONALITY_MASKS[str(params.get("seasonality", "auto"))]
        self.size = 0
        self._alloc(0)

    # -- state ------------------------------------------------------------------------------

    def _alloc(self, cap: int) -> None:
        self.n = np.zeros(cap, np.int32)
        self.first_t = np.zeros(cap, np.int64)
        self.last_t = np.zeros(cap, np.int64)
        self.st = np.zeros((len(_COLUMNS), cap), np.float64)
        self.day = np.zeros((cap, DAY_BUCKETS), np.float32)
        self.week = np.zeros((cap, WEEK_BUCKETS), np.float32)
        self.mask = np.zeros(cap, np.uint8)
        self.which = np.zeros(cap, np.uint8)
        self.poisson = np.zeros(cap, np.bool_)
        self.ratio = np.zeros(cap, np.bool_)
        self.rate = np.zeros(cap, np.bool_)

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Every state array by name (for saving, and to measure the state's size)."""
        names = ("n", "first_t", "last_t", "day", "week", "mask", "which", "poisson", "ratio")
        names = (*names, "rate")
        arrays = {name: getattr(self, name)[: self.size] for name in names}
        arrays["st"] = self.st[:, : self.size]
        return arrays

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        size = int(arrays["n"].shape[0])
        self._alloc(0)
        self.size = 0
        self.ensure(size)
        for name, value in arrays.items():
            if name == "st":
                self.st[: value.shape[0], :size] = value  # columns added later start at 0
            else:
                getattr(self, name)[:size] = value

    def column(self, name: str) -> np.ndarray:
        """One per-series scalar (``score``, ``expected``, ``last_value``, ``sigma`` …)."""
        return self.st[_COLUMNS.index(name), : self.size]

    @property
    def score(self) -> np.ndarray:
        return self.column("score")

    @property
    def expected(self) -> np.ndarray:
        return self.column("expected")

    @property
    def sigma(self) -> np.ndarray:
        return self.column("sigma")

    @property
    def last_value(self) -> np.ndarray:
        return self.column("last_value")

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.state_arrays().values())

    def ensure(self, size: int) -> None:
        """Make room for series ``0 .. size-1``; new series start empty."""
        if size <= self.size:
            return
        cap = self.n.shape[0]
        if size > cap:
            new_cap = max(size, cap * 2, 64)
            for name, old in self.state_arrays().items():
                if name == "st":
                    grown = np.zeros((old.shape[0], new_cap), old.dtype)
                    grown[:, : self.size] = old
                else:
                    grown = np.zeros((new_cap, *old.shape[1:]), old.dtype)
                    grown[: self.size] = old
                setattr(self, name, grown)
        self.mask[self.size : size] = self.default_mask
        self.size = size

    def configure(
        self,
        series: np.ndarray,
        seasonality: str | None = None,
        poisson: bool | None = None,
        ratio: bool | None = None,
        rate: bool | None = None,
    ) -> None:
        """Per-series options: allowed seasonality, whether values are counts (Poisson noise
        floor), whether they are ratios of events to a sample count given with each point
        (``weights``: the Poisson floor of the event count, ``sqrt(expected events + 1)``),
        and whether they are rates — events per second over ``weights`` seconds (a counter's
        increments, requests per window): where those increments are whole numbers, counts
        of things, the point is judged by its count too (:func:`rate_count_test`)."""
        self.ensure(int(series.max()) + 1 if series.size else 0)
        if seasonality is not None:
            self.mask[series] = SEASONALITY_MASKS[seasonality]
        if poisson is not None:
            self.poisson[series] = poisson
        if ratio is not None:
            self.ratio[series] = ratio
        if rate is not None:
            self.rate[series] = rate

    # -- scoring ----------------------------------------------------------------------------

    def update(
        self,
        series: np.ndarray,
        times: np.ndarray,
        values: np.ndarray,
        noise: np.ndarray | None = None,
        weights: np.ndarray | None = None,
        resolution: np.ndarray | None = None,
        quantiles: np.ndarray | None = None,
        tail_counts: TailCounts | None = None,
    ) -> np.ndarray:
        """Score points (series index, event time ns, value), in time order per series, and
        learn from them. Returns one score in [0, 1] per point (0 while warming up).

        ``noise`` is each point's own standard error when it is an estimate from a sample (a
        quantile of a few requests): the point is never more precise than that, so it floors
        the point's sigma (0 or NaN: none; +inf: the point says nothing, its z is 0). Shape
        (n,), or (n, 2) for an asymmetric error: the distance down to the point's lower bound
        (what counts when it is above its forecast) and up to its upper bound.
        ``weights`` is the sample count behind a point of a ``ratio`` series (errors /
        requests): the event count's Poisson floor applies. ``resolution`` (n, 2): how far below
        and above the value the truth may lie because only its bucket is known (a quantile of
        a histogram with wide buckets); the tests see only the deviation beyond it.

        ``quantiles`` (n,): the level q of a point that is the q-quantile of ``weights``
        samples (NaN: not a quantile), and ``tail_counts(points, thresholds)`` how many of
        those samples lie surely below and surely above a threshold — ``points`` index the
        arrays given here, the answer is (k, 2). With both, a quantile point counts only as
        far as its sample does: the number of samples beyond the forecast is binomial,
        ``Binomial(n, 1 - q)`` above (``q`` below) if the forecast is the true quantile, and
        the point's z is capped at the normal quantile of that count's tail probability (a
        sign test), so a median of five requests can never look like a 6-sigma event."""
        series = np.asarray(series, np.int64)
        times = np.asarray(times, np.int64)
        values = np.asarray(values, np.float64)
        # Without noise or weights a round skips their steps (the common, fast path).
        if noise is not None:
            # +inf stays: a point that says nothing about its measure (z = 0)
            noise = np.nan_to_num(np.asarray(noise, np.float64), nan=0.0, posinf=np.inf)
            if noise.ndim == 1:
                noise = np.repeat(noise[:, None], 2, axis=1)
        if weights is not None:
            weights = np.nan_to_num(np.asarray(weights, np.float64), nan=0.0, posinf=0.0)
        if resolution is not None:
            resolution = np.nan_to_num(np.asarray(resolution, np.float64), nan=0.0, posinf=0.0)
            resolution = resolution.reshape(-1, 2)
        if quantiles is not None and (tail_counts is None or weights is None):
            quantiles = None  # a quantile's count test needs its sample and its size
        if quantiles is not None:
            quantiles = np.asarray(quantiles, np.float64)
        scores = np.zeros(values.shape[0], np.float64)
        # Forecast and sigma of every point, for evidence (observed vs expected band).
        self.point_expected = np.full(values.shape[0], np.nan)
        self.point_sigma = np.full(values.shape[0], np.nan)
        self.point_test = np.zeros(values.shape[0], np.int64)
        if not series.size:
            return scores
        self.ensure(int(series.max()) + 1)
        finite = np.isfinite(values)
        order = np.flatnonzero(finite)
        if order.size < series.size:
            series, times, values = series[order], times[order], values[order]
            noise = None if noise is None else noise[order]
            weights = None if weights is None else weights[order]
            resolution = None if resolution is None else resolution[order]
            quantiles = None if quantiles is None else quantiles[order]
        # Rank of each point within its series (stable: keeps time order), then rounds.
        by_series = np.argsort(series, kind="stable")
        sorted_series = series[by_series]
        starts = np.flatnonzero(np.r_[True, sorted_series[1:] != sorted_series[:-1]])
        counts = np.diff(np.r_[starts, sorted_series.size])
        rank = np.arange(sorted_series.size) - np.repeat(starts, counts)
        if counts.max() == 1:
            rounds = [by_series]
        else:
            by_rank = by_series[np.argsort(rank, kind="stable")]
            bounds = np.r_[0, np.cumsum(np.bincount(rank))]
            rounds = [by_rank[a:b] for a, b in itertools.pairwise(bounds)]
        out = np.zeros(series.size, np.float64)
        expected = np.zeros(series.size, np.float64)
        sigma = np.zeros(series.size, np.float64)
        test = np.zeros(series.size, np.int64)
        for chunk in rounds:
            s = series[chunk]
            sample = None
            if quantiles is not None and tail_counts is not None:
                sample = (quantiles[chunk], order[chunk], tail_counts)
            out[chunk] = self._round(
                s,
                times[chunk],
                values[chunk],
                None if noise is None else noise[chunk],
                None if weights is None else weights[chunk],
                None if resolution is None else resolution[chunk],
                sample,
            )
            expected[chunk] = self.expected[s]
            sigma[chunk] = self.sigma[s]
            test[chunk] = self.which[s]
        scores[order] = out
        self.point_expected[order] = expected
        self.point_sigma[order] = sigma
        self.point_test[order] = test
        return scores

    def _rate_counts(
        self,
        v: np.ndarray,
        cnt: np.ndarray,
        k: np.ndarray,
        w: np.ndarray,
        pred: np.ndarray,
        phi: np.ndarray,
        cus_pos: np.ndarray,
        cus_neg: np.ndarray,
    ) -> np.ndarray:
        """The count tests of rate points: this window's events against the baseline, and the
        events pooled over the run of windows the shift CUSUM is adding up (the count's own
        view of a level shift no single window shows). Returns 2 x the smaller of the two."""
        rate = np.maximum(pred, 0.0)
        exposure = v[_RAT_N]
        p_win = rate_count_test(np.where(cnt, k, 0.0), w, rate, exposure, phi)
        active = cnt & (np.maximum(cus_pos, cus_neg) > 0.0)
        run_k = np.where(active, v[_RUN_K] + k, 0.0)
        # The run is judged against the baseline as it was when the run began: the level
        # goes on learning inside the run and would otherwise take its excess away.
        run_e = np.where(active, np.where(v[_RUN_W] > 0.0, v[_RUN_RATE], rate), 0.0)
        run_w = np.where(active, v[_RUN_W] + w, 0.0)
        pooled = active & (run_w > w)
        p_run = np.ones(k.size)
        if pooled.any():
            p_run = rate_count_test(
                np.where(pooled, run_k, 0.0), np.where(pooled, run_w, 0.0), run_e, exposure, phi
            )
        v[_RUN_K] = np.where(cnt, run_k, v[_RUN_K])
        v[_RUN_RATE] = np.where(cnt, run_e, v[_RUN_RATE])
        v[_RUN_W] = np.where(cnt, run_w, v[_RUN_W])
        return np.minimum(2.0 * np.minimum(p_win, p_run), 1.0)

    def _round(
        self,
        s: np.ndarray,
        t: np.ndarray,
        x: np.ndarray,
        noise: np.ndarray | None,
        weights: np.ndarray | None,
        resolution: np.ndarray | None = None,
        sample: tuple[np.ndarray, np.ndarray, TailCounts] | None = None,
    ) -> np.ndarray:
        # A round over a contiguous range of series (the common case: ids are given out in
        # order of first appearance) works on a view of the state, with no gather or scatter.
        contiguous = int(s[-1]) - int(s[0]) + 1 == s.size
        idx = slice(int(s[0]), int(s[-1]) + 1) if contiguous else s
        v = self.st[:, idx] if contiguous else np.take(self.st, s, axis=1)
        n = self.n[idx]
        fresh = n == 0
        if fresh.any():
            f = s[fresh]
            self.first_t[f] = t[fresh]
            self.last_t[f] = t[fresh]
            v[_LEVEL, fresh] = x[fresh]
            v[_LEVEL_S, fresh] = x[fresh]
            v[_LEVEL_F, fresh] = x[fresh]
            v[_RHO, fresh] = 0.5
            v[_SLOW_DAY, fresh] = x[fresh]
            v[_SLOW_WEEK, fresh] = x[fresh]
            v[_TAIL_F, fresh] = 0.0124  # a normal tail, until the series shows its own
            v[_TAIL_B, fresh] = 0.45
            v[_TAIL_M2, fresh] = 2 * 0.45**2
            v[_V_MEAN, fresh] = 0.8
            v[_V_SQ, fresh] = 1.0
            v[_V_FAST, fresh] = 0.8
            v[_RAT_PREV_P, fresh] = 1.0
        # Time: the typical interval (s) and how many intervals this point comes after.
        dt_s = (t - self.last_t[idx]).astype(np.float64) * 1e-9
        typical = v[_DT].astype(np.float64)
        # The second point gives the first interval (the first had none to learn from).
        typical = np.where((typical > 0) & (n != 1), typical, np.maximum(dt_s, 1e-3))
        gap = np.where(n > 0, np.clip(dt_s / typical, 1.0, 50.0), 1.0)
        typical = np.where(
            n > 0, typical + 0.1 * (np.clip(dt_s, 0.2 * typical, 5 * typical) - typical), typical
        )
        span = (t - self.first_t[idx]).astype(np.float64)
        # Seasonal profiles, linearly interpolated between bucket centres.
        dpos = (t % DAY_NS).astype(np.float64) * (DAY_BUCKETS / DAY_NS) - 0.5
        d0f = np.floor(dpos)
        dw1 = dpos - d0f
        d0 = (d0f % DAY_BUCKETS).astype(np.intp)
        d1 = ((d0f + 1) % DAY_BUCKETS).astype(np.intp)
        # The weekly profile takes the nearest bucket: one gather, one scatter.
        wb = ((t + 3 * DAY_NS) % WEEK_NS) // (WEEK_NS // WEEK_BUCKETS)
        day_flat = self.day.reshape(-1)
        week_flat = self.week.reshape(-1)
        i0 = s * DAY_BUCKETS + d0
        i1 = s * DAY_BUCKETS + d1
        iw = s * WEEK_BUCKETS + wb
        day0 = day_flat[i0]
        day1 = day_flat[i1]
        week_raw = week_flat[iw]
        day = day0 * (1 - dw1) + day1 * dw1
        week = week_raw.astype(np.float64)
        mask = self.mask[idx]
        # Weekly profile only once two weeks are seen; seasonal model only where it explains
        # the data clearly better than the level alone.
        week = np.where(((mask & SEASON_WEEKLY) > 0) & (span >= 8 * DAY_NS), week, 0.0)
        level = v[_LEVEL]
        level_s = v[_LEVEL_S]
        pred_season = level_s + day + week
        use_season = ((mask & SEASON_DAILY) > 0) & (span >= 2 * DAY_NS)
        # A fast level where the series wanders (random-walk-like): its forecast is then better.
        # Damped local-linear trend (Holt): follows smooth curves with little lag.
        level_f = v[_LEVEL_F] + 0.98 * v[_TREND_F]
        # The seasonal model wins where it is clearly better than the level and about as good
        # as the fast one (which would otherwise absorb level shifts within a few points).
        use_fast = v[_ERRF] < 0.7 * v[_ERR0]
        use_season &= (v[_ERR1] < 0.8 * v[_ERR0]) & (v[_ERR1] < 1.15 * v[_ERRF])
        pred = np.where(use_season, pred_season, np.where(use_fast, level_f, level))
        resid = x - pred
        scale = v[_SCALE]
        sigma = 1.2533 * scale
        sigma = np.maximum(sigma, self.rel_floor * np.abs(level) + 1e-12)
        pois = self.poisson[idx]
        if pois.any():
            sigma = np.where(pois, np.maximum(sigma, np.sqrt(np.maximum(pred, 0.0) + 1.0)), sigma)
        # A ratio of few events (errors / requests) is as noisy as the event count: the count
        # series' Poisson floor, sqrt(expected events + 1), over the sample count.
        rat = self.ratio[idx] & (weights > 0) if weights is not None else None
        if rat is not None and rat.any():
            w = np.where(rat, weights, 1.0)
            floor = np.sqrt(np.maximum(pred, 0.0) * w + 1.0) / w
            sigma = np.where(rat, np.maximum(sigma, floor), sigma)
        # A rate of events is as noisy as its count k = x * w: sigma is floored at the
        # quasi-Poisson sqrt(phi max(expected events, 1)) / w. Only where every increment seen
        # was a whole number (a counter of things: orders, requests, bytes); CPU seconds and
        # other measures that merely accumulate keep the series' own sigma and no count test.
        cnt = self.rate[idx] & (weights > 0) if weights is not None else None
        if cnt is not None and cnt.any():
            w_c = np.where(cnt, weights, 0.0)
            k_c = x * w_c
            whole = np.abs(k_c - np.round(k_c)) <= 1e-6 * np.maximum(np.abs(k_c), 1.0)
            v[_FRAC] = np.where(cnt & ~whole, 1.0, v[_FRAC])
            cnt &= v[_FRAC] == 0.0
            # Dispersion index of the series' own increments (variance / mean of the count
            # against the forecast), shrunk to 1 by ten events' worth of variance, never below
            # Poisson: byte counters get phi ~ bytes per event, sparse event counters ~1.
            phi_c = np.maximum(
                (v[_RAT_DNUM] + DISPERSION_PRIOR) / (v[_RAT_DDEN] + DISPERSION_PRIOR), 1.0
            )
            floor = np.sqrt(phi_c * np.maximum(pred * w_c, 1.0)) / np.maximum(w_c, 1e-12)
            sigma = np.where(cnt, np.maximum(sigma, floor), sigma)
        else:
            cnt = None
        # The point's own precision (a quantile of few samples) bounds the test statistics
        # only; the baseline still learns at the series' own sigma. Above its forecast, what
        # counts is how far down the point's own interval reaches, and the other way round.
        sigma_pt = sigma
        if noise is not None:
            sigma_pt = np.maximum(sigma, np.where(resid > 0, noise[:, 0], noise[:, 1]))
        if resolution is None:
            z = resid / sigma_pt
        else:
            # Known only to its bucket, and so is the forecast (the series' typical resolution):
            # what counts is the deviation beyond both, so a hop to the next bucket is not one.
            reach = np.where(
                resid > 0, resolution[:, 0] + v[_RES_ABOVE], resolution[:, 1] + v[_RES_BELOW]
            )
            z = np.sign(resid) * np.maximum(np.abs(resid) - reach, 0.0) / sigma_pt
            la_res = np.maximum(self.level_alpha, 1.0 / (n + 1))
            v[_RES_BELOW] += la_res * (resolution[:, 0] - v[_RES_BELOW])
            v[_RES_ABOVE] += la_res * (resolution[:, 1] - v[_RES_ABOVE])
        if sample is not None:
            z, sign_tested, sign_k, sign_n, sign_prob, sign_p = _sign_test(
                z, pred, weights, *sample
            )
            quantile_pts = np.isfinite(sample[0]) & (weights > 0)
        az = np.abs(z)
        silent = None
        if noise is not None and not np.isfinite(sigma_pt).all():
            silent = np.ix_(_Z_STATS, np.flatnonzero(~np.isfinite(sigma_pt)))
            kept = v[silent]
        warm = n >= self.warmup
        # -- the tests, as tail probabilities --
        tail_f = v[_TAIL_F].astype(np.float64)
        tail_b = v[_TAIL_B].astype(np.float64)
        # Each test as a log tail probability; one exp at the end.
        tests: list[np.ndarray] = []
        if "spike" in self.tests:
            # Generalised Pareto tail over TAIL_U, shape by the method of moments (0: exponential;
            # up to 0.45 for power-law tails such as Student-t); computed where |z| > TAIL_U only.
            log_spike = np.zeros(s.size)
            over = np.flatnonzero(az > TAIL_U)
            if over.size:
                b_o = tail_b[over]
                var = np.maximum(v[_TAIL_M2][over] - b_o * b_o, 1e-6)
                xi = np.clip(0.5 * (1.0 - b_o * b_o / var), 0.0, 0.45)
                y = (az[over] - TAIL_U) / (b_o * (1.0 - xi))
                log_tail = np.where(xi > 1e-3, -np.log1p(xi * y) / np.maximum(xi, 1e-3), -y)
                log_spike[over] = np.log(tail_f[over]) + log_tail
            tests.append(log_spike)
        lrv = (1 + v[_RHO]) / np.maximum(1 - v[_RHO], 1e-3)
        inc = np.clip(z, -4.0, 4.0) / np.sqrt(np.clip(lrv, 1.0, 50.0))
        inc = np.where(warm, inc, 0.0)  # the CUSUMs start once the baseline is warm
        cus_pos = np.maximum(0.0, v[_CUS_POS] + inc - 0.5)
        cus_neg = np.maximum(0.0, v[_CUS_NEG] - inc - 0.5)
        drift_inc = np.clip(inc, -2, 2)
        drift_pos = np.maximum(0.0, 0.995 * v[_DRIFT_POS] + drift_inc - 0.15)
        drift_neg = np.maximum(0.0, 0.995 * v[_DRIFT_NEG] - drift_inc - 0.15)
        if "shift" in self.tests:
            tests.append(-np.maximum(cus_pos, cus_neg))
        if "trend" in self.tests:
            tests.append(-0.3 * np.maximum(drift_pos, drift_neg))
        v_fast = v[_V_FAST] + 0.1 * (np.minimum(az, 8.0) - v[_V_FAST])
        if "variance" in self.tests:
            # The spread of |z| is floored; for counts and ratios of few events, whose sigma is
            # the Poisson floor, at a normal's (0.6): most of their z sit near zero, and the
            # first burst of two or three events would otherwise look like a louder series.
            known = pois if rat is None else pois | rat
            floor = np.where(known, 0.36, 0.04) if known.any() else 0.04
            v_sd = np.sqrt(
                np.maximum(v[_V_SQ] - v[_V_MEAN] ** 2, floor) * np.clip(lrv, 1.0, 50.0)
            ) * np.sqrt(0.1 / 1.9)
            zv = np.maximum((v_fast - v[_V_MEAN]) / v_sd, 0.0)
            tests.append(np.log(0.5) - 0.717 * zv - 0.416 * zv * zv)  # Lin (1989) normal tail
        log_p, which = tests[0], np.zeros(s.size, np.int64)
        for k in range(1, len(tests)):
            lower = tests[k] < log_p
            log_p = np.minimum(log_p, tests[k])
            which[lower] = k
        p = np.exp(log_p)
        # Just after warm-up the baseline is young: demand more (p x young, fading over 3
        # warm-ups).
        young = np.clip(1.0 - (n - self.warmup) / (3.0 * self.warmup), 0.0, 1.0)
        p = p * (1.0 + (self.young - 1.0) * young)
        n_tests = np.full(s.size, float(len(self.tests)))
        if sample is not None and quantile_pts.any():
            # Quantiles judged by their counts over two windows in a row, as error ratios
            # are: each window's count beyond the forecast with p < 0.05, the same way, and
            # the pooled count decisive. It needs no young factor (it rests on the windows'
            # own samples); a lone window is the other tests' business.
            same_way = np.sign(sign_k) * np.sign(v[_RAT_PREV_K]) > 0
            in_a_row = sign_tested & same_way & (sign_p < 0.05) & (v[_RAT_PREV_P] < 0.05)
            in_a_row &= gap < 2.0
            p_pair = _binomial_sf(
                np.abs(sign_k) + np.abs(v[_RAT_PREV_K]), sign_n + v[_RAT_PREV_W], sign_prob
            )
            p_signs = np.where(in_a_row, p_pair, 1.0)
            _remember_window(v, quantile_pts, sign_k, sign_n, sign_p)
            signs_win = quantile_pts & (p_signs < p)
            which[signs_win] = len(TESTS)
            p = np.where(signs_win, p_signs, p)
            n_tests += quantile_pts
        p_count = p_cus = None
        if rat is not None and rat.any():
            # The count test of a ratio carries its baseline's uncertainty itself (the
            # exposure it was learnt from), so the young factor does not apply to it. It
            # judges two windows in a row: one burst of failures is what the spike test is
            # for; an excess in this window and the one before (each p < 0.05), decisive
            # when their counts are pooled, is a change of rate.
            w_now = np.where(rat, weights, 0.0)
            state = (v[_RAT_N], v[_RAT_DNUM], v[_RAT_DDEN])
            p_count = _ratio_count_test(x, pred, w_now, *state)
            w_pair = w_now + v[_RAT_PREV_W]
            x_pair = (x * w_now + v[_RAT_PREV_K]) / np.maximum(w_pair, 1e-12)
            p_pair = _ratio_count_test(x_pair, pred, w_pair, *state)
            in_a_row = (p_count < 0.05) & (v[_RAT_PREV_P] < 0.05) & (gap < 2.0)
            p_rate = np.where(in_a_row, p_pair, 1.0)
            if self.ratio_test != "pair":
                # Sequential evidence (see ``_ratio_cusum``): weak windows in a row add up.
                p_cus = _ratio_cusum(v, rat & warm, x * w_now, w_now, pred)
                p_rate = p_cus if self.ratio_test == "cusum" else np.minimum(p_rate, p_cus)
            _remember_window(v, rat, x * w_now, w_now, p_count)
            count_wins = rat & (p_rate < p)
            which[count_wins] = len(TESTS)
            p = np.where(count_wins, p_rate, p)
            n_tests += rat
        if cnt is not None:
            p_rate_cnt = self._rate_counts(v, cnt, k_c, w_c, pred, phi_c, cus_pos, cus_neg)
            p_tests = np.where(cnt, p * n_tests, 1.0)
            # The count and the other tests must agree: the point is as anomalous as the
            # weaker of the two says (so a rate of a few events, whose z rests on a sigma
            # learnt from a handful of distinct values, cannot alert on its own). The count
            # alone does not decide: letting a decisive pooled count override the other
            # tests found drops sooner but tripled the false alarms of bursty counts
            # (negative binomial, variance 2.5 x mean) — a quasi-Poisson tail is too thin
            # for them, and the spike test's tail is calibrated on the series.
            p_joint = np.maximum(p * n_tests, p_rate_cnt)
            count_binds = cnt & (p_joint == p_rate_cnt) & (p_rate_cnt != p * n_tests)
            which[count_binds] = len(TESTS)
            p = np.where(cnt, p_joint / n_tests, p)
        score = np.where(warm, np.clip(1.0 - p * n_tests, 0.0, 1.0), 0.0)
        # -- learning --
        huber = np.where(warm, self.huber, 3 * self.huber)
        clipped = np.clip(resid, -huber * sigma, huber * sigma)
        la = np.where(
            warm,
            1 - np.exp(gap * np.log1p(-self.level_alpha)),
            np.maximum(self.level_alpha, 1.0 / (n + 1)),
        )
        cap = huber * sigma
        new_level = level + la * np.clip(x - level, -cap, cap)
        r_f = np.clip(x - level_f, -cap, cap)
        new_level_f = level_f + np.maximum(la, 0.3) * r_f
        new_trend_f = 0.98 * v[_TREND_F] + 0.05 * r_f
        new_level_s = level_s + la * np.clip(x - pred_season, -cap, cap)
        xc = pred + clipped
        # Slow levels (time constants of a day and a week) anchor the profiles.
        a_day = np.clip(dt_s * (1 / 86_400.0), 0.0, 1.0)
        a_week = np.clip(dt_s * (1 / 604_800.0), 0.0, 1.0)
        slow_day = v[_SLOW_DAY] + np.where(fresh, 0.0, a_day) * (xc - v[_SLOW_DAY])
        slow_week = v[_SLOW_WEEK] + np.where(fresh, 0.0, a_week) * (xc - v[_SLOW_WEEK])
        days_seen = np.clip(span / DAY_NS, 1 / 24, 3.0)
        a_prof = np.clip(typical / (3600.0 * days_seen), 0.0, 1.0)
        target_day = xc - slow_day - week
        day_flat[i0] = day0 + a_prof * (1 - dw1) * (target_day - day0)
        day_flat[i1] = day1 + a_prof * dw1 * (target_day - day1)
        weeks_seen = np.clip(span / WEEK_NS, 1 / 168, 3.0)
        a_wprof = np.clip(typical / (3600.0 * weeks_seen), 0.0, 1.0)
        target_week = xc - slow_week - day
        week_flat[iw] = week_raw + a_wprof * (target_week - week_raw)
        a_err = np.maximum(np.clip(typical / 43_200.0, 0.002, 0.05), 1.0 / (n + 2))
        v[_ERR0] += a_err * (np.minimum(np.abs(x - level), cap) - v[_ERR0])
        v[_ERRF] += a_err * (np.minimum(np.abs(x - level_f), cap) - v[_ERRF])
        v[_ERR1] += a_err * (np.minimum(np.abs(x - pred_season), cap) - v[_ERR1])
        sa = np.where(warm, self.scale_alpha, np.maximum(self.scale_alpha, 1.0 / (n + 1)))
        v[_SCALE] = scale + sa * (np.abs(clipped) - scale)
        # Tail calibration learns from scored points only; a spike moves it by a bounded step.
        learn = warm & (az < 50)
        exceed = (az > TAIL_U).astype(np.float64)
        v[_TAIL_F] = np.where(learn, tail_f + 0.005 * (exceed - tail_f), tail_f).clip(0.003, 0.2)
        excess = np.minimum(az - TAIL_U, 4 * tail_b)
        grow = learn & (az > TAIL_U)
        v[_TAIL_B] = np.where(grow, tail_b + 0.03 * (excess - tail_b), tail_b).clip(0.25, 4.0)
        m2 = v[_TAIL_M2]
        v[_TAIL_M2] = np.where(grow, m2 + 0.03 * (excess * excess - m2), m2)
        # Lag-1 autocorrelation of the residuals, from clipped z and not while a shift is
        # suspected: the shift itself would otherwise look like autocorrelation and mute the CUSUM.
        zr = np.clip(z, -2.5, 2.5)
        steady = (n > 1) & (np.maximum(cus_pos, cus_neg) < 8.0)
        v[_RHO] = np.where(
            steady,
            # One pair's estimate is clipped to a correlation's range: where most z are
            # near zero (points within their own noise) a run of moderate ones would
            # otherwise count many times over and pass for strong autocorrelation.
            v[_RHO]
            + 0.02 * (np.clip(zr * v[_PREV_Z] / np.maximum(v[_V_SQ], 0.2), -4, 4) - v[_RHO]),
            v[_RHO],
        ).clip(-0.5, 0.98)
        v[_PREV_Z] = zr
        aza = np.minimum(az, 6.0)
        v[_V_MEAN] += 0.01 * (aza - v[_V_MEAN])
        v[_V_SQ] += 0.01 * (aza * aza - v[_V_SQ])
        v[_V_FAST] = v_fast
        # A confirmed shift re-bases the level on the recent residuals.
        r_fast = v[_R_FAST] + 0.3 * (resid - v[_R_FAST])
        rebase = warm & (np.maximum(cus_pos, cus_neg) > 16.0)
        if rebase.any():
            new_level = np.where(rebase, level + r_fast, new_level)
            new_level_s = np.where(rebase, level_s + r_fast, new_level_s)
            new_level_f = np.where(rebase, x, new_level_f)
            new_trend_f = np.where(rebase, 0.0, new_trend_f)
            cus_pos = np.where(rebase, 0.0, cus_pos)
            cus_neg = np.where(rebase, 0.0, cus_neg)
            drift_pos = np.where(rebase, 0.0, drift_pos)
            drift_neg = np.where(rebase, 0.0, drift_neg)
            r_fast = np.where(rebase, 0.0, r_fast)
        if rat is not None and rat.any():
            # The ratio's exposure: the requests behind the baseline. An exponential average
            # with weight a has the precision of (2 - a) / a points, so the sum fades at a / 2.
            # And its dispersion: squared error-count residuals against their binomial
            # variance, both fading slowly; their ratio is the quasi-binomial over-dispersion
            # the count test divides its counts by. Points the count test finds anomalous
            # (p < 0.01) do not teach it: a burst of failures is what it must not get used to.
            w = np.where(rat, weights, 0.0)
            keep_n = np.exp(gap * np.log1p(-0.5 * self.level_alpha))
            base = np.clip(pred, 0.0, 1.0)
            base = np.maximum(base, 0.5 / (v[_RAT_N] + w + 1.0))
            # Nor do points before the baseline is warm: residuals against a level still
            # being found are not the series' noise.
            usual = rat & warm
            if p_count is not None:
                usual &= p_count >= 0.01
            if p_cus is not None:
                # Nor do the windows of a run the CUSUM is adding up: the first weak windows
                # of a rise would otherwise teach the series to be bursty and mute the rest.
                usual &= p_cus >= 0.05
            fade = np.where(usual, 0.99**gap, 1.0)
            v[_RAT_N] = np.where(rat, keep_n * v[_RAT_N] + w, v[_RAT_N])
            v[_RAT_E] = np.where(rat, keep_n * v[_RAT_E] + x * w, v[_RAT_E])
            v[_RAT_DNUM] = fade * v[_RAT_DNUM] + np.where(usual, (clipped * w) ** 2, 0.0)
            v[_RAT_DDEN] = fade * v[_RAT_DDEN] + np.where(usual, w * base * (1.0 - base), 0.0)
        if cnt is not None:
            # The rate's exposure (seconds behind the baseline, fading as the level's weight
            # does) and its dispersion: squared count residuals against the expected count,
            # learnt from warm points the other tests do not find extreme (a byte counter
            # starts at phi = 1 and every point of it is extreme to the count test alone).
            keep_n = np.exp(gap * np.log1p(-0.5 * self.level_alpha))
            usual = cnt & warm & (p_tests >= 0.01)
            fade = np.where(usual, 0.99**gap, 1.0)
            v[_RAT_N] = np.where(cnt, keep_n * v[_RAT_N] + w_c, v[_RAT_N])
            wide = np.clip(resid, -2.0 * cap, 2.0 * cap) * w_c  # a bursty tail is its variance
            v[_RAT_DNUM] = fade * v[_RAT_DNUM] + np.where(usual, wide**2, 0.0)
            expected_k = np.maximum(pred, 0.0) * w_c
            v[_RAT_DDEN] = fade * v[_RAT_DDEN] + np.where(usual, expected_k, 0.0)
            if rebase.any():
                for col in (_RUN_K, _RUN_RATE, _RUN_W):
                    v[col] = np.where(rebase, 0.0, v[col])
        v[_LEVEL] = new_level
        v[_LEVEL_S] = new_level_s
        v[_LEVEL_F] = new_level_f
        v[_TREND_F] = new_trend_f
        v[_SLOW_DAY] = slow_day
        v[_SLOW_WEEK] = slow_week
        v[_CUS_POS] = cus_pos
        v[_CUS_NEG] = cus_neg
        v[_DRIFT_POS] = drift_pos
        v[_DRIFT_NEG] = drift_neg
        v[_R_FAST] = r_fast
        v[_DT] = typical
        self.last_t[idx] = t
        self.n[idx] = n + 1
        v[_LAST_VALUE] = x
        v[_EXPECTED] = pred
        v[_SIGMA] = np.where(np.isfinite(sigma_pt), sigma_pt, sigma)
        v[_SCORE] = score
        if silent is not None:
            v[silent] = kept
        self.which[idx] = which
        if not contiguous:
            self.st[:, s] = v
        return score
