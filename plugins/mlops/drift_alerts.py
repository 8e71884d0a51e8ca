"""The drift alerts of a closed window: ``feature_drift`` and ``prediction_drift``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from opstrata.alerts import AlertEvent, Entity, Evidence, Layer, Severity
from opstrata.plugins.mlops.results import FeatureDrift, WindowDrift

if TYPE_CHECKING:
    from opstrata.plugins.mlops.state import ModelState

__all__ = ["drift_alert", "entity_name", "strength"]


def entity_name(model: str, version: str) -> str:
    """The alert entity of a model version: ``<model>:<version>``, or ``<model>``."""
    return f"{model}:{version}" if version else model


def strength(f: FeatureDrift) -> float:
    if f.p_value is not None:
        return 1.0 - f.p_value
    return min(1.0, (f.distance or 0.0) / (2 * f.threshold)) if f.threshold else 0.0


def _overwhelming(f: FeatureDrift) -> bool:
    # The two-sample p-value counts the reference's noise too (Evidently's chi-squared does not).
    if f.sampling_p_value is not None and f.sampling_p_value > 1e-6:
        return False
    if f.p_value is not None:
        return f.p_value <= 1e-6
    return bool(f.threshold) and (f.distance or 0.0) >= 4 * f.threshold


def drift_alert(
    state: ModelState,
    kind: str,
    verdict: WindowDrift,
    columns: list[FeatureDrift],
    time: int,
    resolved: bool = False,
    basis: str | None = None,
) -> AlertEvent:
    """``basis`` (``gates.Start``): why it starts — ``dataset share``, ``single feature``,
    ``prediction``; for later events, read from the verdict."""
    if basis is None:
        single = kind == "feature_drift" and not verdict.dataset_drift
        basis = (
            "prediction"
            if kind == "prediction_drift"
            else ("single feature" if single else "dataset share")
        )
    # Strongest first; ties (strength saturates at 1) by the two-sample p-value.
    top = sorted(columns, key=lambda f: (-strength(f), f.sampling_p_value or 1.0))
    drifted = [f for f in top if f.drifted]
    entity = entity_name(state.model, state.version)
    if kind == "feature_drift":
        if resolved:
            summary = f"features back within the reference ({verdict.drift_share:.0%} drifted)"
        elif basis == "dataset share" or not drifted:
            summary = (
                f"{len(drifted)} of {len(columns)} features drifted "
                f"({', '.join(f.feature for f in drifted[:3])})"
            )
        else:  # one feature moved overwhelmingly though the dataset share is not reached
            f = next((f for f in drifted if f.role == "feature"), drifted[0])
            summary = (
                f"feature {f.feature} drifted ({f.test}, two-sample p {f.sampling_p_value:.1e}, "
                f"shift {f.shift:.2f} against variation {f.variation:.2f}); "
                f"{len(drifted)} of {len(columns)} features drifted"
            )
        observed, bound = verdict.drift_share, None
    else:
        summary = (
            f"predictions drifted ({', '.join(f'{f.feature}: {f.test}' for f in drifted[:2])})"
            if not resolved
            else "predictions back within the reference"
        )
        observed = top[0].statistic if top else None
        bound = top[0].threshold if top else None
    return AlertEvent(
        time_unix_nano=time,
        kind=kind,
        layer=Layer.MLOPS,
        entity=Entity("model", entity),
        summary=summary,
        # Overwhelming evidence (the input really moved) is an error: it opens an incident by
        # lasting; a drift near the threshold stays a warning until something else agrees.
        severity=Severity.ERROR if any(_overwhelming(f) for f in drifted) else Severity.WARNING,
        score=max((strength(f) for f in drifted), default=0.0),
        resource=dict(state.resource),
        evidence=Evidence(
            series=f"{kind}{{model={state.model},version={state.version}}}",
            observed=observed,
            upper=bound,
            details={
                "window_start_unix_nano": verdict.start_unix_nano,
                "window_end_unix_nano": verdict.end_unix_nano,
                "rows": verdict.rows,
                # The window, or its newest slots alone (a drift that began inside it).
                "scope_seconds": (verdict.end_unix_nano - verdict.start_unix_nano) / 1e9,
                "drift_share": verdict.drift_share,
                "basis": basis,
                "top_features": [
                    {
                        "feature": f.feature,
                        "test": f.test,
                        "statistic": f.statistic,
                        "p_value": f.p_value,
                        "distance": f.distance,
                        "threshold": f.threshold,
                        "drifted": f.drifted,
                        "sampling_p_value": f.sampling_p_value,
                        "shift": f.shift,
                        "variation": f.variation,
                        "seasonal_p_value": f.seasonal_p_value,
                        "seasonal_shift": f.seasonal_shift,
                        "seasonal_variation": f.seasonal_variation,
                    }
                    for f in top[:5]
                ],
            },
        ),
        resolved=resolved,
    )
