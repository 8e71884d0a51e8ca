"""Drift alerts on normal traffic, per simulated day: how often the MLOps monitor cries wolf.

    python bench/mlops_drift_days.py [--days 3] [--seeds 1,2,3] [--rate 0.17]
        [--cycle-rate 1.0] [--package opstrata.plugins.mlops] [--set key=value ...]

Two models with nothing wrong, fed straight to the drift monitor (no server: this measures the
statistics, not the plumbing), default settings unless ``--set``:

- ``fraud``: the demo's fraud model (``opstrata.demo.fraud.predict``, i.i.d. rows) at the rate
  its inferences reach the model server on a normal demo day at 1 request/s (~0.17 rows/s,
  following the demo's daily rate curve);
- ``cyclic``: a model whose inputs follow the time of day (amounts, the country mix and the
  device mix move with the hour), ``--cycle-rate`` rows/s.

Prints the drift alerts started (an alert's later events and its resolution not counted) per
model and day; day 1 is the one the
automatic reference learns from. ``--package`` imports ``config`` and ``monitor`` from another
copy of the plugin (e.g. an older commit's ``plugins/mlops`` copied aside, its imports renamed)
for a before/after comparison.
"""

from __future__ import annotations

import argparse
import importlib
import math
import random
import sys
from collections import Counter
from pathlib import Path

import msgspec
import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from opstrata.demo.fraud import predict
from opstrata.plugins.mlops.records import Column, ModelRows

_NS = 1_000_000_000
_DAY = 86_400
_STEP = 60  # seconds of rows per batch


def _demo_rate(at: float) -> float:
    """The demo's daily traffic curve (``Simulation``): 1 + 0.35 sin, peak mid-afternoon."""
    hour = (at / 3600) % 24
    return 1 + 0.35 * math.sin((hour - 9) / 24 * 2 * math.pi)


def _fraud(rng: random.Random, start: float, rate: float) -> ModelRows | None:
    n = np.random.default_rng(rng.getrandbits(32)).poisson(rate * _demo_rate(start) * _STEP)
    if n == 0:
        return None
    times = np.sort(np.array([start + rng.uniform(0, _STEP) for _ in range(n)]))
    preds = [predict(rng, 0.0, 0.0, 1.0) for _ in range(n)]
    tn = (times * _NS).astype(np.int64)
    columns = {}
    for name in ("amount", "account_age_days", "items", "hour"):
        values = np.array([p.features[name] for p in preds], dtype=np.float64)
        columns[name] = Column("feature", "numerical", tn, values)
    for name in ("country", "device"):
        values = pa.array([str(p.features[name]) for p in preds])
        columns[name] = Column("feature", "categorical", tn, values)
    scores = np.array([p.score for p in preds])
    columns["prediction.score"] = Column("prediction", "numerical", tn, scores)
    columns["prediction"] = Column("prediction", "numerical", tn, (scores >= 0.6) * 1.0)
    return ModelRows("fraud", "3", {"service.name": "model-server"}, tn, columns)


def _cyclic(rng: np.random.Generator, start: float, rate: float) -> ModelRows | None:
    n = rng.poisson(rate * _STEP)
    if n == 0:
        return None
    times = start + np.sort(rng.uniform(0, _STEP, n))
    phase = np.sin(2 * np.pi * (times % _DAY) / _DAY)
    amount = np.exp(rng.normal(np.log(60) + 0.4 * phase, 0.9))
    mobile = rng.random(n) < 0.5 + 0.15 * phase
    us = 0.25 + 0.1 * (1 + phase)
    draw = rng.random(n)
    country = np.where(draw < us, "US", np.where(draw < us + 0.3, "DE", "FR"))
    score = 1 / (1 + np.exp(-(np.log(amount / 60) + rng.normal(0, 0.5, n) - 2)))
    tn = (times * _NS).astype(np.int64)
    columns = {
        "amount": Column("feature", "numerical", tn, amount),
        "account_age_days": Column("feature", "numerical", tn, rng.exponential(400, n).round()),
        "country": Column("feature", "categorical", tn, pa.array(country)),
        "device": Column("feature", "categorical", tn, pa.array(np.where(mobile, "m", "d"))),
        "prediction.score": Column("prediction", "numerical", tn, score),
    }
    return ModelRows("cyclic", "1", {"service.name": "cyclic"}, tn, columns)


def _settings(pairs: list[str], config_type: type) -> dict[str, object]:
    out: dict[str, object] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        out[key] = value
    # The settings' own parser gives each value its declared type (window_slots=4 an int).
    return msgspec.structs.asdict(msgspec.convert(out, config_type, strict=False))


def run(args: argparse.Namespace, seed: int) -> Counter:
    config_mod = importlib.import_module(f"{args.package}.config")
    monitor_mod = importlib.import_module(f"{args.package}.monitor")
    config = config_mod.MLOpsConfig(**_settings(args.set, config_mod.MLOpsConfig))
    raised: Counter = Counter()
    start = 1_795_500_000 // _DAY * _DAY  # midnight: day d is [start + d·day, ...)

    firing: set[tuple[str, str]] = set()

    def emit(event: object) -> None:
        key = (event.entity.name, event.kind)  # type: ignore[attr-defined]
        if event.resolved:  # type: ignore[attr-defined]
            firing.discard(key)
        elif key not in firing:  # an alert starts (later events of it only update it)
            firing.add(key)
            day = int((event.time_unix_nano / _NS - start) // _DAY) + 1  # type: ignore[attr-defined]
            raised[(key[0], day)] += 1

    monitor = monitor_mod.DriftMonitor(config, emit)
    rng, nrng = random.Random(seed), np.random.default_rng(seed)
    for step in range(int(args.days * _DAY / _STEP)):
        at = start + step * _STEP
        for rows in (_fraud(rng, at, args.rate), _cyclic(nrng, at, args.cycle_rate)):
            if rows is not None:
                monitor.observe(rows)
        monitor.take_history()
    return raised


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--rate", type=float, default=0.17, help="fraud rows per second")
    parser.add_argument("--cycle-rate", type=float, default=1.0, help="cyclic rows per second")
    parser.add_argument("--package", default="opstrata.plugins.mlops")
    parser.add_argument("--set", action="append", default=[], help="a setting, key=value")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"drift alerts started per day ({args.package}, {args.set or 'default settings'})\n")
    print("| model | seed | " + " | ".join(f"day {d}" for d in range(1, args.days + 1)) + " |")
    print("|---|---|" + "---|" * args.days)
    totals: Counter = Counter()
    for seed in seeds:
        raised = run(args, seed)
        for model in ("fraud:3", "cyclic:1"):
            counts = [raised[(model, d)] for d in range(1, args.days + 1)]
            totals[model] += sum(counts[1:])
            print(f"| {model} | {seed} | " + " | ".join(map(str, counts)) + " |")
    later = len(seeds) * (args.days - 1)
    for model, total in totals.items():
        print(f"\n{model}: {total / max(later, 1):.2f} alerts per day after the first")
    return 0


if __name__ == "__main__":
    sys.exit(main())
