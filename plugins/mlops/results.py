"""What the drift and quality computations report (API responses and stored history)."""

from __future__ import annotations

import msgspec

__all__ = ["FeatureDrift", "ModelInfo", "QualityWindow", "WindowDrift"]


class FeatureDrift(msgspec.Struct, frozen=True, kw_only=True):
    feature: str
    role: str
    """``feature`` or ``prediction``."""
    kind: str
    test: str
    statistic: float
    p_value: float | None
    distance: float | None
    threshold: float
    drifted: bool
    error_bound: float
    """Bound on |this statistic - the exact one on the raw values| (KS D, normed Wasserstein);
    0 when the sketches are exact (categories, few distinct values)."""
    reference_rows: int
    current_rows: int
    sampling_p_value: float | None = None
    """p-value of a two-sample test counting both samples' noise (KS; chi-squared test of
    homogeneity for categories): what a drift *alert* asks, beside the verdict."""
    shift: float | None = None
    """Largest difference of the distribution functions (or of one category's share) beyond
    what sampling reaches at ``alert_p_value``; 0 within the noise."""
    variation: float | None = None
    """The largest ``shift`` of the reference's own windows: an alert needs more."""
    seasonal_p_value: float | None = None
    """Two-sample p-value against the learnt part of the season (hour of the day) the window
    looks most like (``seasonal.py``); None when not asked (the column could not alert anyway)
    or no part is learnt yet."""
    seasonal_shift: float | None = None
    """The shift beyond noise against that part: with a part learnt, an alert needs it above
    ``seasonal_variation`` (instead of ``shift`` above ``variation``)."""
    seasonal_variation: float | None = None
    """The largest (98th percentile) shift of the learning day's windows against their own time
    of day learnt so far: the variation within a time of day."""


class WindowDrift(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    version: str
    start_unix_nano: int
    end_unix_nano: int
    live: bool
    """True for the window still open (evaluated on request, not stored)."""
    rows: int
    dataset_drift: bool
    drift_share: float
    """Share of features that drifted (Evidently's dataset-drift score)."""
    drifted_features: list[str]
    prediction_drift: bool
    features: list[FeatureDrift]


class QualityWindow(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    version: str
    start_unix_nano: int
    end_unix_nano: int
    task: str
    labelled: int
    accuracy: float | None = None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    roc_auc: float | None = None
    mae: float | None = None
    rmse: float | None = None
    decayed: bool = False


class ModelInfo(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    version: str
    entity: str
    """The alert entity name: ``<model>:<version>``, or ``<model>`` without a version."""
    resource: dict[str, str]
    rows: int
    first_unix_nano: int
    last_unix_nano: int
    features: dict[str, str]
    """Column -> ``<role>/<kind>``."""
    reference: str
    """``baseline``, ``collecting baseline``, ``range``, ``dataset`` or ``none``."""
    reference_rows: int
    reference_learning: bool
    """The automatic reference still learns (it has covered less than ``reference_seconds``):
    alerts need overwhelming evidence meanwhile."""
    state_bytes: int
    """Sketch bytes held for this model version (reference and window slots)."""
    dataset_drift: bool | None
    firing: list[str]
