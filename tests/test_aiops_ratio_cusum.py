"""The error ratio's sequential test (``_ratio_cusum`` in plugins/aiops/engine.py), on the
detector itself: weak windows in a row add up to an alert as soon as the evidence is there, a
jump is caught in its second window,
while binomial noise at the learnt ratio over weeks of windows does not, and the CUSUM's
``exp(-S)`` is a valid tail probability (the end-to-end path of error ratios, real server and
SDK, is in test_aiops_counts.py)."""

from __future__ import annotations

import numpy as np

from opstrata.plugins.aiops.engine import RobustSeasonalDetector

MINUTE = 60 * 10**9
T0 = 1_767_571_200 * 10**9
THRESHOLD = 1 - 1e-5  # sensitivity 0.5
MODES = ("cusum", "pair")


def _detector(series: int, mode: str = "cusum") -> RobustSeasonalDetector:
    detector = RobustSeasonalDetector({"ratio_test": mode})
    detector.configure(np.arange(series), ratio=True)
    return detector


def _feed(detector: RobustSeasonalDetector, errors: np.ndarray, requests: np.ndarray) -> np.ndarray:
    """``errors`` / ``requests`` of shape (windows, series), one window a minute; scores."""
    windows, series = errors.shape
    scores = np.zeros((windows, series))
    ids = np.arange(series)
    for w in range(windows):
        scores[w] = detector.update(
            ids,
            np.full(series, T0 + w * MINUTE),
            errors[w] / requests[w],
            weights=requests[w].astype(np.float64),
        )
    return scores


def test_a_run_of_weak_windows_alerts_where_two_in_a_row_did_not() -> None:
    # Night traffic: 11-22 requests a minute, 1.4 % of them failing, for four hours; then a
    # lasting rise to ~11 % at 16 requests a minute: 2, 1, 2, 2, 1, ... errors a window. No
    # window alone is remarkable, and a window with one error breaks any "two in a row".
    rng = np.random.default_rng(3)
    quiet = 240
    requests = rng.integers(11, 23, (quiet, 1))
    errors = rng.binomial(requests, 0.014)
    fault_k = np.array([[2], [1], [2], [2], [1], [2], [2], [1], [2], [2], [1], [2]])
    requests = np.vstack([requests, np.full_like(fault_k, 16)])
    errors = np.vstack([errors, fault_k])
    scores = {mode: _feed(_detector(1, mode), errors, requests)[:, 0] for mode in MODES}
    for mode, s in scores.items():
        assert s[:quiet].max() < THRESHOLD, mode  # nothing before
        assert s[quiet : quiet + 2].max() < THRESHOLD, mode  # nor one or two weak windows
    # The CUSUMs add the windows up and alert within nine; the rule they replace (each of
    # two windows in a row p < 0.05, then pooled) never does.
    assert (scores["cusum"][quiet : quiet + 9] >= THRESHOLD).any(), scores["cusum"][quiet:]
    assert scores["pair"][quiet:].max() < THRESHOLD, scores["pair"][quiet:]


def test_a_jump_alerts_in_its_second_window() -> None:
    # A bad release at ~20 requests a minute, 1 % failing before: 5 of 26, then 6 of 14. The
    # rise CUSUM (p1 = 7 %) alone gathers 12 nats — not enough; the jump CUSUM (p1 = 27 %)
    # has the evidence of a jump, and no single window decides alone.
    rng = np.random.default_rng(5)
    quiet = 240
    requests = rng.integers(14, 27, (quiet, 1))
    errors = rng.binomial(requests, 0.01)
    requests = np.vstack([requests, [[26], [14]]])
    errors = np.vstack([errors, [[5], [6]]])
    scores = _feed(_detector(1), errors, requests)[:, 0]
    assert scores[:quiet].max() < THRESHOLD
    assert scores[quiet] < THRESHOLD <= scores[quiet + 1], scores[quiet:]


def test_noise_at_the_learnt_ratio_does_not_alert_and_exp_minus_s_is_a_tail() -> None:
    # 60 series, a day of minutes each (~86,000 windows): volumes from 5 to 500 requests a
    # window, error ratios from 0.2 % to 10 %, all binomial at a constant ratio.
    rng = np.random.default_rng(11)
    series, windows = 60, 1440
    volume = np.repeat([5, 20, 100, 500], series // 4)
    ratio = np.tile([0.002, 0.01, 0.03, 0.1, 0.05, 0.005, 0.02, 0.08, 0.001, 0.04], 6)
    requests = np.maximum(rng.poisson(volume, (windows, series)), 1)
    errors = rng.binomial(requests, ratio)
    detector = _detector(series)
    scores = np.zeros((windows, series))
    cusum = np.zeros((windows, series))
    ids = np.arange(series)
    for w in range(windows):
        scores[w] = detector.update(
            ids, np.full(series, T0 + w * MINUTE), errors[w] / requests[w],
            weights=requests[w].astype(np.float64),
        )  # fmt: skip
        cusum[w] = detector.column("rat_cus")
    assert (scores >= THRESHOLD).sum() == 0
    # Under the learnt ratio P(S >= s) <= exp(-s) (Ville): checked where it is measurable,
    # after the warm-up.
    warm = cusum[200:]
    for s in (1.0, 2.0, 3.0, 5.0):
        assert (warm >= s).mean() <= np.exp(-s), (s, (warm >= s).mean())
    assert (warm > 0).any()  # it does move: the check above is not vacuous
