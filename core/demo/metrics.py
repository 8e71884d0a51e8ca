"""Metric points every export interval, as the SDK's ``MetricsData`` with simulated timestamps.

SDK metric readers stamp points with the wall clock, so the points are built directly here and
handed to the real ``OTLPMetricExporter.export``. Counters and histograms are cumulative (the SDK's
default temporality): their state lives here, and a pod's series restart from zero, with a new
start time, when its container restarts.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from opstrata.demo.environment import GPU_NODE, MODEL, NODES, Environment
from opstrata.demo.faults import Effects
from opstrata.demo.logs import poisson
from opstrata.demo.traces import TickOutput

__all__ = ["MetricState"]

_CUMULATIVE = AggregationTemporality.CUMULATIVE
_HTTP_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
_TOKEN_BOUNDS = tuple(float(4**i) for i in range(12))
_GENAI_BOUNDS = (
    0.01,
    0.02,
    0.04,
    0.08,
    0.16,
    0.32,
    0.64,
    1.28,
    2.56,
    5.12,
    10.24,
    20.48,
    40.96,
    81.92,
)
_HOST_SCOPE = InstrumentationScope("otelcol/hostmetricsreceiver", "0.112.0")
_GPU_SCOPE = InstrumentationScope("otelcol/nvidiagpu", "0.112.0")
_TRITON_SCOPE = InstrumentationScope("otelcol/prometheusreceiver", "0.112.0")
_HTTP_SCOPE = InstrumentationScope("opentelemetry.instrumentation.asgi", "0.58b0")
_APP_SCOPE = InstrumentationScope("shop.metrics", "1.0")
_GENAI_SCOPE = InstrumentationScope("opentelemetry.instrumentation.openai_v2", "2.1b0")
_GPU_UUID = "GPU-5f1d7c3a-8e2b-4c6d-9a0f-1b2c3d4e5f60"


@dataclass
class _Hist:
    start: int
    counts: np.ndarray
    total: float = 0.0
    low: float = math.inf
    high: float = -math.inf

    def add(self, bounds: tuple[float, ...], values: list[float]) -> None:
        data = np.asarray(values, dtype=np.float64)
        self.counts += np.bincount(
            np.searchsorted(bounds, data, side="left"), minlength=len(bounds) + 1
        )
        self.total += float(data.sum())
        self.low = min(self.low, float(data.min()))
        self.high = max(self.high, float(data.max()))


@dataclass
class _Series:
    """Cumulative series of one resource, reset together when the process restarts."""

    start: int
    hists: dict[tuple, _Hist] = field(default_factory=dict)
    sums: dict[tuple, float] = field(default_factory=lambda: defaultdict(float))


class MetricState:
    """Everything a tick's points depend on besides the tick itself."""

    def __init__(self, env: Environment, rng: random.Random, start: int, rate: float) -> None:
        self.env = env
        self.rng = rng
        self.start = start
        self.rate = rate
        self._series: dict[str, _Series] = {}
        self._wander = {node.name: 0.0 for node in NODES}
        self.gpu_temperature = 0.0
        self._gpu_busy = 0.0
        self._gpu_elapsed = 0.0

    def _of(self, key: str, started: int) -> _Series:
        series = self._series.get(key)
        if series is None or series.start < started:
            series = self._series[key] = _Series(max(started, self.start))
        return series

    def _hist(
        self, series: _Series, key: tuple, bounds: tuple[float, ...], values: list[float]
    ) -> None:
        hist = series.hists.get(key)
        if hist is None:
            hist = series.hists[key] = _Hist(series.start, np.zeros(len(bounds) + 1, np.int64))
        hist.add(bounds, values)

    def observe(self, out: TickOutput, seconds: float, fx: Effects) -> None:
        """Add one tick's requests to the cumulative state."""
        pods = {pod.name: pod for pod in self.env.all_pods()}
        for (pod_name, method, route, status), durations in out.http.items():
            pod = pods.get(pod_name)
            if pod is not None:
                self._hist(
                    self._of(pod_name, pod.started_ns),
                    (method, route, status),
                    _HTTP_BOUNDS,
                    durations,
                )
        for pod_name, count in out.orders.items():
            if pod_name in pods:
                self._of(pod_name, pods[pod_name].started_ns).sums[("orders",)] += count
        for pod in pods.values():
            series = self._of(pod.name, pod.started_ns)
            if pod.service == "model-server":
                self._triton(series, out)
            if pod.service == "llm-gateway":
                for call in out.llm:
                    base = (call.request_model, call.response_model if not call.error else "")
                    if not call.error:
                        self._hist(
                            series,
                            ("tokens", *base, "input"),
                            _TOKEN_BOUNDS,
                            [float(call.input_tokens)],
                        )
                        self._hist(
                            series,
                            ("tokens", *base, "output"),
                            _TOKEN_BOUNDS,
                            [float(call.output_tokens)],
                        )
                    self._hist(series, ("genai", *base, call.error), _GENAI_BOUNDS, [call.seconds])
        self._gpu_busy += sum(s for _, s in out.inferences)
        self._gpu_elapsed += seconds
        gpu = self._of(GPU_NODE, 0)
        gpu.sums[("xid",)] += poisson(self.rng, fx.gpu_xid_per_minute * seconds / 60)

    def build(self, now: int, daily: float, fx: Effects) -> MetricsData:
        """Every series' point at ``now``: gauges as they are, counters and histograms since
        their start."""
        resources = self._hosts(now, daily, fx)
        for pod in self.env.all_pods():
            metrics = self._pod_metrics(self._of(pod.name, pod.started_ns), now)
            if metrics:
                resources.append(ResourceMetrics(pod.resource, metrics, ""))
        return MetricsData(resources)

    # -- hosts and the GPU ------------------------------------------------------------------
    def _hosts(self, now: int, daily: float, fx: Effects) -> list[ResourceMetrics]:
        rng = self.rng
        result = []
        for node in NODES:
            self._wander[node.name] = 0.9 * self._wander[node.name] + rng.gauss(0, 0.01)
            cpu = node.cpu_base + 0.12 * daily + self._wander[node.name] + rng.gauss(0, 0.015)
            cpu = min(max(cpu + fx.node_cpu.get(node.name, 0.0), 0.01), 0.995)
            hour = (now / 3.6e12) % 24
            memory = (
                node.memory_base + 0.015 * math.sin(hour / 24 * 2 * math.pi) + rng.gauss(0, 0.003)
            )
            memory = min(max(memory + fx.node_memory.get(node.name, 0.0), 0.05), 0.99)
            metrics = [
                _gauge("system.cpu.utilization", "1", {}, self.start, now, cpu),
                _gauge(
                    "system.memory.utilization",
                    "1",
                    {"system.memory.state": "used"},
                    self.start,
                    now,
                    memory,
                ),
            ]
            scopes = [ScopeMetrics(_HOST_SCOPE, metrics, "")]
            if node.name == GPU_NODE:
                scopes.append(ScopeMetrics(_GPU_SCOPE, self._gpu(now, fx), ""))
            result.append(ResourceMetrics(self.env.node_resources[node.name], scopes, ""))
        return result

    def _gpu(self, now: int, fx: Effects) -> list[Metric]:
        rng = self.rng
        busy = self._gpu_busy / max(self._gpu_elapsed, 1e-9)
        self._gpu_busy = self._gpu_elapsed = 0.0
        util = min(0.15 + 6 * busy + fx.gpu_utilization + rng.gauss(0, 0.02), 1.0)
        self.gpu_temperature = 56 + 12 * util + rng.gauss(0, 0.7) + fx.gpu_temperature
        series = self._of(GPU_NODE, 0)
        series.sums[("util",)] = util
        attrs = {"gpu.id": "0"}
        return [
            _gauge("gpu.utilization", "1", attrs, self.start, now, max(util, 0.0)),
            _gauge("gpu.temperature", "Cel", attrs, self.start, now, self.gpu_temperature),
            _gauge(
                "gpu.memory.utilization", "1", attrs, self.start, now, 0.62 + rng.gauss(0, 0.004)
            ),
            _sum(
                "gpu.errors",
                "{error}",
                {**attrs, "error.type": "xid"},
                series.start,
                now,
                series.sums[("xid",)],
            ),
        ]

    def _triton(self, series: _Series, out: TickOutput) -> None:
        ok = sum(1 for succeeded, _ in out.inferences if succeeded)
        series.sums[("nv", "nv_inference_request_success")] += ok
        series.sums[("nv", "nv_inference_request_failure")] += len(out.inferences) - ok
        series.sums[("nv", "nv_inference_count")] += len(out.inferences)
        compute = sum(s for _, s in out.inferences) * 1e6
        series.sums[("nv", "nv_inference_compute_infer_duration_us")] += compute
        series.sums[("nv", "nv_inference_queue_duration_us")] += compute * 0.08

    # -- per pod -----------------------------------------------------------------------------
    def _pod_metrics(self, series: _Series, now: int) -> list[ScopeMetrics]:
        scopes: list[ScopeMetrics] = []
        http = [
            _hist_point(
                {
                    "http.request.method": k[0],
                    "http.route": k[1],
                    "http.response.status_code": k[2],
                },
                h,
                now,
                _HTTP_BOUNDS,
            )
            for k, h in series.hists.items()
            if len(k) == 3
        ]
        if http:
            scopes.append(
                ScopeMetrics(
                    _HTTP_SCOPE,
                    [
                        Metric(
                            "http.server.request.duration",
                            "Duration of HTTP server requests.",
                            "s",
                            Histogram(http, _CUMULATIVE),
                        )
                    ],
                    "",
                )
            )
        if ("orders",) in series.sums:
            scopes.append(
                ScopeMetrics(
                    _APP_SCOPE,
                    [
                        _sum(
                            "app.orders.placed",
                            "{order}",
                            {},
                            series.start,
                            now,
                            series.sums[("orders",)],
                        )
                    ],
                    "",
                )
            )
        triton = []
        model = {"model": MODEL[0], "version": MODEL[1]}
        for key, value in series.sums.items():
            if key[0] == "nv":
                triton.append(_sum(key[1], "1", model, series.start, now, value))
        if triton:
            util = max(self._of(GPU_NODE, 0).sums.get(("util",), 0.2), 0.0)
            gpu = {"gpu_uuid": _GPU_UUID}
            triton.append(_gauge("nv_gpu_utilization", "1", gpu, series.start, now, util))
            triton.append(
                _gauge("nv_gpu_power_usage", "W", gpu, series.start, now, 70 + 180 * util)
            )
            scopes.append(ScopeMetrics(_TRITON_SCOPE, triton, ""))
        genai = self._genai(series, now)
        if genai:
            scopes.append(ScopeMetrics(_GENAI_SCOPE, genai, ""))
        return scopes

    def _genai(self, series: _Series, now: int) -> list[Metric]:
        tokens, durations = [], []
        for key, hist in series.hists.items():
            if key[0] not in ("tokens", "genai"):
                continue
            attrs: dict[str, object] = {
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "openai",
                "gen_ai.request.model": key[1],
            }
            if key[2]:
                attrs["gen_ai.response.model"] = key[2]
            if key[0] == "tokens":
                attrs["gen_ai.token.type"] = key[3]
                tokens.append(_hist_point(attrs, hist, now, _TOKEN_BOUNDS))
            else:
                if key[3]:
                    attrs["error.type"] = key[3]
                durations.append(_hist_point(attrs, hist, now, _GENAI_BOUNDS))
        metrics = []
        if tokens:
            metrics.append(
                Metric(
                    "gen_ai.client.token.usage",
                    "Number of input and output tokens used.",
                    "{token}",
                    Histogram(tokens, _CUMULATIVE),
                )
            )
        if durations:
            metrics.append(
                Metric(
                    "gen_ai.client.operation.duration",
                    "GenAI operation duration.",
                    "s",
                    Histogram(durations, _CUMULATIVE),
                )
            )
        return metrics


def _gauge(
    name: str, unit: str, attrs: dict[str, object], start: int, now: int, value: float
) -> Metric:
    return Metric(name, "", unit, Gauge([NumberDataPoint(attrs, start, now, float(value))]))


def _sum(
    name: str, unit: str, attrs: dict[str, object], start: int, now: int, value: float
) -> Metric:
    point = NumberDataPoint(attrs, start, now, float(value))
    return Metric(name, "", unit, Sum([point], _CUMULATIVE, True))


def _hist_point(
    attrs: dict[str, object], hist: _Hist, now: int, bounds: tuple[float, ...]
) -> HistogramDataPoint:
    return HistogramDataPoint(
        attrs,
        hist.start,
        now,
        int(hist.counts.sum()),
        hist.total,
        hist.counts.tolist(),
        bounds,
        hist.low,
        hist.high,
    )
