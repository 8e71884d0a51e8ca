"""AIOps alerts on the simulated shop, without a server: noise on normal traffic, faults caught.

    python bench/aiops_demo.py [--scenarios normal,slow-database,...|all] [--seeds 1,2]
        [--normal-hours 6] [--warmup 45] [--fault 15] [--rate 3] [--cache DIR] [--top 25]

The demo's telemetry (``Simulation.ticks()``, the same bytes ``opstrata demo`` sends) is encoded
by the OpenTelemetry SDK's own OTLP encoders and decoded by opstrata's decoder into the Arrow
batches the server commits; the three AIOps consumers' series code (metrics, RED from spans,
logs) then runs on them with a scorer whose alerts are collected here. No store, no other
plugin: the same detection code as the server, minutes faster, so a change to the detectors can
be measured on hours of simulated traffic. Decoded batches are cached (``--cache``), so a second
run only replays the detectors.

Reported per run: alerts (one per key and anomaly episode, as the alert book counts them) by
series name; for fault scenarios, the first alert on an entity the fault affects after the
fault's onset (seconds; alerts that began before the onset do not count), and the alerts
outside the fault window.
"""

from __future__ import annotations

import argparse
import collections
import json
import pickle
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from opentelemetry.exporter.otlp.proto.common._internal._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common._internal.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.common._internal.trace_encoder import encode_spans

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from opstrata import AlertEvent, Table
from opstrata.demo import SCENARIOS, Simulation
from opstrata.otlp.decoder import Encoding, decode_request
from opstrata.otlp.limits import DecodeLimits
from opstrata.plugins.aiops.config import parse_config
from opstrata.plugins.aiops.consumers import DETECTORS
from opstrata.plugins.aiops.logs import LogSeries
from opstrata.plugins.aiops.metrics import MetricSeries
from opstrata.plugins.aiops.scorer import SeriesScorer
from opstrata.plugins.aiops.spans import RedSeries
from opstrata.schema import Signal

_NS = 1_000_000_000
START = 1_767_571_200 * _NS  # Monday 2026-01-05 00:00 UTC: a fixed start, the same bytes each run
_TIME = {Table.TRACES: "Timestamp", Table.LOGS: "Timestamp"}


def decoded_batches(sim: Simulation) -> list[list[tuple[Table, pa.RecordBatch]]]:
    """Every tick's telemetry as the server's decoder turns it into Arrow batches."""
    limits = DecodeLimits()
    out = []
    for tick in sim.ticks():
        batches: list[tuple[Table, pa.RecordBatch]] = []
        for signal, items, encode in (
            (Signal.SPANS, tick.spans, encode_spans),
            (Signal.LOG_RECORDS, tick.log_records, encode_logs),
            (Signal.METRIC_POINTS, tick.metrics, encode_metrics),
        ):
            if items:
                body = encode(items).SerializeToString()
                batches += decode_request(signal, body, Encoding.PROTOBUF, limits).batches
        out.append(batches)
    return out


def load(
    scenario: str,
    seed: int,
    minutes: float,
    warmup: float,
    rate: float,
    cache: Path,
    start_hour: float = 0.0,
) -> tuple[Simulation, list[list[tuple[Table, pa.RecordBatch]]]]:
    """The run's simulation and its decoded batches, from the cache when they were made before
    (the telemetry depends only on these arguments: the start is fixed)."""
    sim = Simulation(
        scenario=scenario, seed=seed, speed=0.0, warmup_minutes=warmup,
        duration_minutes=minutes, rate=rate, start_unix_nano=START + int(start_hour * 3600) * _NS,
    )  # fmt: skip
    hour = f"-{start_hour:g}h" if start_hour else ""
    path = cache / f"{scenario}-{seed}-{minutes:g}-{warmup:g}-{rate:g}{hour}.pickle"
    if path.exists():
        with path.open("rb") as handle:
            return sim, pickle.load(handle)
    ticks = decoded_batches(sim)
    cache.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        pickle.dump(ticks, handle, protocol=pickle.HIGHEST_PROTOCOL)
    return sim, ticks


class Detection:
    """The three AIOps consumers' series code, fed batch by batch, alerts collected."""

    def __init__(self, settings: dict) -> None:
        self.events: list[AlertEvent] = []
        config = parse_config(settings)
        params = {"warmup": config.warmup, "seasonality": config.seasonality}
        params.update(config.detector_params)

        def scorer() -> SeriesScorer:
            return SeriesScorer(config, DETECTORS[config.detector](params), self.events.append)

        self.metrics = MetricSeries(scorer())
        self.red = RedSeries(
            scorer(), int(config.interval_seconds * _NS), config.lateness_windows,
            config.min_spans,
        )  # fmt: skip
        self.logs = LogSeries(scorer(), config, self.events.append)
        # As the consumers do: other signals move a family's clock only this far behind.
        self.other_lag = int(config.other_signal_lateness_windows * config.interval_seconds * _NS)

    def feed(self, batches: list[tuple[Table, pa.RecordBatch]]) -> None:
        for table, records in batches:
            times = records.column(_TIME.get(table, "TimeUnix")).cast("int64")
            latest = int(pc.approximate_median(times).as_py() or 0)
            if table is Table.TRACES:
                self.red.consume(records)
            else:
                self.red.clock.advance(latest - self.other_lag)
                self.red.flush()
            if table is Table.LOGS:
                self.logs.consume(records)
            else:
                self.logs.clock.advance(latest - self.other_lag)
                self.logs.flush()
            if table.name.startswith("METRICS"):
                self.metrics.consume({table: records})

    def alerts(self) -> list[AlertEvent]:
        """One per anomaly episode: the first event of a key after it was resolved (or ever)."""
        firing: set[str] = set()
        out = []
        for event in self.events:
            if event.resolved:
                firing.discard(event.key)
            elif event.key not in firing:
                firing.add(event.key)
                out.append(event)
        return out


def series_name(event: AlertEvent) -> str:
    """``kind:series name`` (the name leads the summary: ``latency_p99 of service …``)."""
    if event.kind in ("new_log_template", "log_silence"):
        return event.kind
    summary = event.summary
    return f"{event.kind}:{summary.split(' of ', 1)[0] if ' of ' in summary else summary[:40]}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default="normal")
    parser.add_argument("--seeds", default="1")
    parser.add_argument("--normal-hours", type=float, default=6.0)
    parser.add_argument("--warmup", type=float, default=45.0)
    parser.add_argument("--fault", type=float, default=15.0)
    parser.add_argument("--rate", type=float, default=3.0)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/opstrata-aiops-demo"))
    parser.add_argument("--settings", default="{}", help="[plugins.aiops] as JSON")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--start-hour", type=float, default=0.0,
        help="simulated start, hours after Monday 00:00 UTC (traffic follows the time of day)",
    )  # fmt: skip
    args = parser.parse_args()
    settings = json.loads(args.settings)
    names = [n for n in SCENARIOS] if args.scenarios == "all" else args.scenarios.split(",")
    totals: collections.Counter[str] = collections.Counter()
    rows = []
    for name in names:
        for seed in [int(s) for s in args.seeds.split(",")]:
            normal = name == "normal"
            minutes = args.normal_hours * 60 if normal else args.warmup + args.fault
            began = time.monotonic()
            sim, ticks = load(
                name, seed, minutes, args.warmup, args.rate, args.cache, args.start_hour
            )
            loaded = time.monotonic() - began
            detection = Detection(settings)
            began = time.monotonic()
            for batches in ticks:
                detection.feed(batches)
            spent = time.monotonic() - began
            alerts = detection.alerts()
            by_name = collections.Counter(series_name(a) for a in alerts)
            detect = "-"
            outside = len(alerts)
            if not normal:
                [truth] = sim.truths
                wanted = {truth.root_cause, *truth.aliases, *truth.affected}
                onset, end = truth.onset_unix_nano, truth.end_unix_nano
                inside = [a for a in alerts if onset - 60 * _NS <= a.time_unix_nano < end]
                outside = len(alerts) - len(inside)
                # Detection: the first alert on an affected entity whose onset is not before
                # the fault's (one that began earlier is noise that happened to be there); a
                # change event (a deploy, info) is a cause, not a detected effect.
                hits = sorted(
                    (
                        a
                        for a in inside
                        if a.entity in wanted and a.time_unix_nano >= onset and a.severity != "info"
                    ),
                    key=lambda a: a.time_unix_nano,
                )
                detect = f"{max(0, hits[0].time_unix_nano - onset) / _NS:.0f}" if hits else "MISSED"
                for a in hits[:3]:
                    print(
                        f"    {(a.time_unix_nano - onset) / _NS:+5.0f} s  {series_name(a)} "
                        f"{a.entity.kind} {a.entity.name}"
                    )
            hours = minutes / 60 if normal else args.warmup / 60
            rows.append((name, seed, len(alerts), outside, outside / hours, detect))
            print(
                f"{name} seed {seed}: {len(alerts)} alerts ({outside} outside the fault, "
                f"{outside / hours:.1f}/h), detect {detect} s; loaded {loaded:.0f} s, "
                f"detectors {spent:.0f} s",
                flush=True,
            )
            if normal:
                totals.update(by_name)
    if totals:
        print("\nnormal traffic, alerts by kind:series name")
        for key, count in totals.most_common(args.top):
            print(f"  {count:5d}  {key}")
    print("\n| scenario | seed | alerts | outside fault | per hour outside | detect (s) |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print("| {} | {} | {} | {} | {:.1f} | {} |".format(*row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
