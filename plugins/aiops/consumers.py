"""The three consumers: metric points, spans (RED), log records. Each owns its scorer."""

from __future__ import annotations

import logging
import pickle
import threading
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
LOCK = threading.Lock()


class _AiopsConsumer(Consumer):
    family: ClassVar[str] = ""

    def __init__(self, config: AiopsConfig) -> None:
        self.config = config
        self.other_signal_lag_ns = int(
            config.other_signal_lateness_windows * config.interval_seconds * 1e9
        )

    def start(self, ctx: ConsumerContext) -> None:
        params = {
            "warmup": self.config.warmup,
            "seasonality": self.config.seasonality,
            **self.config.detector_params,
        }
        self.scorer = SeriesScorer(
            self.config,
            DETECTORS[self.config.detector](params),
            ctx.emit,
            keep_points=self.config.store_points,
        )
        self.tables = SideTables(ctx.store)
        self.setup(ctx)
        self.state_file = ctx.state_dir / f"{self.family}.state"
        if self.state_file.exists():
            try:
                with self.state_file.open("rb") as handle:
                    self.restore(pickle.load(handle))
            except Exception:  # a state we cannot read costs a warm-up, never the consumer
                log.exception("aiops: cannot restore %s; series warm up again", self.state_file)
        with LOCK:
            FAMILIES[self.family] = self.scorer

    def restore(self, state: dict) -> None:
        self.scorer.restore(state["scorer"])

    def save(self) -> dict:
        return {"scorer": self.scorer.state()}

    def stop(self, ctx: ConsumerContext) -> None:
        """Save series, detector and alert state (our own files, in the plugin's state dir)."""
        partial = self.state_file.with_suffix(".partial")
        with partial.open("wb") as handle:
            pickle.dump(self.save(), handle, protocol=pickle.HIGHEST_PROTOCOL)
        partial.replace(self.state_file)

    def setup(self, ctx: ConsumerContext) -> None:
        pass

    def after(self) -> None:
        """Store what this batch added: new series and scored points."""
        try:
            self.tables.series(self.family, self.scorer.take_new_series())
            self.tables.points(self.family, self.scorer.take_points())
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

    def consume(self, batch: CommittedBatch, ctx: ConsumerContext) -> None:
        self.series.consume(dict(batch.tables))
        self.after()


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

    def consume(self, batch: CommittedBatch, ctx: ConsumerContext) -> None:
        spans = batch.tables.get(Table.TRACES)
        if spans is not None:
            self.red.consume(spans)
        else:
            self.red.clock.advance(latest_event_time(batch) - self.other_signal_lag_ns)
            self.red.flush()
        self.after()


class LogsConsumer(_AiopsConsumer):
    """Templates, log rates, bursts, new ERROR templates, silences (all signals move time)."""

    name = "logs"
    family = "logs"
    signals = frozenset(Signal)

    def setup(self, ctx: ConsumerContext) -> None:
        self.logs = LogSeries(self.scorer, self.config, ctx.emit)
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
        }

    def consume(self, batch: CommittedBatch, ctx: ConsumerContext) -> None:
        records = batch.tables.get(Table.LOGS)
        if records is None:
            self.logs.clock.advance(latest_event_time(batch) - self.other_signal_lag_ns)
            self.logs.flush()
            self.after()
            return
        templates = self.logs.consume(records)
        if templates is not None and self.tables.enabled:
            times = (
                records.column("Timestamp")
                .cast("int64")
                .fill_null(0)
                .to_numpy(zero_copy_only=False)
            )
            for cid in self.logs.miner.last_new:
                rows = np.flatnonzero(templates == cid)
                self.first_seen[cid] = int(times[rows[0]]) if rows.size else 0
            changed = self.logs.miner.take_changed()
            try:
                self.tables.templates(
                    [
                        (cid, self.logs.miner.template(cid), self.first_seen.get(cid, 0))
                        for cid in sorted(changed)
                    ]
                )
                self.tables.template_of(
                    batch.seq, records.column("Timestamp"), records.column("ServiceName"), templates
                )
            except Exception:
                log.exception("aiops: cannot write log templates")
        self.after()
