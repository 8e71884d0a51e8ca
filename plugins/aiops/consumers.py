"""The three consumers: metric points, spans (RED), log records. Each owns its scorer."""

from __future__ import annotations

import logging
import pickle
import threading
from collections.abc import Callable
from typing import ClassVar

import numpy as np

from opstrata import CommittedBatch, Consumer, ConsumerContext, Signal, Table
from opstrata.consumers import latest_event_time
from opstrata.plugins.aiops.config import AiopsConfig
from opstrata.plugins.aiops.engine import RobustSeasonalDetector
from opstrata.plugins.aiops.logs import LogSeries
from opstrata.plugins.aiops.metrics import MetricSeries
from opstrata.plugins.aiops.scorer import SeriesScorer
from opstrata.plugins.aiops.spans import RedSeries
from opstrata.plugins.aiops.tables import SideTables
from opstrata.statefile import ProgressMark, StateFile

__all__ = ["DETECTORS", "FAMILIES", "LogsConsumer", "MetricsConsumer", "SpansConsumer"]

log = logging.getLogger(__name__)

DETECTORS = {
    "robust": lambda params: RobustSeasonalDetector(params),
    "spike": lambda params: RobustSeasonalDetector({**params, "tests": ["spike"]}),
    "level_shift": lambda params: RobustSeasonalDetector({**params, "tests": ["shift"]}),
    "trend": lambda params: RobustSeasonalDetector({**params, "tests": ["trend"]}),
    "variance": lambda params: RobustSeasonalDetector({**params, "tests": ["variance"]}),
}
"""The detectors this plugin registers (and builds for its own series)."""

FAMILIES: dict[str, SeriesScorer] = {}
"""Family name (``metrics``, ``spans``, ``logs``) -> its running scorer, for the API."""
MINERS: dict[str, object] = {}
STATE_FILES: dict[str, StateFile] = {}
"""Family name -> its consumer's state file, for ``/api/v1/aiops/saves``."""
LOCK = threading.Lock()


class _AiopsConsumer(Consumer):
    """What the three consumers share: the scorer, the side tables, and keeping what they learnt
    across a ``kill -9`` (``opstrata.statefile``): the state is saved every ``save_seconds``
    (or ``save_batches``) and the offset held at the last save, so the batches since are given
    again after a crash and learnt again; their side rows and alerts, done before the crash
    (``aiops_progress``), are not done twice."""

    family: ClassVar[str] = ""

    def __init__(self, config: AiopsConfig) -> None:
        self.config = config
        self.other_signal_lag_ns = int(
            config.other_signal_lateness_windows * config.interval_seconds * 1e9
        )
        self.state_file: StateFile | None = None

    def start(self, ctx: ConsumerContext) -> None:
        params = {
            "warmup": self.config.warmup,
            "seasonality": self.config.seasonality,
            **self.config.detector_params,
        }
        self.mark = ProgressMark(ctx.store, "aiops_progress", self.family)
        self.scorer = SeriesScorer(
            self.config,
            DETECTORS[self.config.detector](params),
            self.mark.emitter(ctx.emit),
            keep_points=self.config.store_points,
        )
        self.tables = SideTables(ctx.store)
        self.setup(ctx)
        self.state_file = StateFile(
            ctx.state_dir / f"{self.family}.state",
            every_seconds=self.config.save_seconds,
            every_batches=self.config.save_batches,
        )
        try:
            data = self.state_file.load()
            if data is not None:
                self.restore(pickle.loads(data))
        except Exception:  # a state we cannot read costs a warm-up, never the consumer
            log.exception("aiops: cannot restore %s; series warm up again", self.state_file.path)
        self.mark.load()
        if not self.state_file.exists():
            # Saved at once: a restart after a crash before the first periodic save starts
            # the replay from this state (template ids continuing after the stored ones).
            self.save_state()
        with LOCK:
            FAMILIES[self.family] = self.scorer
            STATE_FILES[self.family] = self.state_file

    def durable_upto(self) -> int | None:
        return None if self.state_file is None else self.state_file.durable_upto()

    def restore(self, state: dict) -> None:
        self.scorer.restore(state["scorer"])

    def save(self) -> dict:
        return {"scorer": self.scorer.state()}

    def save_state(self) -> None:
        assert self.state_file is not None
        self.state_file.save(pickle.dumps(self.save(), protocol=pickle.HIGHEST_PROTOCOL))

    def stop(self, ctx: ConsumerContext) -> None:
        """Save series, detector and alert state (our own files, in the plugin's state dir)."""
        self.save_state()

    def setup(self, ctx: ConsumerContext) -> None:
        pass

    def consume(self, batch: CommittedBatch, ctx: ConsumerContext) -> None:
        assert self.state_file is not None
        if not self.state_file.fresh(batch.seq):
            return  # in the state loaded at start (the offset file lagged its save)
        self.mark.begin(batch.seq)
        extra = self.learn(batch)
        self.after(batch.seq, extra)
        if self.state_file.seen(batch.seq):
            self.save_state()

    def learn(self, batch: CommittedBatch) -> Callable[[], None] | None:
        """Learn from one batch; may return more side rows to write with its points."""
        raise NotImplementedError

    def after(self, seq: int, extra: Callable[[], None] | None = None) -> None:
        """Store what batch ``seq`` added (new series, scored points, ``extra``) with the
        progress mark, in one transaction; nothing for a batch given again after a crash."""
        new_series = self.scorer.take_new_series()
        points = self.scorer.take_points()
        if self.mark.replaying:
            return  # stored before the crash

        def write() -> bool:
            self.tables.series(self.family, new_series)
            self.tables.points(self.family, points)
            if extra is not None:
                extra()
            return self.tables.enabled

        pending = bool(new_series or points or extra)
        try:
            self.mark.commit(seq, write if pending else None)
        except Exception:  # the side tables are evidence, never a reason to stop detecting
            log.exception("aiops: cannot write side tables")


class MetricsConsumer(_AiopsConsumer):
    name = "metrics"
    family = "metrics"
    signals = frozenset({Signal.METRIC_POINTS})

    def setup(self, ctx: ConsumerContext) -> None:
        self.series = MetricSeries(self.scorer)

    def restore(self, state: dict) -> None:
        super().restore(state)
        counters = state.get("counters")
        if counters:
            series = self.series
            series._grow(counters["seen"].size)
            for name in ("prev_value", "prev_time", "prev_start", "seen"):
                getattr(series, name)[: counters[name].size] = counters[name]
            series.hist_prev = counters["hist_prev"]

    def save(self) -> dict:
        series = self.series
        size = len(self.scorer.registry)
        counters = {
            n: np.array(getattr(series, n)[:size])
            for n in ("prev_value", "prev_time", "prev_start", "seen")
        }
        counters["hist_prev"] = series.hist_prev
        return {**super().save(), "counters": counters}

    def learn(self, batch: CommittedBatch) -> None:
        self.series.consume(dict(batch.tables))


class SpansConsumer(_AiopsConsumer):
    """RED per service and operation. Sees every signal: other batches move event time on,
    so windows close (and a drop to no traffic shows) even while no span arrives."""

    name = "spans"
    family = "spans"
    signals = frozenset(Signal)

    def setup(self, ctx: ConsumerContext) -> None:
        width = int(self.config.interval_seconds * 1e9)
        self.red = RedSeries(
            self.scorer, width, self.config.lateness_windows, self.config.min_spans
        )

    def restore(self, state: dict) -> None:
        super().restore(state)
        red = state.get("red")
        if red:
            self.red.entities = red["entities"]
            self.red.entity_meta = red["entity_meta"]
            self.red.clock.now = red["now"]
            self.red.last_closed = red.get("last_closed")
            self.red.last_seen = red.get("last_seen", {})
            self.red.deploys.restore(red.get("deploys", {}))

    def save(self) -> dict:
        red = self.red
        return {
            **super().save(),
            "red": {
                "entities": red.entities,
                "entity_meta": red.entity_meta,
                "now": red.clock.now,
                "last_closed": red.last_closed,
                "last_seen": red.last_seen,
                "deploys": red.deploys.state(),
            },
        }

    def learn(self, batch: CommittedBatch) -> None:
        spans = batch.tables.get(Table.TRACES)
        if spans is not None:
            self.red.consume(spans)
        else:
            self.red.clock.advance(latest_event_time(batch) - self.other_signal_lag_ns)
            self.red.flush()


class LogsConsumer(_AiopsConsumer):
    """Templates, log rates, bursts, new ERROR templates, silences (all signals move time)."""

    name = "logs"
    family = "logs"
    signals = frozenset(Signal)

    def setup(self, ctx: ConsumerContext) -> None:
        self.logs = LogSeries(self.scorer, self.config, self.scorer.tracker.emit)
        self.first_seen: dict[int, int] = {}
        with LOCK:
            MINERS["logs"] = self.logs.miner
        if self.tables.enabled:
            # Template ids continue after those already stored (ids are never reused).
            [row] = (
                ctx.store.reader()
                .execute('SELECT coalesce(max("TemplateId"), 0) FROM aiops_log_templates')
                .fetchall()
            )
            self.logs.miner.next_id = max(self.logs.miner.next_id, int(row[0]) + 1)

    def restore(self, state: dict) -> None:
        super().restore(state)
        logs = state.get("logs")
        if logs:
            self.logs.miner.load_state(logs["miner"])
            for name in (
                "services",
                "first_seen",
                "last_window",
                "service_rate",
                "silent",
                "firing_silence",
                "last_closed",
            ):
                if name in logs:  # state saved before first_seen existed lacks it
                    setattr(self.logs, name, logs[name])
            self.logs.clock.now = logs["now"]
        self.first_seen = state.get("template_first_seen", self.first_seen)

    def save(self) -> dict:
        logs = self.logs
        saved = {
            name: getattr(logs, name)
            for name in (
                "services",
                "first_seen",
                "last_window",
                "service_rate",
                "silent",
                "firing_silence",
                "last_closed",
            )
        }
        return {
            **super().save(),
            "logs": {"miner": logs.miner.state(), "now": logs.clock.now, **saved},
            "template_first_seen": self.first_seen,
        }

    def learn(self, batch: CommittedBatch) -> Callable[[], None] | None:
        records = batch.tables.get(Table.LOGS)
        if records is None:
            self.logs.clock.advance(latest_event_time(batch) - self.other_signal_lag_ns)
            self.logs.flush()
            return None
        templates = self.logs.consume(records)
        if templates is None or not self.tables.enabled:
            return None
        times = (
            records.column("Timestamp").cast("int64").fill_null(0).to_numpy(zero_copy_only=False)
        )
        for cid in self.logs.miner.last_new:
            rows = np.flatnonzero(templates == cid)
            self.first_seen[cid] = int(times[rows[0]]) if rows.size else 0
        changed = [
            (cid, self.logs.miner.template(cid), self.first_seen.get(cid, 0))
            for cid in sorted(self.logs.miner.take_changed())
        ]
        seq = batch.seq

        def write() -> None:
            self.tables.templates(changed)
            self.tables.template_of(
                seq, records.column("Timestamp"), records.column("ServiceName"), templates
            )

        return write
