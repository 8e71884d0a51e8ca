"""When a tested window starts, keeps or ends a drift alert (the verdicts stay Evidently's).

At every slot close the monitor tests the whole window and the **newest slots alone** (the
suffixes of :func:`scan_lengths` slots): a drift that began inside the window shows undiluted
in the suffix that starts after it, long before it is most of the window. Each extra suffix is
one more test per close, so a suffix starts an alert on overwhelming evidence only.

Two bases for ``feature_drift``:

- **dataset drift** (Evidently's rule): at least ``drift_share`` of the features drifted, one of
  them strong (beyond sampling noise at ``alert_p_value`` and beyond the traffic's variation);
- **a single feature** that moved overwhelmingly (``feature_p_value``): the model as a whole has
  not drifted by Evidently's rule, but one input is no longer what the model was trained on —
  what an ML engineer is paged for (a client sending amounts in cents).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from opstrata.plugins.mlops.config import MLOpsConfig
from opstrata.plugins.mlops.results import FeatureDrift, WindowDrift

if TYPE_CHECKING:
    from opstrata.plugins.mlops.state import ModelState

__all__ = ["KINDS", "Start", "columns_of", "kept", "scan_lengths", "start"]

KINDS = ("feature_drift", "prediction_drift")

_OVERWHELMING_DISTANCE = 4.0
"""A distance test's distance at least this many times its threshold counts as overwhelming
(as for the alert's ``error`` severity)."""


def scan_lengths(window_slots: int) -> list[int]:
    """The suffixes tested beside the window: 1, 2, 4, ... slots, shorter than the window.
    Doubling lengths: a drift that began k slots ago is tested on a suffix at least half
    undiluted, with log2(slots) tests per close instead of one per slot."""
    out, k = [], 1
    while k < window_slots:
        out.append(k)
        k *= 2
    return out


def columns_of(verdict: WindowDrift, kind: str) -> list[FeatureDrift]:
    role = "feature" if kind == "feature_drift" else "prediction"
    return [f for f in verdict.features if f.role == role]


class Start:
    """Why an alert starts: the verdict tested, its columns, and the basis."""

    __slots__ = ("basis", "columns", "verdict")

    def __init__(self, verdict: WindowDrift, columns: list[FeatureDrift], basis: str) -> None:
        self.verdict = verdict
        self.columns = columns
        self.basis = basis


def _strong(
    config: MLOpsConfig,
    state: ModelState,
    columns: list[FeatureDrift],
    p_limit: float,
    distance_factor: float,
) -> list[FeatureDrift]:
    """The drifted columns beyond sampling noise at ``p_limit`` (stricter while the reference
    learns), beyond the variation of the reference's own windows, and unlike the same time of
    day in the reference (``seasonal.py``; when a part of the season is learnt)."""
    if state.learned_until is not None:
        p_limit = min(p_limit, config.learning_p_value)
    factor = config.alert_variation_factor
    return [
        f
        for f in columns
        if f.drifted
        and (f.sampling_p_value or 0.0) <= p_limit
        and _beyond_variation(f, factor, p_limit)
        and (f.p_value is not None or (f.distance or 0.0) >= distance_factor * f.threshold)
    ]


def _beyond_variation(f: FeatureDrift, factor: float, p_limit: float) -> bool:
    """Beyond what the traffic's own variation explains. Where the column's time of day is
    learnt (``seasonal.py``), against that part: beyond noise at ``p_limit`` and a shift above
    ``factor`` times the variation within a time of day — the cycle is in the part, so the
    day's variation (which holds the cycle's amplitude, and blunts a real drift by as much)
    is not asked. Otherwise the shift against the reference above the day's variation."""
    if f.seasonal_p_value is not None:
        return f.seasonal_p_value <= p_limit and (f.seasonal_shift or 0.0) > factor * (
            f.seasonal_variation or 0.0
        )
    return (f.shift or 0.0) > factor * (f.variation or 0.0)


def start(
    config: MLOpsConfig, state: ModelState, verdict: WindowDrift, kind: str, suffix: bool
) -> Start | None:
    """Whether ``verdict`` (the window, or a suffix of it when ``suffix``) starts ``kind``."""
    columns = columns_of(verdict, kind)
    condition = verdict.dataset_drift if kind == "feature_drift" else verdict.prediction_drift
    if config.alert_p_value >= 1.0:  # every drifted verdict alerts
        basis = "prediction" if kind == "prediction_drift" else "dataset share"
        return Start(verdict, columns, basis) if condition else None
    # A suffix is one more test at every close: overwhelming evidence only.
    p_limit = min(config.learning_p_value, config.alert_p_value) if suffix else config.alert_p_value
    factor = _OVERWHELMING_DISTANCE if suffix else config.alert_distance_factor
    if kind == "prediction_drift":
        strong = condition and _strong(config, state, columns, p_limit, factor)
        return Start(verdict, columns, "prediction") if strong else None
    single: list[FeatureDrift] = []
    if config.feature_p_value > 0:
        single = _strong(
            config, state, columns, min(config.feature_p_value, p_limit), _OVERWHELMING_DISTANCE
        )
    # The dataset share of a few newest slots is unreliable (Evidently's distances ignore the
    # sample size, and small samples sit far from their own population): there the feature
    # that moved is the better account.
    if single and (suffix or not condition):
        return Start(verdict, columns, "single feature")
    if condition and _strong(config, state, columns, p_limit, factor):
        return Start(verdict, columns, "dataset share")
    return Start(verdict, columns, "single feature") if single else None


def kept(config: MLOpsConfig, verdict: WindowDrift, kind: str) -> bool:
    """A firing alert stays while the tested verdict still has its condition and a drifted
    column is beyond noise and the reference's own variation (a daily cycle's drifted verdicts
    do not keep an alert raised while the reference was learning). With single-feature alerts
    on, one such feature keeps ``feature_drift`` (else it would resolve and start again, as
    the dataset share comes and goes). Where the time of day's part of the reference is learnt,
    the column must also differ from it beyond noise."""
    if kind == "prediction_drift":
        condition = verdict.prediction_drift
    else:
        condition = verdict.dataset_drift or config.feature_p_value > 0
    columns = columns_of(verdict, kind)
    return condition and any(f.drifted and _beyond_variation(f, 1.0, 1.0) for f in columns)
