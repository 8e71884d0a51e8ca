"""The reference by time of day: is a window unlike the same hours of the learnt day?

The learning reference is the whole day merged, so the windows of a model whose inputs follow
the time of day (the commute peak, the night's countries) all differ from it, each hour its own
way. The variation learnt from the first day's windows cannot absorb that: each of those windows
was tested against the reference *as it was* (the hours seen so far), and the day's windows
against the finished reference differ from it by other amounts — on the bench's daily-cycle
model, one window in a few hundred of the second day passed the variation gate.

So the reference also keeps one sketch per part of the season (``season_buckets`` of
``season_seconds``: by default each hour of the day), learnt from the same slots as the reference
itself. A drift alert then also asks that the window differ beyond sampling noise from the parts
of the season it spans (merged), and from the same span one part earlier and one part later,
with the two-sample test of ``sampling.py``: the largest p-value counts (the window is normal if
it looks like any of them; the shifted spans absorb a cycle that runs a little early or late,
and daylight saving time). A sudden shift differs from all of them; a cycle seen the day before
from none.

Only parts learnt at least half a season before the window count: during the learning day the
part of the current hour holds the minutes just before the window (the window's own recent past,
which a drift that began an hour ago is already part of). Where no part is usable (the first
day, a posted reference, parts with fewer than ``min_rows`` rows), the gate does not apply and
alerts are as without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from opstrata.plugins.mlops.sampling import SamplingResult, sampling_test
from opstrata.plugins.mlops.sketch import CategoricalSketch, NumericSketch, Sketch

if TYPE_CHECKING:
    from opstrata.plugins.mlops.config import MLOpsConfig
    from opstrata.plugins.mlops.state import ColumnState

__all__ = ["learn", "learn_rows", "local_shift", "seasonal_test"]


def _bucket_ns(config: MLOpsConfig) -> int:
    return int(config.season_seconds * 1e9) // max(1, config.season_buckets)


def _bucket(config: MLOpsConfig, time_ns: int) -> int:
    # The last part takes the remainder when the season does not divide evenly.
    index = (time_ns % int(config.season_seconds * 1e9)) // _bucket_ns(config)
    return min(int(index), config.season_buckets - 1)


def _part(config: MLOpsConfig, col: ColumnState, index: int) -> Sketch:
    part = col.season.get(index)
    if part is None:
        part = col.season[index] = (
            NumericSketch(config.slot_centroids)
            if col.kind == "numerical"
            else CategoricalSketch(config.max_categories)
        )
    return part


def learn(config: MLOpsConfig, col: ColumnState, slot_sketch: Sketch, slot_start_ns: int) -> None:
    """Add a slot the reference learns to its part of the season (by the slot's middle)."""
    if config.season_seconds <= 0 or config.season_buckets < 1 or slot_sketch.n == 0:
        return
    middle = slot_start_ns + config.step_ns // 2
    index = _bucket(config, middle)
    part = _part(config, col, index)
    part.absorb(slot_sketch)  # type: ignore[arg-type]
    part.pack()
    col.season_last[index] = max(col.season_last.get(index, 0), slot_start_ns + config.step_ns)


def learn_rows(
    config: MLOpsConfig, col: ColumnState, times: np.ndarray, values: np.ndarray | pa.Array
) -> None:
    """Add rows that go straight into the reference (the automatic baseline) to their parts."""
    if config.season_seconds <= 0 or config.season_buckets < 1 or times.size == 0:
        return
    season = int(config.season_seconds * 1e9)
    indices = np.minimum((times % season) // _bucket_ns(config), config.season_buckets - 1)
    for index in np.unique(indices).tolist():
        mask = indices == index
        part = _part(config, col, index)
        if isinstance(part, NumericSketch):
            part.update(np.asarray(values)[mask])
        else:
            part.update(values.filter(pa.array(mask)))
        part.pack()
        newest = int(times[mask].max()) + 1
        col.season_last[index] = max(col.season_last.get(index, 0), newest)


def seasonal_test(
    config: MLOpsConfig, col: ColumnState, current: Sketch, start_ns: int, end_ns: int
) -> SamplingResult | None:
    """The two-sample test of ``current`` (the window ``[start_ns, end_ns)``) against the learnt
    parts of the season it spans, merged, and the same span one part earlier and one later:
    the result with the largest p-value (the time of day the window looks most like), or None
    when the window's own span is not usable (the shifted spans only widen it)."""
    if config.season_seconds <= 0 or not col.season:
        return None
    count = config.season_buckets
    first = _bucket(config, start_ns)
    span = (_bucket(config, max(start_ns, end_ns - 1)) - first) % count + 1
    half = int(config.season_seconds * 1e9) // 2
    best: SamplingResult | None = None
    for offset in (0, -1, 1):
        indices = [(first + offset + i) % count for i in range(min(span, count))]
        parts = [col.season.get(i) for i in indices]
        if any(p is None for p in parts) or any(
            col.season_last.get(i, end_ns) > end_ns - half for i in indices
        ):
            if offset == 0:  # not learnt, or learnt too recently: the window's own past
                return None
            continue
        merged = _merged([p for p in parts if p is not None], config)
        if merged.n < config.min_rows:
            if offset == 0:
                return None
            continue
        result = sampling_test(merged, current, config.alert_p_value)
        if best is None or result.p_value > best.p_value:
            best = result
    return best


def local_shift(
    config: MLOpsConfig, col: ColumnState, current: Sketch, start_ns: int, end_ns: int
) -> float | None:
    """While the reference learns: the shift beyond noise of the window against the parts
    learnt so far of its span and the part before it — its recent past, what the seasonal test
    will compare it with a season later. Their spread is the traffic's variation *within* a time
    of day (bursts, a client mix that changes by the minute), the bar for the seasonal shift."""
    if config.season_seconds <= 0 or not col.season:
        return None
    count = config.season_buckets
    first = _bucket(config, start_ns) - 1
    span = (_bucket(config, max(start_ns, end_ns - 1)) - first) % count + 1
    parts = [col.season.get((first + i) % count) for i in range(min(span, count))]
    merged = _merged([p for p in parts if p is not None], config)
    if merged.n < config.min_rows:
        return None
    return sampling_test(merged, current, config.alert_p_value).shift


def _merged(parts: list[Sketch], config: MLOpsConfig) -> Sketch:
    if not parts:
        return CategoricalSketch(config.max_categories)  # empty
    if len(parts) == 1:
        return parts[0]
    out: Sketch = (
        NumericSketch(config.reference_centroids)
        if isinstance(parts[0], NumericSketch)
        else CategoricalSketch(config.max_categories)
    )
    for part in parts:
        out.absorb(part)  # type: ignore[arg-type]
    return out
