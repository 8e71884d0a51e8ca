"""Settings of the AIOps plugin: the ``[plugins.aiops]`` section."""

from __future__ import annotations

import fnmatch
from typing import Any

import msgspec

from opstrata.plugins.aiops.engine import SEASONALITY_MASKS

__all__ = ["AiopsConfig", "Override", "parse_config", "score_threshold"]


class Override(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Settings for the series whose name matches ``match`` (a shell pattern, e.g.
    ``system.cpu.*`` or ``latency_p99|checkout*``); the first matching override wins."""

    match: str
    sensitivity: float | None = None
    seasonality: str | None = None
    exclude: bool = False


class AiopsConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    sensitivity: float = 0.5
    """0 (fewest alerts) .. 1 (most). The score threshold is ``1 - 10**-(2 + 6 * (1 - s))``:
    0.5 alerts on points with a tail probability below 1e-5."""
    seasonality: str = "auto"
    """``auto`` (daily and weekly profiles where they explain the data), ``none``, ``daily``,
    ``weekly``."""
    interval_seconds: float = 60.0
    """Width of the event-time windows that RED series and log counts are computed over."""
    lateness_windows: int = 1
    """Windows wait this many widths of event time for late data before they close."""
    other_signal_lateness_windows: int = 4
    """RED and log windows close on their own signal's event time; other signals' batches close
    them only this many widths later. Exporters of different signals lag each other (a span
    batch queued behind a busy exporter, a Collector pipeline per signal): another signal's
    clock alone would close span windows before their spans arrive and drop them as late. A
    service whose spans (or logs) all stop still gets its zero windows, this much later."""
    detector: str = "robust"
    """Name of the registered detector every series gets."""
    detector_params: dict[str, Any] = {}
    warmup: int = 30
    """Points a series needs before it is scored."""
    resolve_after: int = 3
    """Normal points in a row that resolve a firing anomaly."""
    min_spans: int = 5
    """Fewest spans in a window for its error ratio and latency to be a point."""
    exclude: list[str] = []
    """Shell patterns of series names never watched."""
    overrides: list[Override] = []
    store_points: bool = True
    """Keep every scored point in ``aiops_points`` (for ``/series/{id}/points``)."""
    log_templates: bool = True
    """Mine log templates and store one template id per log record."""
    template_similarity: float = 0.5
    template_depth: int = 4
    silence_windows: int = 2
    """A service whose logs stop for this many windows after a steady rate raises log_silence."""
    silence_min_rate: float = 5.0
    """Typical logs per window a service needs before its silence is noticed."""
    save_seconds: float = 60.0
    """Each consumer saves its state (series, detectors, templates, windows) at least this
    often (wall time) while batches come; after a ``kill -9`` the batches since are read again
    from the store and learnt again."""
    save_batches: int = 20000
    """... or after this many batches, but no more often than every 5 s (under load)."""

    def settings_for(self, *names: str) -> tuple[float, str, bool]:
        """(score threshold, seasonality, excluded) of a series known by ``names`` (its name,
        and ``name|entity``); the first override matching any of them applies."""
        if any(fnmatch.fnmatchcase(n, pattern) for pattern in self.exclude for n in names):
            return 1.0, self.seasonality, True
        for override in self.overrides:
            if any(fnmatch.fnmatchcase(n, override.match) for n in names):
                sensitivity = (
                    self.sensitivity if override.sensitivity is None else override.sensitivity
                )
                seasonality = override.seasonality or self.seasonality
                return score_threshold(sensitivity), seasonality, override.exclude
        return score_threshold(self.sensitivity), self.seasonality, False


def score_threshold(sensitivity: float) -> float:
    """The anomaly score above which a point is anomalous, for a sensitivity in [0, 1]."""
    return 1.0 - 10.0 ** -(2.0 + 6.0 * (1.0 - sensitivity))


def parse_config(config: dict[str, Any]) -> AiopsConfig:
    """Validate ``[plugins.aiops]``; ``ValueError`` names the bad key."""
    try:
        parsed = msgspec.convert(config, AiopsConfig)
    except msgspec.ValidationError as exc:
        raise ValueError(f"plugins.aiops: {exc}") from exc
    if not 0.0 <= parsed.sensitivity <= 1.0:
        raise ValueError(f"plugins.aiops.sensitivity: {parsed.sensitivity} is not in [0, 1]")
    seasonalities = [
        parsed.seasonality,
        *(o.seasonality for o in parsed.overrides if o.seasonality),
    ]
    for value in seasonalities:
        if value not in SEASONALITY_MASKS:
            raise ValueError(
                f"plugins.aiops.seasonality: {value!r} is not one of {sorted(SEASONALITY_MASKS)}"
            )
    for override in parsed.overrides:
        if override.sensitivity is not None and not 0.0 <= override.sensitivity <= 1.0:
            raise ValueError(f"plugins.aiops.overrides: sensitivity of {override.match!r}")
    if parsed.save_seconds <= 0 or parsed.save_batches < 1:
        raise ValueError("plugins.aiops.save_seconds and save_batches must be positive")
    if parsed.interval_seconds <= 0:
        raise ValueError("plugins.aiops.interval_seconds: must be positive")
    return parsed
