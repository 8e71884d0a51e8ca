"""The C decoder's cost on a request that follows one that stored no rows, builds interleaved.

    python bench/decode_after_empty.py OLD.so NEW.so [--rounds 15] [--signal spans logs metrics]

Each decoder reserves a request's columns at the sizes the previous request of its kind took
(``hints_presize`` in ``otlp/_wire.c``). Here every measured request of ``bench/ingest.py`` (100
items) follows, untimed, one that stored nothing: the same request with every item rejected
(zero trace ids; for metrics, timestamps past int64), and for metrics also a request of gauges
only, which leaves the sum and histogram tables without rows. Builds load side by side as in
``bench/decode_ab.py`` and alternate per round (reversed every other round). Prints µs of this
thread's CPU per measured decode (the decoder alone, its result dropped), median and best round.
"""

from __future__ import annotations

import functools
import random
import sys
import time
from pathlib import Path
from types import ModuleType

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

sys.path.insert(0, str(Path(__file__).parent))
import ingest as bench_ingest  # bench/ingest.py: its request generators
from decode_ab import _FUNCTIONS, decode_args, interleaved, load_builds, parse_args, report


def rejected_spans(body: bytes) -> bytes:
    request = ExportTraceServiceRequest.FromString(body)
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                span.trace_id = bytes(16)
    return request.SerializeToString()


def rejected_logs(body: bytes) -> bytes:
    request = ExportLogsServiceRequest.FromString(body)
    for rl in request.resource_logs:
        for sl in rl.scope_logs:
            for record in sl.log_records:
                record.trace_id = b"short"
    return request.SerializeToString()


def _points(metric):
    kind = metric.WhichOneof("data")
    return getattr(metric, kind).data_points if kind else []


def rejected_metrics(body: bytes) -> bytes:
    request = ExportMetricsServiceRequest.FromString(body)
    for rm in request.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for point in _points(metric):
                    point.time_unix_nano = 2**64 - 1
    return request.SerializeToString()


def gauges_only(body: bytes) -> bytes:
    """The request's gauges, repeated until it is about as large: no sums nor histograms."""
    request = ExportMetricsServiceRequest.FromString(body)
    for rm in request.resource_metrics:
        for sm in rm.scope_metrics:
            gauges = [m for m in sm.metrics if m.WhichOneof("data") == "gauge"]
            del sm.metrics[:]
            sm.metrics.extend(gauges)
    base = request.SerializeToString()
    copies = max(1, round(len(body) / max(1, len(base))))
    return base * copies  # concatenated messages merge: their resource_metrics add up


PRIORS = {
    "spans": [("all rejected", rejected_spans)],
    "logs": [("all rejected", rejected_logs)],
    "metrics": [("all rejected", rejected_metrics), ("gauges only", gauges_only)],
}


def _after_time(
    module: ModuleType, signal: str, priors: list[bytes], payloads: list[bytes]
) -> float:
    """µs of this thread's CPU per request decoding each of ``payloads`` right after its prior
    (the prior's decode untimed)."""
    decode, extra = getattr(module, _FUNCTIONS[signal]), decode_args()
    spent = 0.0
    for prior, payload in zip(priors, payloads, strict=True):
        decode(prior, *extra)
        t0 = time.thread_time()
        decode(payload, *extra)
        spent += time.thread_time() - t0
    return spent / len(payloads) * 1e6


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], rounds=15, requests=100)
    builds = load_builds(args.builds)
    for signal in args.signal:
        rnd = random.Random(signal)
        payloads = [bench_ingest.SIGNALS[signal].make(rnd) for _ in range(args.requests)]
        for label, make_prior in [("after itself", None), *PRIORS[signal]]:
            priors = [make_prior(p) if make_prior else p for p in payloads]
            measure = functools.partial(
                _after_time, signal=signal, priors=priors, payloads=payloads
            )
            report(signal, label, interleaved(builds, args.rounds, measure), width=13)


if __name__ == "__main__":
    main()
