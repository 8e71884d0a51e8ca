"""Series measured from few samples: quantiles of a handful of requests, error ratios of a
few dozen, and one alert per family. Normal jitter of such series raises nothing; a real shift
still alerts within a window or two.

The points go through the same path as the server's: the RED windows' log-bucket sketch
(``LogHistogram.quantiles_with_noise``) or the histogram-metric quantiles, then the
``SeriesScorer`` (detector and alert rules) with each point's own noise.
"""

from __future__ import annotations

import math

import numpy as np

from opstrata import AlertEvent, Entity
from opstrata.plugins.aiops.config import parse_config
from opstrata.plugins.aiops.engine import RobustSeasonalDetector
from opstrata.plugins.aiops.metrics import _explicit_quantiles
from opstrata.plugins.aiops.scorer import SeriesScorer
from opstrata.plugins.aiops.series import UP, SeriesMeta
from opstrata.plugins.aiops.sketch import LogHistogram

T0 = 1_767_571_200 * 10**9
MINUTE = 60 * 10**9


def _scorer() -> tuple[SeriesScorer, list[AlertEvent]]:
    events: list[AlertEvent] = []
    return SeriesScorer(parse_config({}), RobustSeasonalDetector({}), events.append), events


def _latency_ids(scorer: SeriesScorer, service: str) -> list[int]:
    metas = [
        SeriesMeta(
            id=0,
            key="",
            name=name,
            kind="latency",
            entity=Entity("service", service),
            unit="ms",
            direction=UP,
        )
        for name in ("latency_p50", "latency_p99")
    ]
    keys = [f"red|service|{service}|{m.name}" for m in metas]
    return scorer.registry.ids(keys, lambda i, key: metas[i]).tolist()


def _feed_windows(scorer: SeriesScorer, ids: list[int], samples: list[np.ndarray], start: int):
    """One point per window and quantile, as RedSeries closes its windows."""
    labels = []
    for w, values in enumerate(samples):
        sketch = LogHistogram.of(np.zeros(values.size, np.int64), values)
        _, q, noise, _ = sketch.quantiles_with_noise((0.5, 0.99))
        t = T0 + (start + w) * MINUTE
        _, got = scorer.feed(
            np.array(ids), np.full(2, t), q[0], noise=noise[0], weights=np.full(2, values.size)
        )
        labels.append(got)
    return np.array(labels)


def test_sparse_latency_quantiles_with_normal_jitter_raise_nothing_and_a_shift_alerts() -> None:
    rng = np.random.default_rng(7)
    scorer, events = _scorer()
    ids = _latency_ids(scorer, "checkout")
    # Eight simulated hours of a quiet service: 3 to 30 requests a minute, heavy-tailed
    # latencies (log-normal around 40 ms, now and then a slow dependency call).
    quiet = []
    for _ in range(480):
        n = int(rng.integers(3, 30))
        values = rng.lognormal(math.log(40), 0.5, n)
        slow = rng.random(n) < 0.03
        values[slow] *= rng.uniform(5, 20, slow.sum())
        quiet.append(values)
    labels = _feed_windows(scorer, ids, quiet, 0)
    assert labels.sum() == 0, f"{labels.sum()} anomalous points on normal jitter"
    assert not events
    # Without each point's own noise the same series alerts: the p99 of a few requests is
    # their slowest one, and the detector would take its jumps for anomalies.
    blind, blind_events = _scorer()
    blind_ids = _latency_ids(blind, "checkout")
    for w, values in enumerate(quiet):
        sketch = LogHistogram.of(np.zeros(values.size, np.int64), values)
        _, q, _, _ = sketch.quantiles_with_noise((0.5, 0.99))
        blind.feed(np.array(blind_ids), np.full(2, T0 + w * MINUTE), q[0])
    assert blind_events, "the sparse series is not noisy enough to tell the difference"
    # A regression: every request three times slower. It alerts in its first two windows,
    # once for the service's latency (p50 and p99 are one family).
    shifted = [rng.lognormal(math.log(120), 0.5, int(rng.integers(3, 30))) for _ in range(5)]
    labels = _feed_windows(scorer, ids, shifted, 480)
    assert labels[:2].any()
    raised = [e for e in events if not e.resolved]
    assert len(raised) >= 1
    assert {e.key for e in raised} == {"aiops/latency/latency|service|checkout|latency"}
    assert raised[0].time_unix_nano <= T0 + 481 * MINUTE


def test_a_p99_of_fewer_than_a_hundred_samples_abstains() -> None:
    rng = np.random.default_rng(3)
    values = rng.lognormal(3, 0.4, 60)
    sketch = LogHistogram.of(np.zeros(60, np.int64), values)
    _, _, noise, counts = sketch.quantiles_with_noise((0.5, 0.99))
    assert counts[0] == 60
    assert np.isinf(noise[0, 1]).all()  # the p99 of 60 values is their largest: no bound
    assert np.isfinite(noise[0, 0]).all() and noise[0, 0].sum() > 0  # the p50's is finite
    big = rng.lognormal(3, 0.4, 5000)
    _, _, noise, _ = LogHistogram.of(np.zeros(5000, np.int64), big).quantiles_with_noise((0.99,))
    assert np.isfinite(noise[0, 0]).all()


def test_quantile_noise_is_an_order_statistic_interval() -> None:
    # The p50's interval (value - below .. value + above) should hold the true median about
    # as often as a one-sigma interval does (68 %), not much less.
    rng = np.random.default_rng(11)
    true_median = math.exp(3.0)
    covered = 0
    trials = 400
    for _ in range(trials):
        values = rng.lognormal(3.0, 0.6, 40)
        sketch = LogHistogram.of(np.zeros(40, np.int64), values)
        _, q, noise, _ = sketch.quantiles_with_noise((0.5,))
        low, high = q[0, 0] - noise[0, 0, 0], q[0, 0] + noise[0, 0, 1]
        covered += low <= true_median <= high
    assert 0.6 <= covered / trials <= 0.9


def test_explicit_bucket_quantiles_are_known_to_their_bucket_only() -> None:
    bounds = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]
    counts = np.array([0, 40, 160, 30, 0, 0, 0, 0, 0], np.float64)
    values, below, above, res_below, res_above = _explicit_quantiles(counts, bounds, None, None)
    assert 0.01 <= values[0] <= 0.025 and 0.025 <= values[1] <= 0.05
    # The resolution reaches the edges of the value's bucket.
    assert math.isclose(values[0] - res_below[0], 0.01) and math.isclose(
        values[0] + res_above[0], 0.025
    )
    assert math.isclose(values[1] - res_below[1], 0.025)
    # The p50's one-sigma ranks (115 ± 7.6 of 230) stay in its bucket: no sampling noise beyond it.
    assert below[0] == 0.0 and above[0] == 0.0
    few = np.array([0, 1, 3, 1, 0, 0, 0, 0, 0], np.float64)
    _, below, above, _, _ = _explicit_quantiles(few, bounds, None, None)
    assert math.isinf(below[1]) and math.isinf(above[1])  # a p99 of five values: abstain


def test_a_quantile_that_leaves_its_bucket_alerts_though_the_bucket_is_wide() -> None:
    # Token counts in a histogram with x4 buckets: the p50 hops inside [256, 1024) for hours,
    # then prompts sixteen times longer put it in [4096, 16384). Inside its bucket the value is
    # a guess, and so is the forecast inside its own; the gap between the buckets is not. (A
    # move to the adjacent bucket is not enough: both are known only to their buckets.)
    bounds = [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536]
    rng = np.random.default_rng(2)
    scorer, events = _scorer()
    meta = SeriesMeta(
        id=0, key="", name="gen_ai.client.token.usage:p50", kind="metric_anomaly",
        entity=Entity("service", "llm-gateway"),
    )  # fmt: skip
    [sid] = scorer.registry.ids(["tokens:p50"], lambda i, key: meta).tolist()

    def window(w: int, scale: float) -> int:
        tokens = rng.lognormal(math.log(500 * scale), 0.3, int(rng.integers(8, 16)))
        counts = np.histogram(tokens, [0, *bounds, np.inf])[0].astype(np.float64)
        values, below, above, res_below, res_above = _explicit_quantiles(counts, bounds, None, None)
        _, label = scorer.feed(
            np.array([sid]), np.array([T0 + w * 30 * 10**9]), np.array([values[0]]),
            noise=np.array([[below[0], above[0]]]),
            resolution=np.array([[res_below[0], res_above[0]]]),
        )  # fmt: skip
        return int(label[0])

    assert sum(window(w, 1.0) for w in range(600)) == 0
    assert not events
    assert sum(window(w, 16.0) for w in range(600, 604)) >= 1
    assert events and not events[0].resolved


def _ratio_scorer() -> tuple[SeriesScorer, list[AlertEvent], int]:
    scorer, events = _scorer()
    meta = SeriesMeta(
        id=0, key="", name="error_ratio", kind="error_rate", entity=Entity("service", "cart"),
        direction=UP, ratio=True,
    )  # fmt: skip
    [sid] = scorer.registry.ids(["red|service|cart|error_ratio"], lambda i, key: meta).tolist()
    return scorer, events, sid


def test_an_error_ratio_of_few_requests_needs_more_than_one_or_two_errors() -> None:
    rng = np.random.default_rng(5)
    scorer, events, sid = _ratio_scorer()
    # Ten hours at 10-40 requests a minute and a 0.5 % error rate, with the odd burst of two
    # or three failures (a dependency hiccup).
    for w in range(600):
        n = int(rng.integers(10, 40))
        errors = int(rng.binomial(n, 0.005)) + (int(rng.integers(2, 4)) if w % 97 == 50 else 0)
        scorer.feed(
            np.array([sid]), np.array([T0 + w * MINUTE]), np.array([errors / n]),
            weights=np.array([float(n)]),
        )  # fmt: skip
    assert not events, [e.summary for e in events]
    # A bad deploy: 40 % of requests fail. Alerts in its first window or the next.
    first = None
    for w in range(600, 605):
        n = int(rng.integers(10, 40))
        _, label = scorer.feed(
            np.array([sid]), np.array([T0 + w * MINUTE]),
            np.array([rng.binomial(n, 0.4) / n]), weights=np.array([float(n)]),
        )  # fmt: skip
        if label[0] and first is None:
            first = w
    assert first is not None and first <= 601
    assert events and events[0].kind == "error_rate"
