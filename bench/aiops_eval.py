"""A labelled evaluation set for the AIOps detectors, and event-level scores on it.

    python bench/aiops_eval.py [--per-type 20] [--sensitivity 0.5 0.7]
    python bench/aiops_eval.py --counts rates --count-mean 0.5   # counters of few events

Series are generated (seeded) on 5-minute steps over 14 days, with backgrounds that real
metrics have — flat noise, daily and daily+weekly seasonality, a wandering AR(1) level, low
Poisson counts, heavy tails, irregular sampling, a steady trend — and one injected anomaly of
each type in the second week (spike, dip, level shift, trend change, variance change, a
missing daily peak), plus anomaly-free copies of every background.

``--counts``: the ``counts`` background as generated (``plain``, the default), rounded to whole
events after the anomaly is injected and fed as values (``whole``), or the same whole counts fed
as a counter's rate per second with the seconds each covers (``rates``: the detector's count
test of rates); ``--count-mean`` its mean events per step (4).

Every series goes through the streaming path (``SeriesScorer``: detector + alert rules) in
batches of one hour, all series at once. An *alarm* is a point labelled anomalous after at
least ``--gap`` normal points; it is a true positive when it starts inside the anomaly's window
(onset .. onset + window), a false alarm anywhere else. Reported: event-level precision and
recall, time to detect (median, in points and minutes), and false alarms per series-day.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass

import numpy as np

from opstrata import Entity
from opstrata.plugins.aiops.config import parse_config
from opstrata.plugins.aiops.engine import RobustSeasonalDetector
from opstrata.plugins.aiops.scorer import SeriesScorer
from opstrata.plugins.aiops.series import SeriesMeta

T0 = 1_767_571_200 * 10**9  # Monday 2026-01-05
STEP = 300 * 10**9
DAYS = 14
N = DAYS * 288
BACKGROUNDS = ("noise", "daily", "weekly", "ar1", "counts", "heavy", "irregular", "trend")
ANOMALIES = ("none", "spike", "dip", "shift", "trend_change", "variance", "missing_peak")
COUNTS = {"mean": 4.0, "mode": "plain"}
"""The ``counts`` background: mean events per step, and how it is fed (``--counts``)."""
WINDOW = {
    "spike": 6,
    "dip": 6,
    "shift": 48,
    "trend_change": 96,
    "variance": 72,
    "missing_peak": 72,
    "none": 0,
}


@dataclass
class Case:
    background: str
    anomaly: str
    times: np.ndarray
    values: np.ndarray
    onset: int  # index of the first anomalous point; -1 for none


def background(kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """(times, values, noise scale)."""
    times = T0 + np.arange(N) * STEP
    hours = np.arange(N) * 5 / 60
    sigma = 1.0
    if kind == "noise":
        values = 50 + rng.normal(0, 2, N)
        sigma = 2
    elif kind == "daily":
        values = 50 + 20 * np.sin(2 * np.pi * hours / 24 + rng.uniform(0, 6)) + rng.normal(0, 2, N)
        sigma = 2
    elif kind == "weekly":
        weekend = np.where((hours // 24) % 7 >= 5, 0.4, 1.0)
        daily = 30 * np.maximum(np.sin(2 * np.pi * (hours - 6) / 24), 0)
        values = 10 + daily * weekend + rng.normal(0, 1.5, N)
        sigma = 1.5
    elif kind == "ar1":
        e = rng.normal(0, 1, N)
        values = np.zeros(N)
        for i in range(1, N):
            values[i] = 0.95 * values[i - 1] + e[i]
        values += 100
        sigma = 3.2
    elif kind == "counts":
        mean = COUNTS["mean"]
        values = rng.poisson(mean * (1 + 0.5 * np.sin(2 * np.pi * hours / 24)), N).astype(float)
        sigma = max(math.sqrt(mean), 1.0) if mean != 4 else 2
    elif kind == "heavy":
        values = 20 + rng.standard_t(4, N) * 1.5
        sigma = 2.1
    elif kind == "irregular":
        keep = np.sort(rng.choice(N, N // 3, replace=False))
        times = times[keep]
        values = 30 + 10 * np.sin(2 * np.pi * hours[keep] / 24) + rng.normal(0, 1, keep.size)
        return times, values, 1.0
    else:  # trend
        values = 10 + hours * 0.05 + rng.normal(0, 1, N)
        sigma = 1
    return times, values, sigma


def inject(
    kind: str, times: np.ndarray, values: np.ndarray, sigma: float, rng: np.random.Generator
) -> int:
    n = values.size
    onset = int(rng.integers(int(n * 0.55), int(n * 0.85)))
    size = rng.uniform(6, 10) * sigma
    if kind == "spike":
        values[onset] += size
    elif kind == "dip":
        values[onset] -= size
    elif kind == "shift":
        values[onset:] += rng.choice([-1, 1]) * rng.uniform(3, 5) * sigma
    elif kind == "trend_change":
        values[onset:] += np.arange(n - onset) * sigma * rng.uniform(0.05, 0.1)
    elif kind == "variance":
        end = min(n, onset + WINDOW["variance"])
        values[onset:end] += rng.normal(0, 3 * sigma, end - onset)
    elif kind == "missing_peak":
        hours = (times - T0) / 3.6e12
        day_start = onset - onset % max(1, round(n / (hours[-1] / 24 + 1e-9)))
        day = (hours >= hours[day_start]) & (hours < hours[day_start] + 24)
        baseline = np.median(values[day])
        values[day] = np.minimum(values[day], baseline) + rng.normal(0, sigma * 0.3, day.sum())
        onset = int(np.argmax(day))
    else:
        return -1
    return onset


def make_cases(per_type: int, seed: int) -> list[Case]:
    rng = np.random.default_rng(seed)
    cases = []
    for bg in BACKGROUNDS:
        for anomaly in ANOMALIES:
            if anomaly == "missing_peak" and bg not in ("daily", "weekly"):
                continue
            for _ in range(per_type):
                times, values, sigma = background(bg, rng)
                onset = inject(anomaly, times, values, sigma, rng)
                if bg == "counts" and COUNTS["mode"] != "plain":
                    values = np.maximum(np.round(values), 0.0)
                cases.append(Case(bg, anomaly, times, values, onset))
    return cases


def score(cases: list[Case], sensitivity: float, params: dict | None = None) -> list[np.ndarray]:
    params = params or {}
    as_rates = COUNTS["mode"] == "rates"
    config = parse_config({"sensitivity": sensitivity})
    scorer = SeriesScorer(config, RobustSeasonalDetector(params), emit=lambda event: None)
    ids = scorer.registry.ids(
        [f"case{i}" for i in range(len(cases))],
        lambda i, key: SeriesMeta(
            id=0,
            key=key,
            name=key,
            kind="metric_anomaly",
            entity=Entity("metric", key),
            rate=as_rates and cases[i].background == "counts",
        ),
    )
    step_s = STEP / 1e9
    labels = [np.zeros(c.values.size, np.int8) for c in cases]

    hour = 12 * STEP
    for start in range(T0, T0 + N * STEP, hour):
        batch_ids, batch_t, batch_v, batch_w, where = [], [], [], [], []
        for i, case in enumerate(cases):
            lo, hi = np.searchsorted(case.times, [start, start + hour])
            if hi > lo:
                batch_ids.append(np.full(hi - lo, ids[i]))
                batch_t.append(case.times[lo:hi])
                rate = as_rates and case.background == "counts"
                batch_v.append(case.values[lo:hi] / (step_s if rate else 1.0))
                batch_w.append(np.full(hi - lo, step_s if rate else 0.0))
                where.append((i, lo, hi))
        _, got = scorer.feed(
            np.concatenate(batch_ids),
            np.concatenate(batch_t),
            np.concatenate(batch_v),
            weights=np.concatenate(batch_w) if as_rates else None,
        )
        at = 0
        for i, lo, hi in where:
            labels[i][lo:hi] = got[at : at + hi - lo]
            at += hi - lo
    return labels


def alarms(label: np.ndarray, gap: int) -> np.ndarray:
    """Indices where an alarm starts: a labelled point with no labelled point in the
    ``gap`` points before it."""
    hits = np.flatnonzero(label)
    if not hits.size:
        return hits
    return hits[np.r_[True, np.diff(hits) > gap]]


def evaluate(cases: list[Case], labels: list[np.ndarray], gap: int) -> dict:
    tp = fp = 0
    ttd: dict[str, list[int]] = {a: [] for a in ANOMALIES}
    found: dict[str, list[int]] = {a: [] for a in ANOMALIES}
    fa_by_bg: dict[str, list[float]] = {b: [0, 0.0] for b in BACKGROUNDS}
    days = 0.0
    for case, label in zip(cases, labels, strict=True):
        span_days = (case.times[-1] - case.times[0]) / 86_400e9
        days += span_days
        fa_by_bg[case.background][1] += span_days
        starts = alarms(label, gap)
        hit = None
        for a in starts.tolist():
            window_end = case.onset + WINDOW[case.anomaly] if case.onset >= 0 else -1
            if case.onset >= 0 and case.onset <= a <= window_end:
                if hit is None:
                    hit = a
                continue
            if case.onset >= 0 and window_end < a <= window_end + WINDOW[case.anomaly]:
                continue  # the tail of a lasting anomaly (re-based level): neither
            fp += 1
            fa_by_bg[case.background][0] += 1
        if case.onset >= 0:
            found[case.anomaly].append(hit is not None)
            if hit is not None:
                tp += 1
                minutes = (case.times[hit] - case.times[case.onset]) / 60e9
                ttd[case.anomaly].append(minutes)
    total = sum(len(v) for v in found.values())
    return {
        "precision": tp / max(tp + fp, 1),
        "recall": tp / max(total, 1),
        "false_alarms_per_series_day": fp / days,
        "recall_by_type": {a: float(np.mean(v)) for a, v in found.items() if v},
        "ttd_minutes_median": {a: float(np.median(v)) for a, v in ttd.items() if v},
        "false_alarms_per_day_by_background": {
            b: v[0] / max(v[1], 1e-9) for b, v in fa_by_bg.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-type", type=int, default=10)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--gap", type=int, default=12, help="normal points that end an alarm")
    parser.add_argument("--sensitivity", type=float, nargs="+", default=[0.5])
    parser.add_argument("--params", default="{}", help="detector parameters as JSON")
    parser.add_argument("--counts", choices=("plain", "whole", "rates"), default="plain")
    parser.add_argument("--count-mean", type=float, default=4.0)
    args = parser.parse_args()
    COUNTS.update(mean=args.count_mean, mode=args.counts)
    cases = make_cases(args.per_type, args.seed)
    print(
        f"{len(cases)} series, {sum(c.values.size for c in cases):,} points, "
        f"{sum(c.onset >= 0 for c in cases)} anomalies"
    )
    for sensitivity in args.sensitivity:
        result = evaluate(cases, score(cases, sensitivity, json.loads(args.params)), args.gap)
        print(
            f"\nsensitivity {sensitivity}: precision {result['precision']:.3f}, recall "
            f"{result['recall']:.3f}, false alarms/series-day "
            f"{result['false_alarms_per_series_day']:.4f}"
        )
        print("  recall by type:", {k: round(v, 2) for k, v in result["recall_by_type"].items()})
        print(
            "  median time to detect (min):",
            {k: round(v) for k, v in result["ttd_minutes_median"].items()},
        )
        print(
            "  false alarms/day by background:",
            {k: round(v, 3) for k, v in result["false_alarms_per_day_by_background"].items()},
        )


if __name__ == "__main__":
    main()
