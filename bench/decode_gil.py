"""Decoding beside a thread that wants the GIL: builds of ``_wire`` side by side, interleaved.

    python bench/decode_gil.py OLD.so NEW.so [--rounds 9] [--seconds 1] [--signal metrics]
        [--competitor none python releaser] [--switch-interval-ms 5]

What the server's event loop meets: it decodes each request inline while other threads want the
GIL too: the DuckDB writer (mostly inside DuckDB, the GIL released, wanting it back for short
stretches) and the topology consumer (pure Python for a whole batch). A build that parses
without the GIL lets them run during the parse, but then waits for the GIL to come back: up to
the switch interval (5 ms) behind a thread that runs Python without pause (the "convoy").

For each build and each competitor, the main thread decodes ``bench/ingest.py``'s requests (100
items each) for ``--seconds`` while the competitor runs:

- ``none``: no other thread (the decoder's own cost of giving the GIL up and taking it back);
- ``python``: a thread running a pure-Python loop without pause (the worst case for the convoy);
- ``releaser``: a thread that holds the GIL for ~20 µs of Python, then releases it for ~100 µs
  in C (``time.sleep``), as the writer does around DuckDB calls.

It prints per build: requests decoded per second by the main thread, and the competitor's loop
iterations per second (its progress), median of the rounds. Wall-time rates, so a busy machine
moves all builds alike only because the rounds alternate; compare within a row.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import threading
import time
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).parent))
import ingest as bench_ingest  # bench/ingest.py: its request generators
from decode_ab import _FUNCTIONS, decode_args, load_builds


def _python_loop(stop: threading.Event, counter: list[int]) -> None:
    n = 0
    while not stop.is_set():
        for _ in range(200):  # Python work without releasing the GIL
            n += 1
        counter[0] += 1


def _releaser_loop(stop: threading.Event, counter: list[int]) -> None:
    while not stop.is_set():
        x = 0
        for _ in range(150):  # ~20 µs of Python
            x += 1  # noqa: SIM113 - busy work standing for the writer's Python
        time.sleep(0.0001)  # ~100 µs without the GIL, like a DuckDB call
        counter[0] += 1


_COMPETITORS = {"none": None, "python": _python_loop, "releaser": _releaser_loop}


def measure(
    module: ModuleType, signal: str, payloads: list[bytes], competitor: str, seconds: float
) -> tuple[float, float]:
    """(requests decoded per second by this thread, competitor iterations per second)."""
    decode, extra = getattr(module, _FUNCTIONS[signal]), decode_args()
    stop, counter = threading.Event(), [0]
    target = _COMPETITORS[competitor]
    thread = threading.Thread(target=target, args=(stop, counter)) if target else None
    if thread:
        thread.start()
        time.sleep(0.02)
    done = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while time.perf_counter() < deadline:
        for payload in payloads:
            decode(payload, *extra)
        done += len(payloads)
    elapsed = time.perf_counter() - t0
    counted = counter[0]
    stop.set()
    if thread:
        thread.join()
    return done / elapsed, counted / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("builds", nargs="+", help="paths of _wire shared objects")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--signal", nargs="+", default=["metrics"], choices=_FUNCTIONS)
    parser.add_argument("--competitor", nargs="+", default=list(_COMPETITORS), choices=_COMPETITORS)
    parser.add_argument("--switch-interval-ms", type=float, help="sys.setswitchinterval")
    args = parser.parse_args()
    if args.switch_interval_ms:
        sys.setswitchinterval(args.switch_interval_ms / 1e3)
    builds = load_builds(args.builds)
    print(f"switch interval {sys.getswitchinterval() * 1e3:.1f} ms", flush=True)
    for signal in args.signal:
        rnd = random.Random(signal)
        payloads = [bench_ingest.SIGNALS[signal].make(rnd) for _ in range(20)]
        for competitor in args.competitor:
            got: dict[str, list[tuple[float, float]]] = {name: [] for name in builds}
            order = list(builds.items())
            for r in range(args.rounds):
                for name, module in order if r % 2 == 0 else order[::-1]:
                    got[name].append(measure(module, signal, payloads, competitor, args.seconds))
            cells = "  ".join(
                f"{name} {statistics.median(d for d, _ in v):8,.0f} req/s"
                f" other {statistics.median(c for _, c in v):8,.0f}/s"
                for name, v in got.items()
            )
            print(f"{signal:<8} vs {competitor:<9} {cells}", flush=True)


if __name__ == "__main__":
    main()
