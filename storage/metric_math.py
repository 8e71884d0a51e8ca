"""Range-query arithmetic on metric points, in numpy (one pass over columns, no object per point).

Points arrive sorted by series, then time. Cumulative series become per-point increases:

* the first point of a series counts in full only when the series *started* inside the fetched
  range (its ``StartTimeUnix`` is not before the range); otherwise it is only the baseline;
* a **reset** — a new ``StartTimeUnix``, or a monotonic value (or histogram count) that went
  down — starts again from zero, so the increase is the new value itself;
* otherwise the increase is the difference to the previous point.

Delta series are increases already. Increases fall into the step that holds their point.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "cell_index",
    "exp_dense",
    "explicit_quantiles",
    "exponential_quantiles",
    "increases",
    "last_per_cell",
]


def increases(
    sid: np.ndarray,
    time: np.ndarray,
    start_time: np.ndarray,
    values: np.ndarray,
    counts: np.ndarray,
    cumulative: np.ndarray,
    fetch_lo: int,
    monotonic: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """``(increase, counted)`` per point. ``values`` is 1-D (sums) or 2-D (bucket counts);
    ``counts`` is what decides a monotonic reset (the value itself, or a histogram's count)."""
    del time
    n = len(sid)
    same = np.zeros(n, dtype=bool)
    same[1:] = sid[1:] == sid[:-1]
    prev = np.roll(np.arange(n), 1)
    restarted = start_time != start_time[prev]
    if monotonic:
        restarted |= counts < counts[prev]
    continues = same & ~restarted & cumulative
    if values.ndim == 1:
        delta = np.where(continues, values - values[prev], values)
    else:
        delta = np.where(continues[:, None], values - values[prev], values)
    first_counts = start_time >= fetch_lo
    counted = ~cumulative | same | first_counts
    return delta, counted


def cell_index(group: np.ndarray, bucket: np.ndarray, n_buckets: int) -> np.ndarray:
    return group.astype(np.int64) * n_buckets + bucket


def last_per_cell(sid: np.ndarray, bucket: np.ndarray) -> np.ndarray:
    """Row positions of the last point of each (series, step) run (rows sorted by series, time)."""
    n = len(sid)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    change = np.ones(n, dtype=bool)
    change[:-1] = (sid[1:] != sid[:-1]) | (bucket[1:] != bucket[:-1])
    return np.flatnonzero(change)


def explicit_quantiles(
    counts: np.ndarray, bounds: np.ndarray, q: float, lo: np.ndarray, hi: np.ndarray
) -> np.ndarray:
    """Quantile ``q`` of each row of bucket counts (``len(bounds) + 1`` buckets), interpolating
    linearly inside the bucket; ``lo``/``hi`` (the observed min and max, NaN when unknown)
    close the two open-ended buckets. NaN where a row is empty."""
    rows, width = counts.shape
    total = counts.sum(axis=1)
    out = np.full(rows, np.nan)
    ok = total > 0
    if not ok.any():
        return out
    cum = np.cumsum(counts, axis=1)
    rank = q * total
    idx = np.argmax(cum >= rank[:, None], axis=1)
    before = np.where(idx > 0, cum[np.arange(rows), np.maximum(idx - 1, 0)], 0)
    in_bucket = counts[np.arange(rows), idx]
    frac = np.where(in_bucket > 0, (rank - before) / np.maximum(in_bucket, 1), 0.0)
    first_lower = np.where(np.isnan(lo), min(0.0, bounds[0]) if len(bounds) else 0.0, lo)
    last_upper = np.where(np.isnan(hi), bounds[-1] if len(bounds) else 0.0, hi)
    padded_lower = np.concatenate(([np.nan], bounds))
    padded_upper = np.concatenate((bounds, [np.nan]))
    lower = np.where(idx == 0, first_lower, padded_lower[np.minimum(idx, width - 1)])
    upper = np.where(idx == width - 1, last_upper, padded_upper[np.minimum(idx, width - 1)])
    value = lower + (upper - lower) * frac
    value = np.clip(value, np.where(np.isnan(lo), -np.inf, lo), np.where(np.isnan(hi), np.inf, hi))
    out[ok] = value[ok]
    return out


def exp_dense(
    offsets: np.ndarray,
    flat_counts: np.ndarray,
    parent: np.ndarray,
    position: np.ndarray,
    scales: np.ndarray,
    target_scale: int,
    rows: int,
) -> tuple[np.ndarray, int]:
    """Exponential-histogram buckets of every row on one grid at ``target_scale`` (downscaled:
    index ``i`` at scale ``s`` is ``i >> (s - target)``); ``(dense, first_index)``."""
    if len(flat_counts) == 0:
        return np.zeros((rows, 1), dtype=np.float64), 0
    index = (offsets[parent].astype(np.int64) + position) >> (
        scales[parent].astype(np.int64) - target_scale
    )
    first = int(index.min())
    width = int(index.max()) - first + 1
    dense = np.zeros((rows, width), dtype=np.float64)
    np.add.at(dense, (parent, index - first), flat_counts)
    return dense, first


def exponential_quantiles(
    positive: np.ndarray,
    pos_first: int,
    negative: np.ndarray,
    neg_first: int,
    zero: np.ndarray,
    scale: int,
    q: float,
    lo: np.ndarray,
    hi: np.ndarray,
) -> np.ndarray:
    """Quantile ``q`` per row of exponential-histogram buckets at ``scale``; inside a bucket
    ``(base**i, base**(i+1)]`` the value is interpolated log-linearly (the buckets are equal in
    log space). Clamped to the observed min and max when known. NaN for empty rows."""
    base = 2.0 ** (2.0**-scale)
    rows = zero.shape[0]
    # One ordered row of buckets: negatives from the most negative, the zero bucket, positives.
    neg_idx = neg_first + np.arange(negative.shape[1])[::-1]
    pos_idx = pos_first + np.arange(positive.shape[1])
    counts = np.concatenate((negative[:, ::-1], zero[:, None], positive), axis=1)
    lower = np.concatenate((-(base ** (neg_idx + 1.0)), [0.0], base**pos_idx))
    upper = np.concatenate((-(base**neg_idx), [0.0], base ** (pos_idx + 1.0)))
    total = counts.sum(axis=1)
    out = np.full(rows, np.nan)
    ok = total > 0
    if not ok.any():
        return out
    cum = np.cumsum(counts, axis=1)
    rank = q * total
    idx = np.argmax(cum >= rank[:, None], axis=1)
    before = np.where(idx > 0, cum[np.arange(rows), np.maximum(idx - 1, 0)], 0)
    in_bucket = counts[np.arange(rows), idx]
    frac = np.where(in_bucket > 0, (rank - before) / np.maximum(in_bucket, 1), 0.0)
    lo_b, hi_b = lower[idx], upper[idx]
    with np.errstate(divide="ignore", invalid="ignore"):
        positive_value = lo_b * (hi_b / lo_b) ** frac
        negative_value = -((-lo_b) * ((-hi_b) / (-lo_b)) ** frac)
    value = np.where(lo_b > 0, positive_value, np.where(hi_b < 0, negative_value, 0.0))
    value = np.clip(value, np.where(np.isnan(lo), -np.inf, lo), np.where(np.isnan(hi), np.inf, hi))
    out[ok] = value[ok]
    return out
