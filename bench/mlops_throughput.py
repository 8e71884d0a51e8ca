"""MLOps plugin: feature values per CPU-second, and the state it keeps per model feature.

    python bench/mlops_throughput.py [--rows 200000] [--features 10]

1. Sketch updates alone (the drift state's hot path), batches of 1,000 and 10,000 values:
   continuous numeric (t-digest), low-cardinality numeric (exact counts), categorical.
2. The consumer path without the server: committed Arrow log batches shaped like the ``ml.*``
   attribute convention (``--features`` features, a prediction and a score per row, 5,000 rows a
   batch) through ``Extractor`` and ``DriftMonitor.observe``, event time moving through slots so
   windows close and are tested; and BentoML monitoring bodies (JSON) the same way.
3. State per model feature once reference and all window slots are full: the sketches' own
   byte count (``state_bytes``) and the process's RSS growth over 2,000 features.

CPU time is ``time.process_time`` of this single-threaded process: values per core-second.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import time

import numpy as np
import pyarrow as pa

from opstrata.plugins.mlops.config import MLOpsConfig
from opstrata.plugins.mlops.monitor import DriftMonitor
from opstrata.plugins.mlops.records import Extractor
from opstrata.plugins.mlops.sketch import CategoricalSketch, NumericSketch
from opstrata.schema import LOGS, Table


def _rss_bytes() -> int:
    # Hand freed heap back first, so RSS counts what is held, not the allocator's free lists.
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def sketch_rates(total: int) -> None:
    rng = np.random.default_rng(0)
    cases = {
        "numeric, continuous (t-digest)": lambda n: rng.lognormal(3, 1, n),
        "numeric, 0-50 integers (exact counts)": lambda n: rng.integers(0, 50, n).astype(float),
        "numeric, 90% zeros (point mass + digest)": lambda n: np.where(
            rng.random(n) < 0.9, 0.0, rng.lognormal(3, 1, n)
        ),
    }
    for batch in (1_000, 10_000):
        for name, make in cases.items():
            data = make(total)
            sketches = [NumericSketch(100) for _ in range(8)]
            started = time.process_time()
            for i, start in enumerate(range(0, total, batch)):
                sketches[i % 8].update(data[start : start + batch])
            spent = time.process_time() - started
            print(f"  {name:42s} batch {batch:6d}: {total / spent / 1e6:6.2f} M values/s")
        labels = np.array(["card", "cash", "wire", "crypto", "voucher"])
        data = pa.array(labels[rng.integers(0, 5, total)])
        sketch = CategoricalSketch(100)
        started = time.process_time()
        for start in range(0, total, batch):
            sketch.update(data.slice(start, batch))
        spent = time.process_time() - started
        name = "categorical, 5 values (counts)"
        print(f"  {name:42s} batch {batch:6d}: {total / spent / 1e6:6.2f} M values/s")


def _log_batch(rng, rows: int, features: int, start_ns: int, step_ns: int) -> pa.RecordBatch:
    times = start_ns + np.arange(rows, dtype=np.int64) * step_ns
    values = rng.normal(50, 10, (rows, features))
    scores = rng.random(rows)
    attrs = []
    for i in range(rows):
        entry = [("ml.model.name", "churn"), ("ml.model.version", "v7")]
        entry += [(f"ml.feature.f{j}", repr(float(values[i, j]))) for j in range(features)]
        entry += [
            ("ml.prediction", "yes" if scores[i] > 0.5 else "no"),
            ("ml.prediction.score", repr(float(scores[i]))),
            ("ml.prediction.id", f"p{start_ns + i}"),
        ]
        attrs.append(entry)
    return _logs(times, attrs, [""] * rows, "churn-svc")


def _bento_batch(rng, rows: int, features: int, start_ns: int, step_ns: int) -> pa.RecordBatch:
    times = start_ns + np.arange(rows, dtype=np.int64) * step_ns
    values = rng.normal(50, 10, (rows, features))
    schema = {
        f"f{j}": {"name": f"f{j}", "role": "feature", "type": "numerical"} for j in range(features)
    }
    schema["pred"] = {"name": "pred", "role": "prediction", "type": "categorical"}
    meta = {"bento_name": "churn", "bento_version": "v7", "monitor_name": "churn", "schema": schema}
    bodies = []
    for i in range(rows):
        row = {f"f{j}": float(values[i, j]) for j in range(features)}
        row |= {
            "pred": "yes",
            "timestamp": 1.7e9,
            "request_id": str(start_ns + i),
            "bento_meta": meta,
        }
        bodies.append(json.dumps(row))
    return _logs(times, [[] for _ in range(rows)], bodies, "churn:churn")


def _logs(times: np.ndarray, attrs: list, bodies: list[str], service: str) -> pa.RecordBatch:
    rows = len(bodies)
    columns = {}
    for field in LOGS:
        if field.name == "Timestamp" or field.name == "ObservedTimestamp":
            columns[field.name] = pa.array(times, pa.int64()).cast(field.type)
        elif field.name == "LogAttributes":
            columns[field.name] = pa.array(attrs, field.type)
        elif field.name == "ResourceAttributes":
            columns[field.name] = pa.array([[("service.name", service)]] * rows, field.type)
        elif field.name == "Body":
            columns[field.name] = pa.array(bodies, pa.string())
        elif field.name == "ServiceName":
            columns[field.name] = pa.array([service] * rows, pa.string())
        else:
            columns[field.name] = pa.nulls(rows, field.type)
    return pa.RecordBatch.from_pydict(columns, schema=LOGS)


def consumer_rate(rows: int, features: int, bento: bool) -> None:
    rng = np.random.default_rng(1)
    config = MLOpsConfig()  # the defaults: 600 s windows of four 150 s slots, 600 s baseline
    monitor = DriftMonitor(config)
    extractor = Extractor()
    make = _bento_batch if bento else _log_batch
    batch_rows = 5_000
    step_ns = 10_000_000  # 100 rows per event-time second: a slot closes every 15,000 rows
    batches = [
        make(rng, batch_rows, features, i * batch_rows * step_ns, step_ns)
        for i in range(rows // batch_rows)
    ]
    started = time.process_time()
    for batch in batches:
        for model_rows in extractor.extract(Table.LOGS, batch).models:
            monitor.observe(model_rows)
    spent = time.process_time() - started
    evaluated = len(monitor.take_history())
    columns = features + (1 if bento else 2)
    values = rows * columns
    label = "BentoML bodies" if bento else "ml.* attributes"
    print(
        f"  {label}: {rows} rows x {columns} columns in {spent:.2f} s CPU: "
        f"{values / spent / 1e6:.2f} M values/s ({rows / spent:,.0f} rows/s), "
        f"{evaluated} windows tested"
    )


def state_per_feature(models: int, features: int) -> None:
    rng = np.random.default_rng(2)
    config = MLOpsConfig(window_seconds=60, window_slots=4, baseline_seconds=60)
    monitor = DriftMonitor(config)
    extractor = Extractor()
    # 60 s of baseline, then 60 s over four slots; lognormal so every sketch is a digest. The
    # same four batches feed every model, so the temporaries of one round are reused by the
    # next and RSS grows by the state kept.
    batches = [_log_batch(rng, 1_000, features, i * 30 * 10**9, 30_000_000) for i in range(4)]
    extracted = [extractor.extract(Table.LOGS, batch).models[0] for batch in batches]
    before = _rss_bytes()
    for m in range(models):
        for rows in extracted:
            rows.model = f"m{m}"
            monitor.observe(rows)
        monitor.take_history()  # the consumer stores and drops evaluated windows per batch
    after = _rss_bytes()
    infos = monitor.infos()
    total_features = sum(len(i.features) for i in infos)
    sketch_bytes = sum(i.state_bytes for i in infos)
    print(
        f"  {total_features} model features: sketches {sketch_bytes / total_features:,.0f} B "
        f"per feature (reference + {config.window_slots} slots); "
        f"RSS growth {(after - before) / total_features:,.0f} B per feature"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--features", type=int, default=10)
    args = parser.parse_args()
    print("sketch updates (per core):")
    sketch_rates(2_000_000)
    print("consumer path, Arrow batch -> extracted columns -> sketches -> window tests:")
    consumer_rate(args.rows, args.features, bento=False)
    consumer_rate(args.rows // 2, args.features, bento=True)
    print("state per model feature (reference and all slots full):")
    state_per_feature(models=170, features=10)


if __name__ == "__main__":
    main()
