"""The simulation clock and loop: traffic, faults, and export through the real OTLP exporters."""

from __future__ import annotations

import math
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk.metrics.export import MetricsData
from opentelemetry.sdk.trace import ReadableSpan

from opstrata.demo.environment import MODEL, ROUTES, SERVICES, Environment
from opstrata.demo.faults import SCENARIOS, Effects, Truth
from opstrata.demo.logs import LogSink, poisson
from opstrata.demo.metrics import MetricState
from opstrata.demo.traces import TickOutput, TraceBuilder

__all__ = ["Progress", "RunStats", "Simulation", "Tick"]

_NS = 1_000_000_000


@dataclass(frozen=True)
class Progress:
    """Where a run is, handed to the ``progress`` callback after every tick."""

    sim_time_unix_nano: int
    elapsed_minutes: float
    duration_minutes: float
    phase: str
    """``warmup``, ``fault`` or ``after`` (the fault has ended)."""
    spans: int
    log_records: int
    metric_points: int
    failed_exports: int
    behind_seconds: float
    """How far the run lags the requested speed (0 when it keeps up)."""


@dataclass(frozen=True)
class Tick:
    """One tick's telemetry: SDK spans and log records, and the metric points at its end."""

    end_unix_nano: int
    spans: list[ReadableSpan]
    log_records: list[ReadableLogRecord]
    metrics: MetricsData | None
    """Points at the tick's end when an export interval ends there, else None."""


@dataclass(frozen=True)
class RunStats:
    spans: int
    log_records: int
    metric_points: int
    failed_exports: int
    exports: int
    """Export calls made (three signals per tick)."""
    start_unix_nano: int
    end_unix_nano: int
    wall_seconds: float


def _points(data: MetricsData | None) -> int:
    if data is None:
        return 0
    return sum(
        len(m.data.data_points)
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    )


class _Sender(threading.Thread):
    """Exports one signal's batches in order, off the generating thread (bounded queue)."""

    def __init__(self, exporter: Any, name: str) -> None:
        super().__init__(name=f"demo-{name}", daemon=True)
        self.exporter = exporter
        self.inbox: queue.Queue[Any] = queue.Queue(maxsize=4)
        self.failed = 0

    def run(self) -> None:
        while (item := self.inbox.get()) is not None:
            try:
                result = self.exporter.export(item)
            except Exception:  # an exporter that raises must not end the run
                result = None
            if getattr(result, "name", "") != "SUCCESS":
                self.failed += 1

    def close(self) -> None:
        self.inbox.put(None)
        self.join()
        self.exporter.shutdown()


def _exporters(endpoint: str) -> tuple[Any, Any, Any]:
    """OTLP/gRPC for ``host:port`` (or ``grpc://``); OTLP/HTTP for an ``http(s)://`` base URL."""
    if endpoint.startswith(("http://", "https://")):
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        base = endpoint.rstrip("/")
        return (
            OTLPSpanExporter(endpoint=base + "/v1/traces", timeout=30),
            OTLPLogExporter(endpoint=base + "/v1/logs", timeout=30),
            OTLPMetricExporter(endpoint=base + "/v1/metrics", timeout=30),
        )
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    target = endpoint.removeprefix("grpc://")
    return (
        OTLPSpanExporter(endpoint=target, insecure=True, timeout=30),
        OTLPLogExporter(endpoint=target, insecure=True, timeout=30),
        OTLPMetricExporter(endpoint=target, insecure=True, timeout=30),
    )


class Simulation:
    """One run of the simulated shop with zero or more faults; see the package docstring."""

    def __init__(
        self,
        scenario: str | Sequence[str] = "normal",
        seed: int = 1,
        speed: float = 60.0,
        warmup_minutes: float = 30.0,
        fault_at_minutes: float | None = None,
        duration_minutes: float = 50.0,
        fault_minutes: float | None = None,
        rate: float = 3.0,
        start_unix_nano: int | None = None,
        tick_seconds: float = 10.0,
        metric_interval_seconds: float = 30.0,
    ) -> None:
        names = [scenario] if isinstance(scenario, str) else list(scenario)
        names = [n for part in names for n in part.split("+") if n]
        unknown = [n for n in names if n not in SCENARIOS]
        if unknown:
            raise ValueError(f"unknown scenario {unknown[0]!r}; one of: {', '.join(SCENARIOS)}")
        self.scenarios = [SCENARIOS[n] for n in names if SCENARIOS[n].apply is not None]
        self.seed = seed
        self.speed = speed
        self.duration_minutes = duration_minutes
        self.fault_at_minutes = warmup_minutes if fault_at_minutes is None else fault_at_minutes
        self.fault_minutes = fault_minutes
        self.rate = rate
        self.tick_seconds = tick_seconds
        self.metric_interval_seconds = metric_interval_seconds
        if start_unix_nano is None:
            # End the simulated span at the wall clock's current minute: the data looks recent
            # and never lies in the future.
            now_minute = time.time_ns() // (60 * _NS) * 60 * _NS
            start_unix_nano = now_minute - int(duration_minutes * 60 * _NS)
        self.start_unix_nano = start_unix_nano
        self.end_unix_nano = start_unix_nano + int(duration_minutes * 60 * _NS)
        self.onset_unix_nano = start_unix_nano + int(self.fault_at_minutes * 60 * _NS)
        self.fault_end_unix_nano = (
            self.end_unix_nano
            if fault_minutes is None
            else self.onset_unix_nano + int(fault_minutes * 60 * _NS)
        )

    @property
    def truths(self) -> list[Truth]:
        """The ground truth of each injected fault (empty for ``normal``)."""
        return [
            Truth(
                s.name,
                s.root_cause,
                s.aliases,
                self.onset_unix_nano,
                self.fault_end_unix_nano,
                s.affected,
                s.description,
            )
            for s in self.scenarios
        ]

    @property
    def truth(self) -> Truth:
        """The first fault's truth; for ``normal``, a truth with no root cause."""
        truths = self.truths
        if truths:
            return truths[0]
        return Truth("normal", None, (), None, None, (), SCENARIOS["normal"].description)

    def effects(self, at: int) -> Effects:
        fx = Effects()
        if self.onset_unix_nano <= at < self.fault_end_unix_nano:
            for scenario in self.scenarios:
                assert scenario.apply is not None
                scenario.apply((at - self.onset_unix_nano) / _NS, fx)
        return fx

    def _daily(self, at: int) -> float:
        """Traffic relative to the daily mean: low at night, peaks in the afternoon (UTC)."""
        hour = (at / 3.6e12) % 24
        return 1 + 0.35 * math.sin((hour - 9) / 24 * 2 * math.pi)

    def ticks(self) -> Iterator[Tick]:
        """The run's telemetry, one tick of simulated time at a time, without sending it."""
        rng = random.Random(self.seed)
        env = Environment(self.seed)
        logs = LogSink(rng)
        builder = TraceBuilder(env, rng, logs)
        metrics = MetricState(env, rng, self.start_unix_nano, self.rate)
        weights = [r.weight for r in ROUTES]
        tick = int(self.tick_seconds * _NS)
        pending_labels: list[tuple[int, str, int]] = []
        recent_llm: deque[dict[str, int]] = deque(maxlen=max(1, round(60 / self.tick_seconds)))
        state: dict[str, str] = {}
        next_kill: dict[str, float] = {}
        killed = 0
        every = max(1, round(self.metric_interval_seconds / self.tick_seconds))
        index = 0
        at = self.start_unix_nano
        while at < self.end_unix_nano:
            fx = self.effects(at)
            self._apply_changes(env, logs, fx, state, at)
            killed = self._oom_kills(env, builder, logs, fx, next_kill, at, killed)
            out = TickOutput()
            n = poisson(rng, self.rate * self._daily(at) * self.tick_seconds)
            for offset in sorted(rng.randrange(tick) for _ in range(n)):
                builder.request(rng.choices(ROUTES, weights)[0], at + offset, fx, out)
            builder.llm_load = self._llm_load(recent_llm, out)
            pending_labels.extend(out.labels)
            pending_labels = self._labels(env, logs, pending_labels, at + tick)
            logs.background(env, at, self.tick_seconds, fx, metrics.gpu_temperature)
            metrics.observe(out, self.tick_seconds, fx)
            at += tick
            index += 1
            data = None
            if index % every == 0:
                data = metrics.build(at, self._daily(at) - 1, fx)
            yield Tick(at, out.spans, logs.take(), data)

    def run(
        self,
        otlp_endpoint: str = "127.0.0.1:4317",
        progress: Callable[[Progress], None] | None = None,
        stop: threading.Event | None = None,
    ) -> RunStats:
        """Generate and export the whole run; returns what was sent. ``stop`` ends it early."""
        senders = [
            _Sender(e, n)
            for e, n in zip(_exporters(otlp_endpoint), ("spans", "logs", "metrics"), strict=True)
        ]
        for sender in senders:
            sender.start()
        counts = [0, 0, 0]
        exports = 0
        wall_start = time.monotonic()
        at = self.start_unix_nano
        try:
            for tick in self.ticks():
                counts[0] += len(tick.spans)
                counts[1] += len(tick.log_records)
                counts[2] += _points(tick.metrics)
                for sender, item in zip(
                    senders, (tick.spans, tick.log_records, tick.metrics), strict=True
                ):
                    if item:
                        sender.inbox.put(item)
                        exports += 1
                at = tick.end_unix_nano
                behind = self._pace(wall_start, at)
                if progress is not None:
                    progress(self._progress(at, counts, senders, behind))
                if stop is not None and stop.is_set():
                    break
        finally:
            for sender in senders:
                sender.close()
        return RunStats(
            counts[0],
            counts[1],
            counts[2],
            sum(s.failed for s in senders),
            exports,
            self.start_unix_nano,
            at,
            time.monotonic() - wall_start,
        )

    def _llm_load(self, recent: deque[dict[str, int]], out: TickOutput) -> dict[str, float]:
        """Calls per model over the last minute against the provider's per-minute limit:
        twice the calls the daily mean load makes (at least 4), so only a surge reaches it."""
        calls: dict[str, int] = {}
        for call in out.llm:
            calls[call.request_model] = calls.get(call.request_model, 0) + 1
        recent.append(calls)
        per_minute = self.rate * 60 * 0.14  # the assistant route's share of requests
        limits = {
            "gpt-4o-mini": max(4.0, 2.0 * per_minute),
            "gpt-4o": max(4.0, 2.0 * per_minute * 0.12),
        }  # ~12% go to review
        minutes = len(recent) * self.tick_seconds / 60
        return {
            model: sum(c.get(model, 0) for c in recent) / minutes / limit
            for model, limit in limits.items()
        }

    def _pace(self, wall_start: float, at: int) -> float:
        if not self.speed or self.speed <= 0 or math.isinf(self.speed):
            return 0.0
        due = (at - self.start_unix_nano) / _NS / self.speed
        ahead = due - (time.monotonic() - wall_start)
        if ahead > 0:
            time.sleep(ahead)
            return 0.0
        return -ahead

    def _progress(
        self, at: int, counts: list[int], senders: list[_Sender], behind: float
    ) -> Progress:
        if at <= self.onset_unix_nano or not self.scenarios:
            phase = "warmup" if self.scenarios else "normal"
        else:
            phase = "fault" if at <= self.fault_end_unix_nano else "after"
        return Progress(
            at,
            (at - self.start_unix_nano) / 60 / _NS,
            self.duration_minutes,
            phase,
            counts[0],
            counts[1],
            counts[2],
            sum(s.failed for s in senders),
            behind,
        )

    def _apply_changes(
        self, env: Environment, logs: LogSink, fx: Effects, state: dict[str, str], at: int
    ) -> None:
        """Deploys and prompt roll-outs: a new version starts new pods, which say so."""
        for service, spec in SERVICES.items():
            version = fx.versions.get(service, spec[0])
            if env.versions[service] != version:
                env.versions[service] = version
                for pod in env.pods(service, version):
                    pod.started_ns = at
                    logs.write(
                        pod, at + 3 * _NS, "INFO", f"started {service} {version} in 2.4 seconds"
                    )
        if fx.prompt_version and state.get("prompt") != fx.prompt_version:
            state["prompt"] = fx.prompt_version
            for pod in env.pods("llm-gateway"):
                logs.write(
                    pod, at, "INFO", f"loaded prompt assistant-answer version {fx.prompt_version}"
                )

    def _oom_kills(
        self,
        env: Environment,
        builder: TraceBuilder,
        logs: LogSink,
        fx: Effects,
        next_kill: dict[str, float],
        at: int,
        killed: int,
    ) -> int:
        """Kill a pod on each node under memory pressure every so often (round robin)."""
        for node, every in fx.oom_kill_every_s.items():
            due = next_kill.setdefault(node, at)
            if at < due:
                continue
            pods = env.pods_on(node)
            pod = pods[killed % len(pods)]
            killed += 1
            next_kill[node] = at + every * _NS
            builder.down[pod.name] = (at, at + 8 * _NS)
            logs.write(
                pod, at, "ERROR", f"container {pod.service} OOMKilled (exit code 137), restarting"
            )
            pod.started_ns = at + 8 * _NS
            logs.write(
                pod, at + 9 * _NS, "INFO", f"started {pod.service} {pod.version} in 1.1 seconds"
            )
        return killed

    def _labels(
        self, env: Environment, logs: LogSink, pending: list[tuple[int, str, int]], until: int
    ) -> list[tuple[int, str, int]]:
        """Write the chargeback outcomes that are due; keep the rest."""
        due = [p for p in pending if p[0] < until]
        if due:
            pod = env.pods("payment")[0]
            for at, prediction_id, label in due:
                logs.write(
                    pod,
                    at,
                    "INFO",
                    f"chargeback outcome for {prediction_id}: {label}",
                    attributes={
                        "ml.model.name": MODEL[0],
                        "ml.model.version": MODEL[1],
                        "ml.prediction.id": prediction_id,
                        "ml.label": label,
                    },
                )
        return [p for p in pending if p[0] >= until]
