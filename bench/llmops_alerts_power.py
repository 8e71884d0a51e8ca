"""How quiet and how quick the LLMOps bucket alerts are, on synthetic calls fed straight into the
detector (``CallAlerts``): per seed, ``--normal`` minutes of one model's ordinary calls (Poisson
``--rate`` calls a minute; lognormal input and output tokens, TTFT and duration; 1 % failed),
then a fault of a given size. Prints, per fault, the alerts raised before it (false) and the
delay in buckets from its onset to the first alert of its kind (None: not within ``--after``).

    python bench/llmops_alerts_power.py --rate 6 [--seeds 8] [--normal 240] [--after 10]

Faults: latency and TTFT x2 / x3; input tokens x2 / x3 (cost per call about x1.5 / x2.2);
failed share 20 % / 50 %.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from opstrata.alerts import AlertEvent
from opstrata.plugins.llmops.config import AlertSettings
from opstrata.plugins.llmops.detect import CallAlerts

_MINUTE = 60 * 10**9
FAULTS = [
    (None, 0.0, ""),
    ("latency", 2.0, "latency_regression"),
    ("latency", 3.0, "latency_regression"),
    ("input", 2.0, "cost_spike"),
    ("input", 3.0, "cost_spike"),
    ("errors", 0.2, "error_burst"),
    ("errors", 0.5, "error_burst"),
]


def minute_of_calls(rng: np.random.Generator, minute: int, rate: float, fault: str | None,
                    size: float) -> pa.Table:  # fmt: skip
    n = int(rng.poisson(rate))
    times = minute * _MINUTE + rng.integers(0, _MINUTE, n)
    output = rng.lognormal(np.log(220), 0.5, n)
    inputs = rng.lognormal(np.log(900), 0.35, n) * (size if fault == "input" else 1)
    ttft = rng.lognormal(np.log(350), 0.3, n) * (size if fault == "latency" else 1)
    duration = ttft + output * 11 * rng.uniform(0.8, 1.2, n) * (size if fault == "latency" else 1)
    failed = rng.random(n) < (size if fault == "errors" else 0.01)
    cost = inputs * 150_000 + output * 600_000  # gpt-4o-mini, pico-USD per token

    def text(value: str) -> pa.Array:
        return pa.array([value] * n, pa.string())

    return pa.table({
        "Timestamp": pa.array(times, pa.int64()).cast(pa.timestamp("ns")),
        "Model": text("m"), "RequestModel": text("m"), "ServiceName": text("svc"),
        "IsError": pa.array(failed), "TraceId": text("t"), "PromptName": text(""),
        "PromptVersion": text(""), "UserId": text(""), "SessionId": text(""),
        "CostPicoUsd": pa.array(cost.astype(np.int64)),
        "TotalTokens": pa.array((inputs + output).astype(np.int64)),
        "Duration": pa.array((duration * 1e6).astype(np.int64)),
        "Ttft": pa.array((ttft * 1e6).astype(np.int64)),
    })  # fmt: skip


def run(seed: int, args: argparse.Namespace, fault: str | None, size: float,
        kind: str) -> tuple[int, int | None]:  # fmt: skip
    """(alerts before the onset, buckets from the onset to the first alert of ``kind``)."""
    rng = np.random.default_rng(seed)
    events: list[AlertEvent] = []
    alerts = CallAlerts(AlertSettings(), [], events.append, lambda s: {"service.name": s})
    for minute in range(args.normal + args.after):
        calls = minute_of_calls(rng, minute, args.rate, fault if minute >= args.normal else None,
                                size)  # fmt: skip
        if calls.num_rows:
            alerts.add(calls)
    alerts.flush()
    onset = args.normal * _MINUTE
    raised = [e for e in events if not e.resolved and e.entity.kind == "llm_model"]
    false = sum(1 for e in raised if e.time_unix_nano < onset)
    hits = [e.time_unix_nano for e in raised if e.time_unix_nano >= onset and e.kind == kind]
    return false, (min(hits) - onset) // _MINUTE if hits else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=6.0, help="calls per minute")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--normal", type=int, default=240, help="minutes before the fault")
    parser.add_argument("--after", type=int, default=10, help="minutes of fault")
    args = parser.parse_args()
    for fault, size, kind in FAULTS:
        results = [run(seed, args, fault, size, kind) for seed in range(args.seeds)]
        false = sum(r[0] for r in results)
        delays = [r[1] for r in results]
        print(f"{args.rate:g} calls/min, {fault or 'no fault'} {size:g}: "
              f"{false} false alerts in {args.seeds * args.normal} buckets; "
              f"delay (buckets) {delays}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
