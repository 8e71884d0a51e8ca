"""The streaming path of one family of series: ids -> detector -> alerts (-> stored points).

``opstrata detect`` runs this same object on one series read from a CSV file, so offline
scores are the streaming scores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa

from opstrata import AlertEvent
from opstrata.detectors import Detector
from opstrata.plugins.aiops.alerting import ARRAYS, AlertTracker
from opstrata.plugins.aiops.config import AiopsConfig
from opstrata.plugins.aiops.engine import TailCounts
from opstrata.plugins.aiops.series import SeriesMeta, SeriesRegistry

__all__ = ["POINTS_SCHEMA", "SeriesScorer"]

POINTS_SCHEMA = pa.schema(
    [
        ("SeriesId", pa.int64()),
        ("TimeUnix", pa.int64()),
        ("Value", pa.float64()),
        ("Expected", pa.float64()),
        ("Score", pa.float64()),
        ("Label", pa.int8()),
    ]
)


class SeriesScorer:
    """Scores points of registered series and raises alerts for them."""

    def __init__(
        self,
        config: AiopsConfig,
        detector: Detector,
        emit: Callable[[AlertEvent], None],
        keep_points: bool = False,
    ) -> None:
        self.config = config
        self.registry = SeriesRegistry(config)
        self.detector = detector
        self.tracker = AlertTracker(self.registry, emit, config.resolve_after)
        self.keep_points = keep_points
        self.pending_points: list[pa.RecordBatch] = []
        self.points_scored = 0
        self.new_series: list[SeriesMeta] = []

    def _configure_new(self) -> None:
        configure = getattr(self.detector, "configure", None)
        for meta in self.registry.take_new():
            if configure is not None and not meta.excluded:
                configure(
                    np.array([meta.id]),
                    seasonality=meta.seasonality,
                    poisson=meta.counts,
                    ratio=meta.ratio,
                    rate=meta.rate,
                )
            self.new_series.append(meta)

    def feed(
        self,
        ids: np.ndarray,
        times: np.ndarray,
        values: np.ndarray,
        exemplars: Sequence[Sequence[str]] | None = None,
        noise: np.ndarray | None = None,
        weights: np.ndarray | None = None,
        resolution: np.ndarray | None = None,
        quantiles: np.ndarray | None = None,
        tail_counts: TailCounts | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Score points (ids from ``self.registry``; -1 are skipped); returns (scores, labels)
        in the order given. ``noise``: each point's own standard error (a quantile of few
        samples); ``weights``: the sample count behind a ratio or quantile point, the seconds
        a rate point covers;
        ``resolution``: how far below/above the value the truth may be because only its
        bucket is known; ``quantiles`` and ``tail_counts``: the level of a quantile point and
        how many of its samples lie surely beyond a threshold (indices as given here; see the
        detector)."""
        self._configure_new()
        ids = np.asarray(ids, np.int64)
        times = np.asarray(times, np.int64)
        values = np.asarray(values, np.float64)
        scores = np.zeros(ids.size)
        labels = np.zeros(ids.size, np.int8)
        keep = np.flatnonzero((ids >= 0) & np.isfinite(values))
        if not keep.size:
            return scores, labels
        # Time order (stable): the detector needs each series' points in order.
        keep = keep[np.argsort(times[keep], kind="stable")]
        k_ids, k_times, k_values = ids[keep], times[keep], values[keep]
        extra = {
            "noise": noise,
            "weights": weights,
            "resolution": resolution,
            "quantiles": quantiles,
        }
        if getattr(self.detector, "point_noise", False) and any(
            v is not None for v in extra.values()
        ):
            kept: dict[str, Any] = {
                k: None if v is None else np.asarray(v, np.float64)[keep] for k, v in extra.items()
            }
            if tail_counts is not None:
                kept["tail_counts"] = lambda points, thresholds: tail_counts(
                    keep[points], thresholds
                )
            k_scores = self.detector.update(  # type: ignore[call-arg]
                k_ids, k_times, k_values, **kept
            )
        else:
            k_scores = self.detector.update(k_ids, k_times, k_values)
        expected = getattr(self.detector, "point_expected", None)
        sigma = getattr(self.detector, "point_sigma", None)
        tests = getattr(self.detector, "point_test", None)
        if expected is None or sigma is None or tests is None:
            expected = np.full(keep.size, np.nan)
            sigma = np.full(keep.size, np.nan)
            tests = np.zeros(keep.size, np.int64)
        k_exemplars = [exemplars[i] for i in keep.tolist()] if exemplars is not None else None
        k_labels = self.tracker.observe(
            k_ids, k_times, k_values, k_scores, expected, sigma, tests, k_exemplars
        )
        scores[keep] = k_scores
        labels[keep] = k_labels
        self.points_scored += keep.size
        if self.keep_points:
            self.pending_points.append(
                pa.RecordBatch.from_arrays(
                    [
                        pa.array(k_ids),
                        pa.array(k_times),
                        pa.array(k_values),
                        pa.array(expected),
                        pa.array(k_scores),
                        pa.array(k_labels),
                    ],
                    schema=POINTS_SCHEMA,
                )
            )
        return scores, labels

    def state(self) -> dict[str, Any]:
        """What a restart needs to go on where it stopped: series, detector and alert state."""
        arrays = getattr(self.detector, "state_arrays", None)
        tracker = self.tracker
        size = len(self.registry.group_keys)
        return {
            "metas": msgspec.msgpack.encode(self.registry.metas),
            "ids": dict(self.registry._ids),
            "detector": {k: np.array(v) for k, v in arrays().items()} if arrays else None,
            "tracker_groups": {name: np.array(getattr(tracker, name)[:size]) for name in ARRAYS},
            "last_sent": msgspec.msgpack.encode(tracker.last_sent),
            "peak_point": dict(tracker.peak_point),
        }

    def restore(self, state: dict[str, Any]) -> None:
        metas = msgspec.msgpack.decode(state["metas"], type=list[SeriesMeta])
        registry = self.registry
        for meta in metas:
            registry._add(meta.key, meta)
        for key, sid in state["ids"].items():
            registry._ids.setdefault(key, sid)  # keys skipped on purpose stay skipped
        registry.take_new()  # known series: neither reconfigured nor stored again
        load = getattr(self.detector, "load_arrays", None)
        if load is not None and state.get("detector") is not None:
            load(state["detector"])
        tracker = self.tracker
        tracker._grow(len(registry.group_keys))
        if "tracker_groups" not in state:
            return  # saved before alerts were grouped: firing anomalies are not carried over
        for name, values in state["tracker_groups"].items():
            getattr(tracker, name)[: values.size] = values
        tracker.last_sent = msgspec.msgpack.decode(state["last_sent"], type=dict[int, AlertEvent])
        tracker.peak_point = dict(state["peak_point"])

    def take_points(self) -> list[pa.RecordBatch]:
        points, self.pending_points = self.pending_points, []
        return points

    def take_new_series(self) -> list[SeriesMeta]:
        new, self.new_series = self.new_series, []
        return new
