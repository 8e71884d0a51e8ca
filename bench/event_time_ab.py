"""The fan-out's ``CommittedBatch.of`` per request, with the event time the C decoder handed
over (``Batches.event_time``) against working it out again (``_median_time``), interleaved.

    python bench/event_time_ab.py [--rounds 21] [--requests 200] [--signal spans logs metrics]

The requests are ``bench/ingest.py``'s (100 items each), decoded once; each round builds the
committed batch of every request both ways (the order alternating per round), and checks that
both give the same event time. Prints µs of this thread's CPU per request, median and best round.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

from opstrata.consumers import CommittedBatch
from opstrata.otlp.decoder import Encoding, decode_request
from opstrata.otlp.limits import DecodeLimits
from opstrata.schema import Signal

sys.path.insert(0, str(Path(__file__).parent))
import ingest as bench_ingest  # bench/ingest.py: its request generators

_SIGNALS = {"spans": Signal.SPANS, "logs": Signal.LOG_RECORDS, "metrics": Signal.METRIC_POINTS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--signal", nargs="+", default=list(_SIGNALS), choices=_SIGNALS)
    args = parser.parse_args()
    limits = DecodeLimits()
    for name in args.signal:
        rnd = random.Random(name)
        bodies = [bench_ingest.SIGNALS[name].make(rnd) for _ in range(args.requests)]
        decoded = [decode_request(_SIGNALS[name], b, Encoding.PROTOBUF, limits) for b in bodies]
        ways = {
            "handed over": [d.batches for d in decoded],
            "worked out": [list(d.batches) for d in decoded],  # a plain list: no event_time
        }
        times: dict[str, list[float]] = {way: [] for way in ways}
        for r in range(args.rounds):
            order = list(ways.items())
            for way, lists in order if r % 2 == 0 else order[::-1]:
                t0 = time.thread_time()
                built = [CommittedBatch.of(seq, batches, 0) for seq, batches in enumerate(lists)]
                times[way].append((time.thread_time() - t0) / len(lists) * 1e6)
                latest = [b.latest for b in built]
                if way == "handed over":
                    handed = latest
                else:
                    worked = latest
            assert handed == worked, "the event times differ"
        cells = "  ".join(
            f"{way} {statistics.median(t):5.1f} (best {min(t):5.1f})" for way, t in times.items()
        )
        print(f"{name:<8} CommittedBatch.of us/request: {cells}", flush=True)


if __name__ == "__main__":
    main()
