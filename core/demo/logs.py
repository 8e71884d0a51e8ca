"""Log records with simulated timestamps: request logs, background chatter, fault messages.

Records are the SDK's ``ReadableLogRecord`` (what ``OTLPLogExporter.export`` takes) with the event
time and the observed time both set from the simulation clock, and the trace context of the span
that wrote them when there is one.
"""

from __future__ import annotations

import random
import re

from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import TraceFlags

from opstrata.demo.environment import Environment, Pod
from opstrata.demo.faults import Effects

__all__ = ["LogSink", "poisson"]

_SEVERITY = {
    "DEBUG": SeverityNumber.DEBUG,
    "INFO": SeverityNumber.INFO,
    "WARN": SeverityNumber.WARN,
    "ERROR": SeverityNumber.ERROR,
}
_SCOPE = InstrumentationScope("opentelemetry.instrumentation.logging", "0.58b0")
_CHATTER = {
    # runtime -> (per minute per pod, template)
    "java": (
        (2.0, "GC pause {ms} ms (G1 Evacuation Pause, young)"),
        (1.0, "HikariPool-1 - stats (total={n}, active={a}, idle={i}, waiting=0)"),
    ),
    "python": (
        (1.0, "worker {n} handled {k} requests in the last minute"),
        (1.0, "connection pool: {a} active, {i} idle"),
    ),
    "go": ((1.0, "runtime stats: {n} goroutines, heap {mb} MB"),),
    "nodejs": (
        (1.0, "event loop utilization {pct}%"),
        (1.0, "served {k} static assets from cache"),
    ),
}
_COMMON = ((2.0, "health check passed in {ms} ms"),)
_FIELD = re.compile(r"\{(\w+)\}")


class LogSink:
    """Collects the log records of one tick."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.records: list[ReadableLogRecord] = []

    def write(
        self,
        pod: Pod,
        at: int,
        severity: str,
        body: str,
        trace_id: int = 0,
        span_id: int = 0,
        attributes: dict[str, object] | None = None,
    ) -> None:
        record = LogRecord(
            timestamp=at,
            observed_timestamp=at + 2_000_000,
            severity_text=severity,
            severity_number=_SEVERITY[severity],
            body=body,
            attributes=attributes or {},
        )
        # The SDK takes ids from a context; set them directly instead (no active span here).
        record.trace_id = trace_id
        record.span_id = span_id
        record.trace_flags = TraceFlags(TraceFlags.SAMPLED if trace_id else 0)
        self.records.append(ReadableLogRecord(record, pod.resource, _SCOPE))

    def take(self) -> list[ReadableLogRecord]:
        records, self.records = self.records, []
        return records

    def _fill(self, template: str, extra: dict[str, object]) -> str:
        rng = self.rng

        def value(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in extra:
                return str(extra[name])
            return str(
                {
                    "ms": rng.randint(3, 60),
                    "n": rng.randint(8, 400),
                    "k": rng.randint(50, 900),
                    "a": rng.randint(1, 12),
                    "i": rng.randint(2, 10),
                    "mb": rng.randint(40, 900),
                    "pct": rng.randint(5, 45),
                    "cid": f"conv-{rng.randrange(100_000):05d}",
                    "table": rng.choice(("products", "orders", "shipping_rates")),
                    "max": 2048,
                    "temp": 0,
                    "tokens": 0,
                }[name]
            )

        return _FIELD.sub(value, template)

    def background(
        self, env: Environment, start: int, seconds: float, fx: Effects, gpu_temperature: float
    ) -> None:
        """Chatter of every pod, and the lines the active faults make services write."""
        rng = self.rng
        span = int(seconds * 1e9)
        for pod in env.all_pods():
            runtime = pod.resource.attributes.get("process.runtime.name", "go")
            for per_minute, template in (*_CHATTER.get(str(runtime), ()), *_COMMON):
                for _ in range(poisson(rng, per_minute * seconds / 60)):
                    self.write(pod, start + rng.randrange(span), "INFO", self._fill(template, {}))
        for line in fx.logs:
            if line.per_minute <= 0:
                continue
            for pod in env.pods(line.service, fx.versions.get(line.service)):
                if line.node and pod.node != line.node:
                    continue
                for _ in range(poisson(rng, line.per_minute * seconds / 60)):
                    extra: dict[str, object] = {
                        "temp": round(gpu_temperature),
                        "ms": rng.randint(300, 4000),
                        "pct": rng.randint(35, 80),
                        "tokens": rng.randint(7000, 9000),
                    }
                    self.write(
                        pod,
                        start + rng.randrange(span),
                        line.severity,
                        self._fill(line.template, extra),
                    )


def poisson(rng: random.Random, mean: float) -> int:
    """A Poisson draw (Knuth's method; means here are small)."""
    if mean <= 0:
        return 0
    if mean > 30:
        return max(0, round(rng.gauss(mean, mean**0.5)))
    limit, k, p = pow(2.718281828459045, -mean), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k
