"""What letting a consumer's batches go costs its thread, with the GIL and without: dropping them
against :func:`opstrata.batch_release.release`, interleaved.

    python bench/batch_release.py [--signal spans|logs|metrics|all] [--requests 600]
        [--group 150] [--rounds 5]

Decodes ``bench/ingest.py``'s requests with the server's decoder, as the fan-out's batches, and
lets them go ``--group`` at a time, as a consumer's thread does after a pass: ``drop`` drops
the list (the buffers are freed in Python deallocations, with the GIL held); ``release`` exports
them as Arrow C streams and drops the Python objects (GIL held), then calls the streams'
release callbacks through ``ctypes`` (GIL released: what frees the buffers). Prints the thread
CPU per item of each part; the GIL-held part is what the event loop and the store's writer
would wait for. Every round decodes the requests afresh for both arms.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from ingest import SIGNALS  # noqa: E402

from opstrata import batch_release  # noqa: E402
from opstrata.consumers import CommittedBatch  # noqa: E402
from opstrata.otlp.decoder import Encoding, decode_request  # noqa: E402
from opstrata.otlp.limits import DecodeLimits  # noqa: E402
from opstrata.schema import Signal  # noqa: E402

_SIGNAL = {"spans": Signal.SPANS, "logs": Signal.LOG_RECORDS, "metrics": Signal.METRIC_POINTS}


def _groups(bodies: list[bytes], signal: Signal, group: int) -> list[list[CommittedBatch]]:
    limits = DecodeLimits()
    batches = [
        CommittedBatch.of(seq, decode_request(signal, body, Encoding.PROTOBUF, limits).batches)
        for seq, body in enumerate(bodies, 1)
    ]
    return [batches[start : start + group] for start in range(0, len(batches), group)]


def run(arm: str, groups: list[list[CommittedBatch]]) -> tuple[float, float]:
    """Thread CPU seconds (GIL held, GIL released) of letting every group go."""
    held = free = 0.0
    while groups:
        taken = groups.pop()
        started = time.thread_time()
        if arm == "drop":
            taken = None
            held += time.thread_time() - started
            continue
        streams: list = []
        batch_release._export(taken, streams)
        taken.clear()
        exported = time.thread_time()
        batch_release._release_streams(streams)
        held += exported - started
        free += time.thread_time() - exported
    return held, free


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signal", choices=[*_SIGNAL, "all"], default="all")
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--group", type=int, default=150, help="batches let go at once")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    signals = list(_SIGNAL) if args.signal == "all" else [args.signal]
    for name in signals:
        rnd = random.Random(name)
        bodies = [SIGNALS[name].make(rnd) for _ in range(args.requests)]
        parts: dict[str, list[tuple[float, float]]] = {"drop": [], "release": []}
        items = 0
        for _ in range(args.rounds):
            for arm in parts:
                groups = _groups(bodies, _SIGNAL[name], args.group)
                items = sum(batch.rows for taken in groups for batch in taken)
                held, free = run(arm, groups)
                parts[arm].append((held / items * 1e6, free / items * 1e6))
        print(f"{name}: {args.requests} requests, {items:,} items, {args.group} per group")
        for arm, values in parts.items():
            held = [v[0] for v in values]
            free = [v[1] for v in values]
            print(
                f"  {arm:>8}: GIL held median {statistics.median(held):.3f} µs/item "
                f"(rounds {' '.join(f'{v:.3f}' for v in held)}); GIL released median "
                f"{statistics.median(free):.3f} (rounds {' '.join(f'{v:.3f}' for v in free)})"
            )


if __name__ == "__main__":
    main()
