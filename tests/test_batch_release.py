"""Committed batches let go without the GIL (``opstrata.batch_release``): what only they held is
freed by the call, what someone else still holds stays intact, and buffers owned by Python
objects are freed too (their destructors take the GIL back themselves)."""

from __future__ import annotations

import gc
import random
import weakref

import numpy as np
import pyarrow as pa
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from opstrata.batch_release import release
from opstrata.consumers import CommittedBatch
from opstrata.memstats import malloc_bytes
from opstrata.otlp.decoder import Encoding, decode_request
from opstrata.otlp.limits import DecodeLimits
from opstrata.schema import Signal, Table

_T0 = 1_767_225_600 * 10**9


def _kv(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def _spans(rnd: random.Random, n: int = 200) -> bytes:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.extend([_kv("service.name", "cart")])
    scope = resource_spans.scope_spans.add()
    for i in range(n):
        span = scope.spans.add(trace_id=rnd.randbytes(16), span_id=rnd.randbytes(8))
        span.name = f"GET /item/{i}"
        span.start_time_unix_nano, span.end_time_unix_nano = _T0 + i, _T0 + i + 1000
        span.attributes.extend([_kv("url.full", f"https://shop/{rnd.random()}" * 8)])
    return request.SerializeToString()


def _metrics(rnd: random.Random, n: int = 100) -> bytes:
    """Gauges, sums and histograms: one request that fills three tables."""
    request = ExportMetricsServiceRequest()
    resource_metrics = request.resource_metrics.add()
    resource_metrics.resource.attributes.extend([_kv("service.name", "cart")])
    scope = resource_metrics.scope_metrics.add()
    for i in range(n):
        gauge = scope.metrics.add(name=f"g{i}").gauge.data_points.add()
        gauge.time_unix_nano, gauge.as_double = _T0 + i, rnd.random()
        total = scope.metrics.add(name=f"s{i}").sum
        total.aggregation_temporality, total.is_monotonic = 2, True
        point = total.data_points.add(time_unix_nano=_T0 + i, as_int=i)
        point.attributes.extend([_kv("route", f"/r/{i}")])
        histogram = scope.metrics.add(name=f"h{i}").histogram
        histogram.aggregation_temporality = 2
        bucketed = histogram.data_points.add(time_unix_nano=_T0 + i, count=3, sum=1.5)
        bucketed.explicit_bounds.extend([1.0, 2.0])
        bucketed.bucket_counts.extend([1, 1, 1])
    return request.SerializeToString()


def _committed(signal: Signal, bodies: list[bytes]) -> list[CommittedBatch]:
    return [
        CommittedBatch.of(
            seq, decode_request(signal, body, Encoding.PROTOBUF, DecodeLimits()).batches
        )
        for seq, body in enumerate(bodies, 1)
    ]


def _heap_used() -> int:
    found = malloc_bytes()
    assert found is not None, "these tests read glibc's heap"
    return found[0]


def test_release_frees_what_only_the_batches_held() -> None:
    rnd = random.Random(7)
    for signal, bodies in (
        (Signal.SPANS, [_spans(rnd) for _ in range(40)]),
        (Signal.METRIC_POINTS, [_metrics(rnd) for _ in range(40)]),
    ):
        batches = _committed(signal, bodies)
        held = sum(batch.nbytes for batch in batches)
        assert len({table for batch in batches for table in batch.tables}) >= (
            3 if signal is Signal.METRIC_POINTS else 1
        )
        gc.collect()
        before = _heap_used()
        release(batches)
        assert batches == []  # the caller's list is emptied: its references were the last
        freed = before - _heap_used()
        # The decoders' buffers come from the C heap: at least what the batches counted goes.
        assert freed >= 0.9 * held, (signal, freed, held)


def test_batches_held_elsewhere_stay_intact() -> None:
    rnd = random.Random(11)
    batches = _committed(Signal.METRIC_POINTS, [_metrics(rnd) for _ in range(5)])
    kept = [dict(batch.tables) for batch in batches]  # another consumer's references
    copies = [
        {table: records.serialize().to_pybytes() for table, records in t.items()} for t in kept
    ]
    release(batches)
    gc.collect()
    assert batches == []
    for tables, copy in zip(kept, copies, strict=True):
        assert {
            table: records.serialize().to_pybytes() for table, records in tables.items()
        } == copy


def test_python_owned_buffers_and_differing_schemas_are_freed() -> None:
    owner = np.arange(100_000, dtype=np.int64)  # numpy memory: Arrow holds the array itself
    alive = weakref.ref(owner)
    zero_copy = pa.RecordBatch.from_arrays([pa.array(owner)], ["TimeUnix"])
    other = pa.RecordBatch.from_arrays(
        [pa.array(np.arange(3, dtype=np.int64)), pa.array(["a", "b", "c"])], ["TimeUnix", "Name"]
    )
    del owner
    batches = [
        CommittedBatch.of(1, [(Table.METRICS_GAUGE, zero_copy)]),
        CommittedBatch.of(2, [(Table.METRICS_GAUGE, other)]),  # another schema, same table
    ]
    del zero_copy, other
    assert alive() is not None
    release(batches)
    assert batches == []
    assert alive() is None  # freed inside the call, its destructor having taken the GIL
