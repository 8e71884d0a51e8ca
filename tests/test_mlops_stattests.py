"""The drift statistics computed from sketches against scipy's exact statistics on the raw
samples: within the sketch's stated error bound where it is approximate, equal where exact.

(The server-side path — KS and chi-squared from sketches built from SDK telemetry — is tested
in ``test_mlops.py``; these cover Evidently's large-sample tests and the sketch's edge cases.)
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats
from scipy.spatial import distance

from opstrata.plugins.mlops.sketch import CategoricalSketch, NumericSketch
from opstrata.plugins.mlops.stattests import choose_test, drift_test, ks_statistic


def _numeric(values: np.ndarray, centroids: int, slots: int = 1) -> NumericSketch:
    """As the plugin builds them: batches of 1,000, packed between batches, slots merged."""
    parts = []
    for part in np.array_split(values, slots):
        sketch = NumericSketch(centroids)
        for start in range(0, part.size, 1000):
            sketch.update(part[start : start + 1000])
            sketch.pack()
        parts.append(sketch)
    if slots == 1:
        return parts[0]
    window = NumericSketch(400)
    for part in parts:
        window.absorb(part)
    return window


SHAPES = {
    "normal": lambda rng, n, s: rng.normal(s, 1.0, n),
    "lognormal": lambda rng, n, s: rng.lognormal(1.0 + s, 0.8, n),
    "zero-inflated": lambda rng, n, s: np.where(rng.random(n) < 0.85, 0.0, rng.gamma(2, 3 + s, n)),
    "bimodal": lambda rng, n, s: np.where(
        rng.random(n) < 0.6, rng.normal(0, 1, n), rng.normal(5 + s, 1, n)
    ),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("shift", [0.0, 0.3])
def test_ks_and_wasserstein_from_sketches_are_within_their_bounds(shape: str, shift: float) -> None:
    rng = np.random.default_rng(hash((shape, shift)) % 2**32)
    ref = SHAPES[shape](rng, 5000, 0.0)
    cur = SHAPES[shape](rng, 8000, shift)
    ref_s, cur_s = _numeric(ref, 400), _numeric(cur, 100, slots=4)
    assert choose_test(ref_s, cur_s) == "wasserstein"  # > 1000 reference rows, many values
    wd = drift_test(ref_s, cur_s)
    exact_wd = stats.wasserstein_distance(ref, cur) / max(np.std(ref), 0.001)
    assert abs(wd.statistic - exact_wd) <= wd.error_bound
    assert wd.error_bound < 0.2
    # D only (its p-value for these sizes is scipy's exact O(n*m) walk, slow and tested below).
    exact_d = stats.ks_2samp(ref, cur, method="asymp").statistic
    bound = ref_s.rank_error() + cur_s.rank_error()
    assert abs(ks_statistic(ref_s, cur_s) - exact_d) <= bound < 0.1
    # Exact moments: the normalisation is np.std itself.
    assert ref_s.std == pytest.approx(np.std(ref), rel=1e-12)


def test_jensen_shannon_on_sturges_bins_matches_evidentlys_binning() -> None:
    rng = np.random.default_rng(3)
    ref, cur = rng.lognormal(2, 0.5, 4000), rng.lognormal(2.1, 0.5, 6000)
    result = drift_test(_numeric(ref, 400), _numeric(cur, 100, slots=4), "jensenshannon")
    edges = np.histogram_bin_edges(np.concatenate([ref, cur]), bins="sturges")
    exact = distance.jensenshannon(
        np.histogram(ref, edges)[0] / ref.size, np.histogram(cur, edges)[0] / cur.size
    )
    assert result.statistic == pytest.approx(exact, abs=0.01)


def test_few_distinct_values_are_exact_and_pick_evidentlys_tests() -> None:
    rng = np.random.default_rng(5)
    ref = rng.integers(0, 40, 900).astype(float)  # ages, hours: many ties
    cur = rng.integers(1, 41, 700).astype(float)
    ref_s, cur_s = _numeric(ref, 400), _numeric(cur, 100, slots=4)
    result = drift_test(ref_s, cur_s)
    exact = stats.ks_2samp(ref, cur)
    assert result.test == "ks" and result.error_bound == 0
    assert result.statistic == pytest.approx(exact.statistic, abs=1e-12)
    assert result.p_value == pytest.approx(exact.pvalue, rel=1e-9)
    flags_ref = (rng.random(800) < 0.3).astype(float)
    flags_cur = (rng.random(600) < 0.4).astype(float)
    z = drift_test(_numeric(flags_ref, 400), _numeric(flags_cur, 100, slots=2))
    assert z.test == "z"
    p1, p2 = flags_ref.mean(), flags_cur.mean()
    pooled = (flags_ref.sum() + flags_cur.sum()) / (flags_ref.size + flags_cur.size)
    zstat = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1 / flags_ref.size + 1 / flags_cur.size))
    assert z.p_value == pytest.approx(2 * (1 - stats.norm.cdf(abs(zstat))), rel=1e-9)


def test_categorical_counts_are_exact_in_both_regimes() -> None:
    rng = np.random.default_rng(9)
    cats = np.array(["a", "b", "c", "d"])
    for n_ref, expected in ((800, "chisquare"), (3000, "jensenshannon")):
        ref = cats[rng.choice(4, n_ref, p=[0.4, 0.3, 0.2, 0.1])]
        cur = cats[rng.choice(4, 2000, p=[0.35, 0.3, 0.2, 0.15])]
        ref_s, cur_s = CategoricalSketch(), CategoricalSketch()
        ref_s.update(pa.array(ref))
        for part in np.array_split(cur, 4):
            piece = CategoricalSketch()
            piece.update(pa.array(part))
            cur_s.absorb(piece)
        result = drift_test(ref_s, cur_s)
        assert result.test == expected
        r = np.array([np.sum(ref == c) for c in cats])
        c = np.array([np.sum(cur == c) for c in cats])
        if expected == "chisquare":
            assert result.statistic == pytest.approx(
                stats.chisquare(c, r * c.sum() / r.sum()).statistic, rel=1e-12
            )
        else:
            assert result.statistic == pytest.approx(
                distance.jensenshannon(r / r.sum(), c / c.sum()), rel=1e-12
            )


def test_quality_decay_needs_more_than_sampling_error() -> None:
    from opstrata.plugins.mlops.config import MLOpsConfig
    from opstrata.plugins.mlops.quality import _worse

    config = MLOpsConfig()
    # A first window of 30 labels that scored 100 % by luck: 88.6 % of 100 is within chance.
    assert not _worse("classification", 0.886, 100, 1.0, 30, config)
    assert _worse("classification", 0.5, 100, 1.0, 30, config)
    # Past the tolerance and far beyond chance with many labels on both sides.
    assert _worse("classification", 0.85, 5000, 0.96, 5000, config)
    assert not _worse("classification", 0.95, 5000, 0.96, 5000, config)  # within tolerance
    assert not _worse("regression", 1.15, 100, 1.0, 30, config)
    assert _worse("regression", 2.0, 100, 1.0, 30, config)
    assert _worse("classification", 0.886, 100, 1.0, 30, MLOpsConfig(decay_p_value=1.0))


def test_values_beyond_the_reference_range_are_calibrated_and_strong_with_few_rows() -> None:
    from opstrata.plugins.mlops.sampling import sampling_test

    rng = np.random.default_rng(5)

    def sketch(values: np.ndarray, centroids: int) -> NumericSketch:
        s = NumericSketch(centroids)
        s.update(values)
        return s

    # Exchangeable samples (heavy-tailed amounts): the alert gate's p-value is not too small.
    p = np.array(
        [
            sampling_test(
                sketch(rng.lognormal(4, 0.9, 700), 400),
                sketch(rng.lognormal(4, 0.9, 20), 100),
                1e-4,
            ).p_value
            for _ in range(300)
        ]
    )
    assert (p <= 0.05).mean() <= 0.09 and (p <= 0.01).mean() <= 0.03 and (p < 0.5).any()
    # Twenty rows, 60 % of them 100x (amounts in cents): KS alone is not overwhelming yet;
    # values beyond everything the reference held are.
    ref = sketch(rng.lognormal(4, 0.9, 700), 400)
    cur = rng.lognormal(4, 0.9, 20)
    cur[:12] *= 100
    ks_p = stats.ks_2samp(cur, rng.lognormal(4, 0.9, 700), method="asymp").pvalue
    assert ks_p > 1e-7
    assert sampling_test(ref, sketch(cur, 100), 1e-4).p_value <= 1e-9
