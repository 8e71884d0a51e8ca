"""The event loop's decoding as in a server under load: decoded requests stay held a while.

    python bench/decode_held.py [--signal spans|logs|metrics] [--seconds 4] [--held 300]

Per request, what the serving thread does with a body: ``decode_request`` (the C decoder and
the import of its batches) and ``decoded_sizes`` (admission's count). Unlike
``bench/decode.py``, whose loop frees each batch at once (its memory hot for the next one),
the batches are handed to another thread that holds the last ``--held`` requests before
dropping them, as the store's backlog of acknowledged requests does in a server at full rate
(192 MiB of them at the ingest bench's peak); glibc is set up as ``opstrata serve`` sets it. With
300 held, a request's decoding costs the thread about twice what it costs in the plain loop:
its memory comes back cold and from a fragmented heap. Prints the thread's CPU time per request.

To compare two versions, run it alternately from each (``PYTHONPATH`` at a copy of the package
with its own built ``_wire``).
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import queue
import random
import sys
import threading
import time
from pathlib import Path

from opstrata.ingest import decoded_sizes
from opstrata.otlp.decoder import Encoding, decode_request
from opstrata.otlp.limits import DecodeLimits
from opstrata.schema import Signal

sys.path.insert(0, str(Path(__file__).parent))
import ingest as bench_ingest  # bench/ingest.py: its request generators

_SIGNALS = {"spans": Signal.SPANS, "logs": Signal.LOG_RECORDS, "metrics": Signal.METRIC_POINTS}
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters, as core/server.py


def _holder(inbox: queue.SimpleQueue, held: int) -> None:
    kept: collections.deque = collections.deque()
    while (item := inbox.get()) is not None:
        kept.append(item)
        while len(kept) > held:
            kept.popleft()  # dropped here, on this thread, as the store's writer drops a load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signal", choices=list(_SIGNALS), default="spans")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--held", type=int, default=300, help="decoded requests held")
    parser.add_argument("--trim-mib", type=int, default=64, help="as ingest.heap_trim_mib")
    args = parser.parse_args()
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt(_M_TRIM_THRESHOLD, args.trim_mib * 1024 * 1024)
    libc.mallopt(_M_MMAP_THRESHOLD, 8 * 1024 * 1024)

    signal, limits = _SIGNALS[args.signal], DecodeLimits()
    payloads = [bench_ingest.SIGNALS[args.signal].make(random.Random(i)) for i in range(200)]
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    holder = threading.Thread(target=_holder, args=(inbox, args.held))
    holder.start()
    requests, start = 0, time.thread_time()
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        for payload in payloads:
            decoded = decode_request(signal, payload, Encoding.PROTOBUF, limits)
            decoded_sizes(decoded)
            inbox.put(decoded)
            requests += 1
        time.sleep(0.001)  # lets the holder thread catch up, as the event loop's waits do
    cpu = time.thread_time() - start
    inbox.put(None)
    holder.join()
    per_item = cpu / requests * 1e6 / bench_ingest.PER_REQUEST
    print(
        f"{args.signal}: {cpu / requests * 1e6:.1f} us of this thread's CPU per request "
        f"({per_item:.2f} per item), {requests} requests, {args.held} held"
    )


if __name__ == "__main__":
    main()
