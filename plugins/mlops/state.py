"""What the drift monitor keeps per model version and column, and its saved form (JSON)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from opstrata.plugins.mlops.results import WindowDrift
from opstrata.plugins.mlops.sketch import Sketch, sketch_from_state

__all__ = [
    "ColumnState",
    "ModelState",
    "learn_scan_shifts",
    "model_from_state",
    "model_to_state",
]


@dataclass
class ColumnState:
    role: str
    kind: str
    reference: Sketch | None = None
    slots: dict[int, Sketch] = field(default_factory=dict)
    shifts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    """The shift beyond noise (``sampling.py``) of each window the learning reference took in,
    against the reference as it was: how much this traffic's own windows differ from what came
    before (a daily cycle)."""

    pending: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    """Shifts of the windows of an alert still firing: they join ``shifts`` when it ends."""

    scan_shifts: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float16))
    """The same per close for the window's newest slots alone (one column per suffix length of
    ``gates.scan_lengths``, NaN where too few rows): a suffix subtracts more sampling noise
    than the window, so its own variation is measured at its own granularity. float16: a
    shift needs three digits, and this is the largest part of a column's state."""
    scan_pending: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float16))
    season: dict[int, Sketch] = field(default_factory=dict)
    """The learnt reference by part of the season (``seasonal.py``): part index -> sketch."""
    season_last: dict[int, int] = field(default_factory=dict)
    """Part index -> end (event time) of the newest slot it learnt."""
    local_shifts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    """While the reference learns, each window's shift against its own time of day learnt so
    far (``seasonal.local_shift``): the variation within a time of day."""

    def scan_variation(self, index: int) -> float:
        """What a suffix's shift must exceed (as :attr:`variation`); the window's variation
        until this suffix length has shifts of its own (state saved before they were kept)."""
        if self.scan_shifts.ndim != 2 or index >= self.scan_shifts.shape[1]:
            return self.variation
        shifts = self.scan_shifts[:, index].astype(np.float32)
        shifts = shifts[~np.isnan(shifts)]
        if shifts.size == 0:
            return self.variation if self.shifts.size else 0.0
        if shifts.size < 50:
            return float(shifts.max())
        return float(np.quantile(shifts, 0.98))

    def count_pending(self) -> None:
        """Learning ends: the shifts of an alert still firing count now — else a cycle that
        kept one alert firing to the end of the day left a variation of 0 for good."""
        self.shifts = np.concatenate((self.shifts, self.pending))
        self.pending = self.pending[:0]
        if self.scan_pending.size:
            same = self.scan_shifts.shape[1:] == self.scan_pending.shape[1:]
            kept = (self.scan_shifts,) if same else ()
            self.scan_shifts = np.concatenate((*kept, self.scan_pending))
            self.scan_pending = self.scan_pending[:0]

    @property
    def local_variation(self) -> float:
        """What a shift against the same time of day must exceed (as :attr:`variation`)."""
        shifts = self.local_shifts
        if shifts.size == 0:
            return 0.0
        return float(shifts.max() if shifts.size < 50 else np.quantile(shifts, 0.98))

    @property
    def variation(self) -> float:
        """What a drift alert's shift must exceed: the shifts' 98th percentile (the largest
        while fewer than 50), so that a short episode while learning (a fault in the first
        hours) does not blunt the alerts for good."""
        if self.shifts.size == 0:
            return 0.0
        if self.shifts.size < 50:
            return float(self.shifts.max())
        return float(np.quantile(self.shifts, 0.98))


@dataclass
class ModelState:
    model: str
    version: str
    resource: dict[str, str]
    first_ns: int
    last_ns: int = 0
    rows: int = 0
    reference_source: str = "none"
    reference_rows: int = 0
    baseline_until: int | None = None
    learned_until: int | None = None
    """End (event time) of the last slot the automatic reference learnt; None when the
    reference is not learning (posted, or complete)."""
    current_slot: int | None = None
    columns: dict[str, ColumnState] = field(default_factory=dict)
    firing: set[str] = field(default_factory=set)
    last_verdict: bool | None = None


def learn_scan_shifts(state: ModelState, scans: list[WindowDrift | None], limit: int) -> None:
    """The newest slots' shifts at this close, one row per column (NaN: not tested), learnt as
    the window's are (an alerting episode's once it is over)."""
    shifts = {name: np.full(len(scans), np.nan, dtype=np.float16) for name in state.columns}
    for i, suffix in enumerate(scans):
        for f in suffix.features if suffix is not None else ():
            shifts[f.feature][i] = f.shift or 0.0
    for name, col in state.columns.items():
        row = shifts[name][None, :]
        if col.scan_pending.shape[1:] != row.shape[1:]:
            col.scan_pending = row[:0]  # first close, or another number of suffixes
        if col.scan_shifts.shape[1:] != row.shape[1:]:
            col.scan_shifts = row[:0]
        col.scan_pending = np.concatenate((col.scan_pending, row))
        if not state.firing:
            col.scan_shifts = np.concatenate((col.scan_shifts, col.scan_pending))[:limit]
            col.scan_pending = col.scan_pending[:0]


def model_to_state(state: ModelState) -> dict[str, Any]:
    return {
        "model": state.model,
        "version": state.version,
        "resource": state.resource,
        "first_ns": state.first_ns,
        "last_ns": state.last_ns,
        "rows": state.rows,
        "reference_source": state.reference_source,
        "reference_rows": state.reference_rows,
        "baseline_until": state.baseline_until,
        "learned_until": state.learned_until,
        "current_slot": state.current_slot,
        "firing": sorted(state.firing),
        "columns": {
            name: {
                "role": c.role,
                "kind": c.kind,
                "reference": c.reference.to_state() if c.reference else None,
                "slots": [[k, s.to_state()] for k, s in c.slots.items()],
                "shifts": c.shifts.tolist(),
                "pending": c.pending.tolist(),
                "scan_shifts": c.scan_shifts.astype(np.float32).tolist(),
                "scan_pending": c.scan_pending.astype(np.float32).tolist(),
                "local_shifts": c.local_shifts.tolist(),
                "season": [[k, p.to_state(), c.season_last.get(k, 0)] for k, p in c.season.items()],
            }
            for name, c in state.columns.items()
        },
    }


def model_from_state(m: dict[str, Any]) -> ModelState:
    state = ModelState(m["model"], m["version"], m["resource"], m["first_ns"])
    state.last_ns, state.rows = m["last_ns"], m["rows"]
    state.reference_source = m["reference_source"]
    state.reference_rows = m["reference_rows"]
    state.baseline_until = m["baseline_until"]
    state.learned_until = m.get("learned_until")  # absent in files saved before learning
    state.current_slot = m["current_slot"]
    state.firing = set(m["firing"])
    for name, c in m["columns"].items():
        col = ColumnState(c["role"], c["kind"])
        col.reference = sketch_from_state(c["reference"]) if c["reference"] else None
        col.slots = {int(k): sketch_from_state(s) for k, s in c["slots"]}
        col.shifts = np.asarray(c.get("shifts", []), dtype=np.float32)
        col.pending = np.asarray(c.get("pending", []), dtype=np.float32)
        for key in ("scan_shifts", "scan_pending"):  # absent in files saved before scans
            rows = np.asarray(c.get(key, []), dtype=np.float16)
            empty = np.zeros((0, 0), dtype=np.float16)
            setattr(col, key, rows.reshape(rows.shape[0], -1) if rows.size else empty)
        col.local_shifts = np.asarray(c.get("local_shifts", []), dtype=np.float32)
        for index, part, last in c.get("season", []):  # absent in files saved before seasons
            col.season[int(index)] = sketch_from_state(part)
            col.season_last[int(index)] = int(last)
        state.columns[name] = col
    return state
