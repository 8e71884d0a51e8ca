"""What a periodic save of AIOps' and MLOps' learnt state costs (``opstrata.statefile``).

Builds realistic states in process — the AIOps metrics consumer with ``--series`` gauge series
past their warm-up, the MLOps consumer with ``--models`` model versions of ``--features``
features each, their references learnt and their windows full — by feeding real decoded OTLP
requests, then times ``save_state()`` (encode + write + fsync + rename + fsync of the
directory) ``--repeat`` times and prints the median and the size.

    python bench/statefile_save.py --series 10000 --models 20 --features 10
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from opstrata.consumers import CommittedBatch, ConsumerContext
from opstrata.otlp.decoder import Encoding, decode_request
from opstrata.otlp.limits import DecodeLimits
from opstrata.plugins.aiops.config import AiopsConfig
from opstrata.plugins.aiops.consumers import MetricsConsumer
from opstrata.plugins.mlops.config import MLOpsConfig
from opstrata.plugins.mlops.consumer import MLOps
from opstrata.schema import Signal

NS = 10**9
T0 = 1_767_571_200 * NS


def _kv(key: str, value: str | float) -> KeyValue:
    if isinstance(value, str):
        return KeyValue(key=key, value=AnyValue(string_value=value))
    return KeyValue(key=key, value=AnyValue(double_value=value))


def _metrics(series: int, step: int) -> bytes:
    """One point of each of ``series`` gauge series (one request)."""
    request = ExportMetricsServiceRequest()
    rm = request.resource_metrics.add()
    rm.resource.attributes.append(_kv("service.name", "bench"))
    metric = rm.scope_metrics.add().metrics.add(name="app.queue.depth")
    for i in range(series):
        point = metric.gauge.data_points.add(
            time_unix_nano=T0 + step * 60 * NS, as_double=5.0 + ((i * 7 + step * 13) % 11) / 10
        )
        point.attributes.append(_kv("queue", f"q{i}"))
    return request.SerializeToString()


def _model_logs(models: int, features: int, slot: int, rows: int) -> bytes:
    request = ExportLogsServiceRequest()
    rl = request.resource_logs.add()
    rl.resource.attributes.append(_kv("service.name", "scorer"))
    records = rl.scope_logs.add().log_records
    for m in range(models):
        for r in range(rows):
            record = records.add(time_unix_nano=T0 + slot * 30 * NS + r * NS // 10)
            record.body.string_value = "prediction"
            record.attributes.append(_kv("ml.model.name", f"model-{m}"))
            record.attributes.append(_kv("ml.model.version", "1"))
            for f in range(features):
                record.attributes.append(_kv(f"ml.feature.f{f}", float((r * (f + 3)) % 97)))
            record.attributes.append(_kv("ml.feature.country", ["DE", "FR", "US"][r % 3]))
            record.attributes.append(_kv("ml.prediction.score", (r % 10) / 10))
    return request.SerializeToString()


def _time(save, repeat: int) -> float:
    took = []
    for _ in range(repeat):
        started = time.perf_counter()
        save()
        took.append(time.perf_counter() - started)
    return statistics.median(took)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--points", type=int, default=40, help="points per series (warm-up 30)")
    parser.add_argument("--models", type=int, default=20)
    parser.add_argument("--features", type=int, default=10)
    parser.add_argument("--slots", type=int, default=40, help="30 s slots of model rows")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    limits = DecodeLimits()
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        ctx = ConsumerContext("aiops", "metrics", state, lambda *_: None, None, {})
        consumer = MetricsConsumer(AiopsConfig(store_points=False))
        consumer.start(ctx)
        for step in range(args.points):
            decoded = decode_request(
                Signal.METRIC_POINTS, _metrics(args.series, step), Encoding.PROTOBUF, limits
            )
            consumer.consume(CommittedBatch.of(step + 1, decoded.batches), ctx)
        took = _time(consumer.save_state, args.repeat)
        size = consumer.state_file.save_bytes
        print(
            f"aiops metrics: {len(consumer.scorer.registry)} series, state {size / 2**20:.1f} MiB,"
            f" save {took * 1000:.1f} ms (median of {args.repeat})"
        )

        config = MLOpsConfig(window_seconds=600, window_slots=20, baseline_seconds=600)
        mlops = MLOps(config)
        mlops.start(ConsumerContext("mlops", "models", state, lambda *_: None, None, {}))
        for slot in range(args.slots):
            decoded = decode_request(
                Signal.LOG_RECORDS,
                _model_logs(args.models, args.features, slot, 60),
                Encoding.PROTOBUF,
                limits,
            )
            mlops.consume(CommittedBatch.of(10_000 + slot, decoded.batches))
        took = _time(mlops.save_state, args.repeat)
        size = mlops.state_file.save_bytes if mlops.state_file else 0
        print(
            f"mlops: {len(mlops.monitor.models)} model versions x {args.features + 2} columns,"
            f" state {size / 2**20:.1f} MiB, save {took * 1000:.1f} ms (median of {args.repeat})"
        )


if __name__ == "__main__":
    main()
