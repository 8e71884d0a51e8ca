"""Settings of the MLOps plugin: ``[plugins.mlops]``."""

from __future__ import annotations

from typing import Any

import msgspec

from opstrata.plugins.mlops.stattests import TESTS

__all__ = ["MLOpsConfig", "parse_config"]


class MLOpsConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    window_seconds: float = 600.0
    """Length of the sliding drift window, in event time."""
    window_slots: int = 10
    """The window slides by ``window_seconds / window_slots``; one sketch per slot. Each close
    also tests the newest 1, 2, 4, ... slots alone (a drift that began inside the window shows
    undiluted there): with 60 s slots a sudden shift is tested on a whole slot of it within
    two minutes of its start, wherever it falls."""
    baseline_seconds: float = 600.0
    """Without a posted reference, the first this-many seconds of a model version's telemetry
    become its reference. 0: no automatic baseline (post one). No drift is tested during it."""
    reference_seconds: float = 86400.0
    """After the baseline, the automatic reference keeps learning: every window slot that leaves
    the sliding window joins it, until it covers this much event time (a day: every hour of a
    daily cycle), then it stays. A reference of ten minutes does not represent a day. Set it to
    ``baseline_seconds`` or less for a fixed baseline."""
    season_seconds: float = 86400.0
    """The period of the traffic's cycle (a day). While the automatic reference learns, it also
    keeps one sketch per part of it (``season_buckets``); once a part was learnt (half a season
    ago or more), a drift alert also needs the window unlike the parts it falls in and their
    neighbours (``seasonal.py``): a daily cycle seen the day before raises nothing. 0: off."""
    season_buckets: int = 24
    """Parts of ``season_seconds`` sketched on their own (24: each hour of the day)."""
    learning_p_value: float = 1e-6
    """While the reference is still learning, a drift alert needs overwhelming evidence: a
    drifted column with a two-sample p-value at most this (instead of ``alert_p_value``)."""
    min_rows: int = 30
    """Fewest rows in the reference and in a window for a drift verdict."""
    scan_min_rows: int = 10
    """Fewest rows of a column in the window's newest slots alone for their test (beside the
    window's). They alert on overwhelming evidence only (p ≤ ``learning_p_value``), which the
    sample size is part of: fewer than ~8 rows cannot reach 1e-6 at all, and a sudden shift of
    a model with a few rows a minute would otherwise wait until its slots hold ``min_rows``."""
    drift_share: float = 0.5
    """Evidently's dataset-drift rule: the model drifts when at least this share of its
    features do."""
    stattest: str = ""
    """A test for every column instead of Evidently's default choice (``ks``, ``chisquare``,
    ``z``, ``wasserstein``, ``jensenshannon``, ``psi``)."""
    threshold: float | None = None
    """Threshold for ``stattest`` (default: that test's Evidently default)."""
    alert_p_value: float = 1e-4
    """A drift *alert* starts only when the verdict drifts (Evidently's rule, above) and one of
    its drifted columns is also strong: the p-value of a two-sample test that counts both
    samples' noise (``sampling.py``) at most this (a distance test's distance also at least
    ``alert_distance_factor`` times its threshold), and its shift beyond that noise larger than
    any the reference's own windows showed. A window is tested every slot (1,440 times a day
    with 60 s slots); at p ≤ 0.05 alone, one test in twenty drifts with nothing changed, and
    at 0.001 a model's two prediction columns still gave about one false alert a day (at 576
    tests a day). Once firing, it stays while
    the verdict drifts and a drifted column's shift exceeds the variation. 1.0 alerts on every
    drifted verdict."""
    alert_distance_factor: float = 2.0
    feature_p_value: float = 1e-6
    """A single feature that drifted overwhelmingly raises ``feature_drift`` even when fewer than
    ``drift_share`` of the features drifted: its two-sample p-value and Evidently's p-value at
    most this (a distance test: at least 4 times its threshold), and its shift beyond the
    variation like any alert. 0 turns it off (Evidently's dataset rule only)."""
    alert_variation_factor: float = 1.5
    """... and the column's shift beyond noise must exceed this many times the largest (98th
    percentile) shift of the windows the reference learnt from (their window-to-window
    variation: a daily cycle). More than 1: that estimate comes from one day's windows, and the
    next day's extremes exceed it about half the time."""
    reference_centroids: int = 400
    slot_centroids: int = 100
    max_categories: int = 100
    max_models: int = 1000
    """Model versions tracked at once; telemetry of further ones is counted and ignored."""
    label_horizon_seconds: float = 7 * 24 * 3600.0
    """Predictions wait this long (event time) for their labels, then are forgotten."""
    min_labels: int = 30
    """Fewest labelled predictions in a window for a quality figure used by decay alerts."""
    decay_tolerance: float = 0.1
    """Quality decays when a window's accuracy (classifiers) or RMSE (regressors) is worse than
    the first labelled window's by more than this share ..."""
    decay_p_value: float = 0.001
    """... and the difference is beyond sampling error: one-sided two-proportion z-test of the
    accuracies, F-test of the mean squared errors, p-value at most this. 1.0: tolerance only."""
    tasks: dict[str, str] = {}
    """Model name -> ``classification`` or ``regression`` (inferred when absent)."""
    positive_label: str = ""
    """Positive class of binary classifiers (default ``1``/``true``/``yes``, else the larger)."""
    save_seconds: float = 60.0
    """The drift state (references, windows, learnt variation) is saved at least this often
    (wall time) while model telemetry comes; after a ``kill -9`` the batches since are read
    again from the store and learnt again."""
    save_batches: int = 20000
    """... or after this many batches with model rows, but no more often than every 5 s."""

    @property
    def step_ns(self) -> int:
        return int(self.window_seconds * 1e9) // self.window_slots


def parse_config(config: dict[str, Any]) -> MLOpsConfig:
    try:
        parsed = msgspec.convert(config, MLOpsConfig)
    except msgspec.ValidationError as exc:
        raise ValueError(f"plugins.mlops: {exc}") from exc
    if parsed.stattest and parsed.stattest not in TESTS:
        raise ValueError(f"plugins.mlops.stattest: {parsed.stattest!r} is not one of {TESTS}")
    if parsed.scan_min_rows < 1:
        raise ValueError("plugins.mlops.scan_min_rows must be at least 1")
    if parsed.season_seconds < 0 or parsed.season_buckets < 1:
        raise ValueError("plugins.mlops.season_seconds must be >= 0, season_buckets >= 1")
    if parsed.save_seconds <= 0 or parsed.save_batches < 1:
        raise ValueError("plugins.mlops.save_seconds and save_batches must be positive")
    if parsed.window_seconds <= 0 or parsed.window_slots < 1:
        raise ValueError("plugins.mlops.window_seconds and window_slots must be positive")
    if not 0 < parsed.alert_p_value <= 1 or parsed.alert_distance_factor < 1:
        raise ValueError(
            "plugins.mlops.alert_p_value must be in (0, 1], alert_distance_factor at least 1"
        )
    if not 0 <= parsed.feature_p_value <= 1:
        raise ValueError("plugins.mlops.feature_p_value must be in [0, 1]")
    if parsed.alert_variation_factor < 1:
        raise ValueError("plugins.mlops.alert_variation_factor must be at least 1")
    if not 0 < parsed.learning_p_value <= 1 or parsed.reference_seconds < 0:
        raise ValueError(
            "plugins.mlops.learning_p_value must be in (0, 1], reference_seconds at least 0"
        )
    if not 0 < parsed.drift_share <= 1:
        raise ValueError("plugins.mlops.drift_share must be in (0, 1]")
    for model, task in parsed.tasks.items():
        if task not in ("classification", "regression"):
            raise ValueError(
                f"plugins.mlops.tasks.{model}: {task!r} is not classification/regression"
            )
    return parsed
