"""AIOps throughput and memory: the default detector ensemble, the sketch, template mining.

    python bench/aiops_perf.py [--series 100000] [--points 10] [--lines 200000] [--rates]
        [--ratios]

- detector: points/s (process CPU time) through the default ensemble (``robust``), with
  ``--series`` live series each getting ``--points`` points per batch (the shape of a fleet
  scraped every interval), and the state's bytes per series;
- ``--rates``: the same, every series a rate of whole events with its seconds (the count test
  of counter rates and request rates) — A/B against the plain run;
- ``--ratios``: every series an error ratio of ~20 requests a window (2 % failing) with its
  request count, the two-in-a-row rule (``ratio_test = pair``) against the CUSUM, interleaved;
  and the deploy watch (``deploys.py``): spans/s of the per-batch version look-up;
- one series fed point by point (the ``opstrata detect`` shape);
- the log-bucket latency sketch: values/s into per-group sketches, merge, quantiles;
- template mining: lines/s of generated application logs (``TemplateMiner.add``).
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
import pyarrow as pa

from opstrata.plugins.aiops.deploys import DeployWatch
from opstrata.plugins.aiops.drain import TemplateMiner
from opstrata.plugins.aiops.engine import RobustSeasonalDetector
from opstrata.plugins.aiops.sketch import LogHistogram

T0 = 1_767_571_200 * 10**9
STEP = 60 * 10**9


def cpu(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def detector(
    series: int, points: int, batches: int, warm: int = 40, rates: bool = False,
    ratio_test: str = "",
) -> None:  # fmt: skip
    """Steady state: ``warm`` points per series first (warm-up, array growth), not timed.
    ``rates``: counts of ~100 events a minute fed as rates per second with their 60 s.
    ``ratio_test``: error ratios of ~20 requests (2 % failing) judged by that ratio test."""
    rng = np.random.default_rng(1)
    det = RobustSeasonalDetector({"ratio_test": ratio_test} if ratio_test else {})
    all_ids = np.arange(series)
    if rates:
        det.configure(all_ids, rate=True)
    if ratio_test:
        det.configure(all_ids, ratio=True)

    def values_of(size: int) -> tuple[np.ndarray, dict]:
        if ratio_test:
            n = np.maximum(rng.poisson(20, size), 1)
            return rng.binomial(n, 0.02) / n, {"weights": n.astype(np.float64)}
        if not rates:
            return 100 + rng.normal(0, 5, size), {}
        return rng.poisson(100, size) / 60.0, {"weights": np.full(size, 60.0)}

    for w in range(warm):
        v, extra = values_of(series)
        det.update(all_ids, np.full(series, T0 + w * STEP), v, **extra)
    ids = np.tile(all_ids, points)
    total = 0
    seconds = 0.0
    for b in range(batches):
        times = np.repeat(T0 + (warm + b * points + np.arange(points)) * STEP, series)
        values, extra = values_of(ids.size)
        seconds += cpu(lambda t=times, v=values, e=extra: det.update(ids, t, v, **e))
        total += ids.size
    print(
        f"detector{' (rates)' if rates else ''}"
        f"{f' (ratios, {ratio_test})' if ratio_test else ''}: "
        f"{series:,} series x {points} points/batch x "
        f"{batches} batches: "
        f"{total / seconds:,.0f} points/s; state {det.nbytes / 2**20:,.1f} MiB "
        f"({det.nbytes / series:,.0f} B/series)"
    )


def deploys(spans: int, batches: int) -> None:
    """The deploy watch on span batches of 200 services, each at one of two versions."""
    rng = np.random.default_rng(2)
    services = pa.array([f"svc-{i}" for i in rng.integers(0, 200, spans)])
    keys = pa.array([["service.version", "host.name"]] * spans)
    values = [[f"1.{v}", "node-1"] for v in rng.integers(0, 2, spans)]
    resources = pa.MapArray.from_arrays(
        pa.array(np.arange(0, 2 * spans + 1, 2, dtype=np.int32)),
        keys.flatten(), pa.array([x for pair in values for x in pair]),
    )  # fmt: skip
    watch = DeployWatch(lambda event: None)
    seconds = 0.0
    for b in range(batches):
        times = pa.array(T0 + b * STEP + np.sort(rng.integers(0, STEP, spans)))
        seconds += cpu(lambda t=times: watch.observe(services, resources, t))
    rate = spans * batches / seconds
    print(f"deploy watch: {spans:,} spans x {batches} batches: {rate:,.0f} spans/s")


def single(points: int) -> None:
    rng = np.random.default_rng(2)
    det = RobustSeasonalDetector({})
    times = T0 + np.arange(points) * STEP
    values = 100 + rng.normal(0, 5, points)
    seconds = cpu(lambda: det.update(np.zeros(points, np.int64), times, values))
    print(f"one series, {points:,} points in one call: {points / seconds:,.0f} points/s")


def sketch(values: int, groups: int) -> None:
    rng = np.random.default_rng(3)
    g = rng.integers(0, groups, values)
    v = rng.lognormal(3, 1, values)
    halves = []
    seconds = cpu(
        lambda: halves.extend(
            [
                LogHistogram.of(g[: values // 2], v[: values // 2]),
                LogHistogram.of(g[values // 2 :], v[values // 2 :]),
            ]
        )
    )
    merged: list[LogHistogram] = []
    merge_s = cpu(lambda: merged.append(halves[0].merge(halves[1])))
    out: list = []
    q_s = cpu(lambda: out.append(merged[0].quantiles((0.5, 0.99))))
    true = np.quantile(v[g == 0], 0.99)
    est = out[0][1][0, 1]
    print(
        f"sketch: {values / seconds:,.0f} values/s ({1e9 * seconds / values:.0f} ns/value) "
        f"into {groups:,} groups; merge {merge_s * 1e3:.1f} ms; quantiles {q_s * 1e3:.1f} ms; "
        f"p99 error {abs(est - true) / true:.2%}"
    )


def log_lines(n: int) -> list[str]:
    random.seed(1)
    names = [f"user{i}" for i in range(2000)] + ["alice", "bob", "carol", "dave"]
    hosts = [f"db-{i}.internal" for i in range(40)]
    templates = [
        lambda: (
            f"Accepted password for {random.choice(names)} from 10.0.{random.randint(0, 255)}."
            f"{random.randint(0, 255)} port {random.randint(1000, 65000)} ssh2"
        ),
        lambda: f"GET /api/v1/users/{random.randint(1, 10**6)} 200 {random.random() * 100:.2f}ms",
        lambda: f"Connection closed by {random.choice(names)} [preauth]",
        lambda: f"request id={random.getrandbits(64):016x} took {random.randint(1, 900)} ms",
        lambda: f"Failed to connect to {random.choice(hosts)} retrying in {random.randint(1, 9)}s",
        lambda: f"session opened for user {random.choice(names)} by (uid=0)",
        lambda: f"Cache miss for key product:{random.randint(1, 99999)} region eu-west-1",
        lambda: (
            f"order {random.randint(10**5, 10**6)} paid by {random.choice(names)} total "
            f"{random.random() * 500:.2f} EUR"
        ),
        lambda: (
            f"worker {random.randint(1, 64)} finished job {random.getrandbits(32):08x} in "
            f"{random.randint(1, 5000)} ms status=ok"
        ),
        lambda: (
            f"kafka consumer group billing lag {random.randint(0, 10**4)} on partition "
            f"{random.randint(0, 31)}"
        ),
    ]
    return [random.choice(templates)() for _ in range(n)]


def mining(n: int) -> None:
    lines = log_lines(n)
    miner = TemplateMiner()

    def run() -> None:
        for i in range(0, n, 4096):
            miner.add(lines[i : i + 4096])

    seconds = cpu(run)
    print(f"templates: {n:,} lines: {n / seconds:,.0f} lines/s; {len(miner.tokens)} templates")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=100_000)
    parser.add_argument("--points", type=int, default=10)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--rates", action="store_true", help="only the detector, plain vs rates")
    parser.add_argument("--ratios", action="store_true", help="ratio tests A/B, deploy watch")
    args = parser.parse_args()
    if args.ratios:
        for _ in range(2):  # interleaved A/B: the machine is shared
            detector(args.series, args.points, args.batches, ratio_test="pair")
            detector(args.series, args.points, args.batches, ratio_test="cusum")
        deploys(10_000, 20)
        return
    if args.rates:
        for _ in range(2):  # interleaved A/B: the machine is shared
            detector(args.series, args.points, args.batches)
            detector(args.series, args.points, args.batches, rates=True)
        return
    detector(args.series, 1, args.batches * args.points)
    detector(args.series, args.points, args.batches)
    single(5_000)
    sketch(1_000_000, 10_000)
    mining(args.lines)


if __name__ == "__main__":
    main()
