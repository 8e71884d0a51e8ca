"""Drift per model version and column over sliding event-time windows, from sketches.

Each model version has, per column, a reference sketch and one sketch per window slot (the
window slides by one slot). When event time enters a new slot, the window that just closed is
compared with the reference, column by column, with Evidently's default test, and Evidently's
dataset-drift rule decides the model's verdict. Alerts go out through ``emit``.

Thread safety: the consumer thread and the API's threads share one :class:`DriftMonitor`;
every public method takes its lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from opstrata.alerts import AlertEvent
from opstrata.plugins.mlops.config import MLOpsConfig
from opstrata.plugins.mlops.drift_alerts import drift_alert, entity_name
from opstrata.plugins.mlops.gates import KINDS, columns_of, kept, scan_lengths, start
from opstrata.plugins.mlops.records import Column, ModelRows
from opstrata.plugins.mlops.results import FeatureDrift, ModelInfo, WindowDrift
from opstrata.plugins.mlops.sampling import SamplingResult, sampling_test
from opstrata.plugins.mlops.seasonal import learn, learn_rows, local_shift, seasonal_test
from opstrata.plugins.mlops.sketch import (
    CategoricalSketch,
    NumericSketch,
    Sketch,
    sketch_from_state,
)
from opstrata.plugins.mlops.state import (
    ColumnState,
    ModelState,
    learn_scan_shifts,
    model_from_state,
    model_to_state,
)
from opstrata.plugins.mlops.stattests import drift_test

__all__ = ["DriftMonitor", "entity_name"]


class DriftMonitor:
    def __init__(
        self, config: MLOpsConfig, emit: Callable[[AlertEvent], None] | None = None
    ) -> None:
        self.config = config
        self.emit = emit or (lambda event: None)
        self.lock = threading.RLock()
        self.models: dict[tuple[str, str], ModelState] = {}
        self.references: dict[tuple[str, str], tuple[str, dict[str, tuple[str, Sketch]]]] = {}
        """Posted references: (model, version or "") -> (source, column -> (role, sketch))."""
        self.history: list[WindowDrift] = []
        """Closed windows evaluated since the last :meth:`take_history` (stored by the caller)."""
        self.dropped_late = 0
        self.dropped_models = 0

    # -- feeding ------------------------------------------------------------------------------

    def observe(self, rows: ModelRows) -> None:
        if rows.times.size == 0:
            return
        with self.lock:
            state = self._state(rows)
            if state is None:
                return
            state.rows += int(rows.times.size)
            if rows.resource:
                state.resource = rows.resource
            for name, column in rows.columns.items():
                self._column(state, name, column)
            step = self.config.step_ns
            if state.baseline_until is not None:
                state.reference_rows += int((rows.times < state.baseline_until).sum())
            slots, which = np.unique(rows.times // step, return_inverse=True)
            newest_in = np.full(slots.size, np.iinfo(np.int64).min, dtype=np.int64)
            np.maximum.at(newest_in, which, rows.times)
            if state.current_slot is None:
                state.current_slot = int(slots[0])
            # A batch spanning several slots (a replay, an exporter's long batch) is taken a
            # slot at a time, as if each slot's rows had come alone: every slot it holds rows
            # of is closed and tested, and the verdicts are those of the live stream. Empty
            # slots between are not tested (nothing new to judge).
            done = state.current_slot
            self._add(state, rows, step, upto=done)  # the open slot's rows, and late ones
            on_time = slots <= done
            if on_time.any():
                self._seen_until(state, int(newest_in[on_time].max()))
            for slot, newest in zip(
                slots[~on_time].tolist(), newest_in[~on_time].tolist(), strict=True
            ):
                state.last_ns = max(state.last_ns, newest)
                self._close(state, done)
                state.current_slot = slot
                self._add(state, rows, step, upto=slot, after=done)
                self._retire(state, slot - self.config.window_slots)
                self._seen_until(state, newest)
                done = slot

    def _seen_until(self, state: ModelState, newest_ns: int) -> None:
        """Rows up to ``newest_ns`` are in: the baseline ends once they reach its end."""
        state.last_ns = max(state.last_ns, newest_ns)
        if state.baseline_until is not None and state.last_ns >= state.baseline_until:
            state.learned_until = state.baseline_until
            state.baseline_until = None  # the baseline window is over
            state.reference_source = "baseline"
            self._check_learnt(state)

    def _retire(self, state: ModelState, oldest: int) -> None:
        """Slots at or before ``oldest`` leave the window; a learning reference takes them in."""
        step = self.config.step_ns
        learnt = state.learned_until
        for col in state.columns.values():
            for slot in sorted(s for s in col.slots if s <= oldest):
                sketch = col.slots.pop(slot)
                if learnt is None or (slot + 1) * step <= learnt:
                    continue
                if col.reference is None:
                    col.reference = self._new_sketch(col.kind, reference=True)
                col.reference.absorb(sketch)  # type: ignore[arg-type]
                col.reference.pack()
                learn(self.config, col, sketch, slot * step)  # the same slot, by time of day
        if learnt is not None:
            state.learned_until = max(learnt, (oldest + 1) * step)
            state.reference_rows = max(
                (c.reference.n for c in state.columns.values() if c.reference), default=0
            )
            self._check_learnt(state)

    def _check_learnt(self, state: ModelState) -> None:
        """The reference stops learning once it covers ``reference_seconds``."""
        if state.learned_until is None:
            return
        if state.learned_until - state.first_ns >= self.config.reference_seconds * 1e9:
            state.learned_until = None
            for col in state.columns.values():
                col.count_pending()

    def _state(self, rows: ModelRows) -> ModelState | None:
        key = (rows.model, rows.version)
        state = self.models.get(key)
        if state is not None:
            return state
        if len(self.models) >= self.config.max_models:
            self.dropped_models += int(rows.times.size)
            return None
        first = int(rows.times.min())
        state = ModelState(rows.model, rows.version, rows.resource, first)
        posted = self.references.get(key) or self.references.get((rows.model, ""))
        if posted is not None:
            self._install_reference(state, *posted)
        elif self.config.baseline_seconds > 0:
            state.baseline_until = first + int(self.config.baseline_seconds * 1e9)
            state.reference_source = "collecting baseline"
        self.models[key] = state
        return state

    def _column(self, state: ModelState, name: str, column: Column) -> None:
        if name not in state.columns:
            state.columns[name] = ColumnState(column.role, column.kind)

    def _new_sketch(self, kind: str, reference: bool) -> Sketch:
        if kind == "numerical":
            size = self.config.reference_centroids if reference else self.config.slot_centroids
            return NumericSketch(size)
        return CategoricalSketch(self.config.max_categories)

    def _add(
        self,
        state: ModelState,
        rows: ModelRows,
        step: int,
        upto: int | None = None,
        after: int | None = None,
    ) -> None:
        """Add the rows whose slot is <= ``upto`` (when given) and > ``after`` (when given);
        rows before the baseline's end go to the reference."""
        baseline = state.baseline_until
        for name, column in rows.columns.items():
            col = state.columns[name]
            if col.kind != column.kind:
                continue
            slots = column.times // step
            keep = np.ones(slots.size, dtype=bool)
            if upto is not None:
                keep &= slots <= upto
            if after is not None:
                keep &= slots > after
            if baseline is not None:
                into_ref = keep & (column.times < baseline)
                if into_ref.any():
                    if col.reference is None:
                        col.reference = self._new_sketch(col.kind, reference=True)
                    _update(col.reference, column.values, into_ref)
                    learn_rows(self.config, col, column.times[into_ref], _masked(column, into_ref))
                keep &= ~into_ref
            if state.current_slot is not None:
                late = keep & (slots <= state.current_slot - self.config.window_slots)
                self.dropped_late += int(late.sum())
                keep &= ~late
            if not keep.any():
                continue
            for slot in np.unique(slots[keep]).tolist():
                sketch = col.slots.get(slot)
                if sketch is None:
                    sketch = col.slots[slot] = self._new_sketch(col.kind, reference=False)
                _update(sketch, column.values, keep & (slots == slot))

    # -- references ---------------------------------------------------------------------------

    def set_reference(
        self, model: str, version: str, source: str, columns: dict[str, tuple[str, Sketch]]
    ) -> int:
        """Install a reference (from a dataset or a stored time range); ``version`` "" makes it
        the reference of every version without its own. Returns the model versions updated."""
        with self.lock:
            self.references[(model, version)] = (source, columns)
            updated = 0
            for (name, ver), state in self.models.items():
                if name != model or (version and ver != version):
                    continue
                if not version and (model, ver) in self.references:
                    continue  # a version's own reference wins over the model-wide one
                self._install_reference(state, source, columns)
                updated += 1
            return updated

    def _install_reference(
        self, state: ModelState, source: str, columns: dict[str, tuple[str, Sketch]]
    ) -> None:
        state.baseline_until = None
        state.learned_until = None  # a posted reference is authoritative: it does not learn
        state.reference_source = source
        state.reference_rows = max((s.n for _, s in columns.values()), default=0)
        for name, (role, sketch) in columns.items():
            sketch.pack()
            col = state.columns.get(name)
            if col is None or col.kind != sketch.kind:
                col = state.columns[name] = ColumnState(role, sketch.kind)
            col.reference = sketch
        for col in state.columns.values():
            col.shifts = col.shifts[:0]  # measured against the old reference
            col.pending = col.pending[:0]
            col.scan_shifts = col.scan_shifts[:0]
            col.scan_pending = col.scan_pending[:0]
            col.season.clear()  # a dataset has no time of day; a posted reference is the standard
            col.season_last.clear()
            col.local_shifts = col.local_shifts[:0]

    # -- evaluating ---------------------------------------------------------------------------

    def _window(self, state: ModelState, end_slot: int, slots: int) -> dict[str, Sketch]:
        first = end_slot - slots + 1
        window: dict[str, Sketch] = {}
        for name, col in state.columns.items():
            parts = [s for slot, s in col.slots.items() if first <= slot <= end_slot]
            if not parts:
                continue
            merged = self._new_sketch(col.kind, reference=True)
            for part in parts:
                merged.absorb(part)  # type: ignore[arg-type]
            window[name] = merged
        return window

    def _evaluate(
        self, state: ModelState, end_slot: int, live: bool, scan: int | None = None
    ) -> WindowDrift | None:
        """The window ending with ``end_slot``, or (``scan``: an index of ``scan_lengths``)
        only its newest slots, judged against their own variation and row minimum."""
        if state.baseline_until is not None:
            return None
        config = self.config
        slots = config.window_slots if scan is None else scan_lengths(config.window_slots)[scan]
        least = config.min_rows if scan is None else min(config.min_rows, config.scan_min_rows)
        quiet = min(config.learning_p_value, config.alert_p_value)
        quiet = 1.0 if config.alert_p_value >= 1.0 else quiet  # every drifted verdict alerts
        window = self._window(state, end_slot, slots)
        step = self.config.step_ns
        results: list[FeatureDrift] = []
        rows = 0
        for name, current in window.items():
            col = state.columns[name]
            ref = col.reference
            rows = max(rows, current.n)
            if ref is None or ref.n < config.min_rows or current.n < least:
                continue
            noise = sampling_test(ref, current, config.alert_p_value)
            if scan is not None and not state.firing and noise.p_value > quiet:
                # Nothing to keep, and within what a suffix may start on: its shift is all
                # that is needed (for the suffixes' variation); Evidently's test is skipped.
                results.append(_within_noise(name, col, ref.n, current.n, noise, scan))
                continue
            try:
                result = drift_test(ref, current, config.stattest, config.threshold)
            except ValueError:
                continue  # e.g. a forced numeric test on a categorical column
            seasonal = None
            if state.firing or (result.drifted and noise.p_value <= config.alert_p_value):
                # Only where it can matter (an alert could start or is kept): a few more tests.
                seasonal = seasonal_test(config, col, current, *_span(end_slot, slots, step))
            if scan is None and not live and state.learned_until is not None:
                local = local_shift(config, col, current, *_span(end_slot, slots, step))
                if local is not None:
                    limit = max(64, int(config.reference_seconds * 1e9) // step)
                    col.local_shifts = np.append(col.local_shifts, np.float32(local))[-limit:]
            results.append(
                FeatureDrift(
                    feature=name,
                    role=col.role,
                    kind=col.kind,
                    test=result.test,
                    statistic=_finite(result.statistic),
                    p_value=None if result.p_value is None else _finite(result.p_value),
                    distance=None if result.distance is None else _finite(result.distance),
                    threshold=result.threshold,
                    drifted=bool(result.drifted),
                    error_bound=result.error_bound,
                    reference_rows=ref.n,
                    current_rows=current.n,
                    sampling_p_value=_finite(noise.p_value),
                    shift=_finite(noise.shift),
                    variation=col.variation if scan is None else col.scan_variation(scan),
                    seasonal_p_value=None if seasonal is None else _finite(seasonal.p_value),
                    seasonal_shift=None if seasonal is None else _finite(seasonal.shift),
                    seasonal_variation=None if seasonal is None else col.local_variation,
                )
            )
        if not results:
            return None
        features = [r for r in results if r.role == "feature"]
        drifted = [r.feature for r in features if r.drifted]
        share = len(drifted) / len(features) if features else 0.0
        return WindowDrift(
            model=state.model,
            version=state.version,
            start_unix_nano=(end_slot - slots + 1) * step,
            end_unix_nano=(end_slot + 1) * step,
            live=live,
            rows=rows,
            dataset_drift=bool(features) and share >= self.config.drift_share,
            drift_share=share,
            drifted_features=drifted,
            prediction_drift=any(r.drifted for r in results if r.role == "prediction"),
            features=results,
        )

    def _close(self, state: ModelState, end_slot: int) -> None:
        verdict = self._evaluate(state, end_slot, live=False)
        if verdict is None:
            return
        self.history.append(verdict)
        state.last_verdict = verdict.dataset_drift
        time = min(verdict.end_unix_nano, state.last_ns)
        # The newest slots alone, beside the window (gates.py): a sudden shift fills them
        # minutes before it is most of the window; they also keep an alert they started.
        tested = [(verdict, False)]
        scans = [
            self._evaluate(state, end_slot, live=False, scan=i)
            for i in range(len(scan_lengths(self.config.window_slots)))
        ]
        tested += [(suffix, True) for suffix in scans if suffix is not None]
        for kind in KINDS:
            if kind in state.firing:
                keeping = next((v for v, _ in tested if kept(self.config, v, kind)), None)
                if keeping is not None:
                    self.emit(drift_alert(state, kind, keeping, columns_of(keeping, kind), time))
                else:
                    state.firing.discard(kind)
                    columns = columns_of(verdict, kind)
                    self.emit(drift_alert(state, kind, verdict, columns, time, resolved=True))
                continue
            for candidate, suffix in tested:
                why = start(self.config, state, candidate, kind, suffix)
                if why is not None:
                    state.firing.add(kind)
                    self.emit(
                        drift_alert(state, kind, why.verdict, why.columns, time, basis=why.basis)
                    )
                    break
        if state.learned_until is None:
            return
        # The learning reference takes in every window's slots, alerting or not: while it
        # learns, "unlike anything seen yet" is all an alert can say, and a window left out
        # would stay unseen (the hours of a daily cycle the first day alerted on would alert
        # every day). Each window's shift is the traffic's own variation; those of an alerting
        # episode count once it is over (counted at once, a drift would raise the bar it is
        # kept by and resolve itself while it lasts).
        limit = max(64, int(self.config.reference_seconds * 1e9) // self.config.step_ns)
        for f in verdict.features:
            col = state.columns[f.feature]
            col.pending = np.append(col.pending, np.float32(f.shift or 0.0))
            if not state.firing:
                col.shifts = np.concatenate((col.shifts, col.pending))[:limit]
                col.pending = col.pending[:0]
        learn_scan_shifts(state, scans, limit)

    def live(self, model: str, version: str | None = None) -> list[WindowDrift]:
        """The open window of each version of ``model`` (or of one version), evaluated now."""
        with self.lock:
            out = []
            for (name, ver), state in sorted(self.models.items()):
                if name != model or (version is not None and ver != version):
                    continue
                if state.current_slot is not None:
                    verdict = self._evaluate(state, state.current_slot, live=True)
                    if verdict is not None:
                        out.append(verdict)
            return out

    def take_history(self) -> list[WindowDrift]:
        with self.lock:
            out, self.history = self.history, []
            return out

    # -- reading ------------------------------------------------------------------------------

    def infos(self) -> list[ModelInfo]:
        with self.lock:
            return [self._info(state) for _, state in sorted(self.models.items())]

    def resource_of(self, model: str, version: str) -> dict[str, str]:
        with self.lock:
            state = self.models.get((model, version))
            if state is None:
                state = next((s for (m, _), s in self.models.items() if m == model), None)
            return dict(state.resource) if state else {}

    def _info(self, state: ModelState) -> ModelInfo:
        size = 0
        for col in state.columns.values():
            size += col.reference.state_bytes() if col.reference else 0
            size += sum(s.state_bytes() for s in col.slots.values())
            size += sum(p.state_bytes() for p in col.season.values())
        return ModelInfo(
            model=state.model,
            version=state.version,
            entity=entity_name(state.model, state.version),
            resource=state.resource,
            rows=state.rows,
            first_unix_nano=state.first_ns,
            last_unix_nano=state.last_ns,
            features={n: f"{c.role}/{c.kind}" for n, c in sorted(state.columns.items())},
            reference=state.reference_source,
            reference_rows=state.reference_rows,
            reference_learning=state.learned_until is not None,
            state_bytes=size,
            dataset_drift=state.last_verdict,
            firing=sorted(state.firing),
        )

    # -- persistence --------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        with self.lock:
            models = [model_to_state(state) for state in self.models.values()]
            refs = [
                {
                    "model": m,
                    "version": v,
                    "source": source,
                    "columns": {n: [role, s.to_state()] for n, (role, s) in cols.items()},
                }
                for (m, v), (source, cols) in self.references.items()
            ]
            return {"models": models, "references": refs}

    def load_state(self, data: dict[str, Any]) -> None:
        with self.lock:
            for ref in data.get("references", []):
                columns = {
                    n: (role, sketch_from_state(s)) for n, (role, s) in ref["columns"].items()
                }
                self.references[(ref["model"], ref["version"])] = (ref["source"], columns)
            for m in data.get("models", []):
                state = model_from_state(m)
                self.models[(state.model, state.version)] = state


def _within_noise(
    name: str, col: ColumnState, ref_rows: int, cur_rows: int, noise: SamplingResult, scan: int
) -> FeatureDrift:
    """A suffix's column left untested (see ``_evaluate``): not drifted, its noise and shift."""
    return FeatureDrift(
        feature=name,
        role=col.role,
        kind=col.kind,
        test="within noise",
        statistic=0.0,
        p_value=None,
        distance=None,
        threshold=0.0,
        drifted=False,
        error_bound=0.0,
        reference_rows=ref_rows,
        current_rows=cur_rows,
        sampling_p_value=_finite(noise.p_value),
        shift=_finite(noise.shift),
        variation=col.scan_variation(scan),
    )


def _span(end_slot: int, slots: int, step: int) -> tuple[int, int]:
    """Event-time bounds ``[start, end)`` of the ``slots`` slots ending with ``end_slot``."""
    return (end_slot - slots + 1) * step, (end_slot + 1) * step


def _masked(column: Column, mask: np.ndarray) -> np.ndarray | pa.Array:
    if column.kind == "numerical":
        return np.asarray(column.values)[mask]
    return column.values.filter(pa.array(mask))


def _update(sketch: Sketch, values: np.ndarray | pa.Array, mask: np.ndarray) -> None:
    if isinstance(sketch, NumericSketch):
        sketch.update(np.asarray(values)[mask])
    else:
        sketch.update(values.filter(pa.array(mask)))
    sketch.pack()  # kept packed between batches: the state per feature stays small


def _finite(x: float) -> float:
    # JSON has no NaN; a test without an answer (e.g. Z on one value) reports 0.
    return float(x) if np.isfinite(x) else (1.0 if x > 0 else 0.0) if np.isinf(x) else 0.0
