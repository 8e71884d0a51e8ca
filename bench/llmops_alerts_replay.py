"""LLMOps alerts on simulated traffic, offline: the demo's LLM spans go through the server's own
OTLP decoder, LLM-call recognition and pricing into the alert detector (``CallAlerts``), with no
server, so detector changes can be judged on hours of traffic in a minute.

    python bench/llmops_alerts_replay.py --scenario normal --hours 6 --rate 1 [--seed 1]
    python bench/llmops_alerts_replay.py --scenario llm-cost-spike --warmup 45 --fault 15

Prints the alerts raised (kind, entity, minute, summary) and a count per kind and entity; for a
fault scenario, the first alert at or after the onset and how long after it came. Only the
detector is exercised: the real end-to-end figures come from ``bench/incidents_eval.py``.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import pyarrow as pa
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from opstrata.alerts import AlertEvent
from opstrata.demo.simulation import Simulation
from opstrata.otlp.decoder import Encoding, decode_request
from opstrata.otlp.limits import DecodeLimits
from opstrata.plugins.llmops.config import LLMOpsConfig
from opstrata.plugins.llmops.consumer import price_calls
from opstrata.plugins.llmops.detect import CallAlerts
from opstrata.plugins.llmops.prices import PriceTable, shipped_entries
from opstrata.plugins.llmops.privacy import ContentPolicy
from opstrata.plugins.llmops.recognise import SpanColumns, recognise
from opstrata.schema import Signal

_MINUTE = 60_000_000_000


def replay(sim: Simulation, config: LLMOpsConfig) -> list[AlertEvent]:
    """Every alert event the detector emits over the simulation's LLM calls."""
    events: list[AlertEvent] = []
    alerts = CallAlerts(config.alerts, config.budgets, events.append,
                        lambda s: {"service.name": s})  # fmt: skip
    policy = ContentPolicy("drop", [], 0)
    prices = PriceTable(list(config.prices) + shipped_entries())
    limits = DecodeLimits()
    pending = []
    for number, tick in enumerate(sim.ticks()):
        pending += [
            s for s in tick.spans if s.attributes and "gen_ai.operation.name" in s.attributes
        ]
        if number % 6 != 5 or not pending:  # a minute of ticks per batch, as a server groups
            continue
        body = encode_spans(pending).SerializeToString()
        pending = []
        decoded = decode_request(Signal.SPANS, body, Encoding.PROTOBUF, limits)
        for _, batch in decoded.batches:
            found = recognise(SpanColumns.of_spans(pa.Table.from_batches([batch])), policy)
            if found is not None:
                alerts.add(price_calls(found.calls, prices))
    alerts.flush()
    return events


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", default="normal")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--hours", type=float, default=6.0, help="length of a normal run")
    parser.add_argument("--rate", type=float, default=1.0, help="requests per simulated second")
    parser.add_argument("--warmup", type=float, default=45.0)
    parser.add_argument("--fault", type=float, default=15.0)
    parser.add_argument("--start", type=int, default=None, help="simulated start, Unix ns")
    parser.add_argument("--quiet", action="store_true", help="counts only")
    args = parser.parse_args()
    normal = args.scenario == "normal"
    minutes = args.hours * 60 if normal else args.warmup + args.fault
    sim = Simulation(
        scenario=args.scenario, seed=args.seed, speed=0.0, warmup_minutes=args.warmup,
        duration_minutes=minutes, rate=args.rate, start_unix_nano=args.start,
    )  # fmt: skip
    events = replay(sim, LLMOpsConfig())
    raised = [e for e in events if not e.resolved]
    for e in raised if not args.quiet else []:
        minute = (e.time_unix_nano - sim.start_unix_nano) / _MINUTE
        print(f"{minute:7.1f}  {e.kind:20s} {e.entity.kind}:{e.entity.name:28s} {e.summary}")
    counts = collections.Counter((e.kind, e.entity.name) for e in raised)
    for (kind, name), n in counts.most_common():
        print(f"{n:5d}  {kind} {name}")
    print(f"alert events raised: {len(raised)} over {minutes:g} simulated minutes "
          f"({args.scenario}, seed {args.seed}, {args.rate:g} requests/s)")  # fmt: skip
    if not normal:
        after = [e for e in raised if e.time_unix_nano >= sim.onset_unix_nano]
        before = [e for e in raised if e.time_unix_nano < sim.onset_unix_nano]
        print(f"before the onset: {len(before)}")
        if after:
            first = min(after, key=lambda e: e.time_unix_nano)
            delay = (first.time_unix_nano - sim.onset_unix_nano) / 1e9
            print(f"first alert after the onset: {first.kind} {first.entity.name} +{delay:.0f} s")
        else:
            print("no alert after the onset")
    return 0


if __name__ == "__main__":
    sys.exit(main())
