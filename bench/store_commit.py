"""Group-commit cost of the DuckDB store, alone and with a busy Python thread beside it.

    python bench/store_commit.py [--requests-per-commit 12] [--commits 20] [--signal spans]
        [--duckdb-threads 1]

Inserts realistic batches (spans; logs or metric points with ``--signal``), decoded by the
server's own decoder, through ``DuckDBStore`` in groups, the way the writer thread does, and
prints milliseconds per commit and rows/s (alone, also the process CPU time and WAL bytes per
row): with the writer alone, with a Python thread spinning beside it (what the event loop looks
like under load), and the same with the switch interval the server sets.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

from opstrata.otlp.anyvalue import AttributeRenderer
from opstrata.otlp.decode_traces import decode_trace_bytes
from opstrata.otlp.decoder import Encoding, decode_request
from opstrata.otlp.limits import DecodeLimits
from opstrata.schema import Signal
from opstrata.settings import StorageSettings
from opstrata.storage.duckdb_store import DuckDBStore

sys.path.insert(0, str(Path(__file__).parent))
from decode import make_request


def _measure(
    batches: list, per_commit: int, commits: int, threads: int
) -> tuple[float, float, float, float]:
    """ms per commit, rows/s, process CPU µs per row, WAL bytes per row."""
    with tempfile.TemporaryDirectory() as data_dir:
        store = DuckDBStore(Path(data_dir), threads=threads)
        store.start()
        cpu = time.process_time()

        async def run() -> float:
            started = time.perf_counter()
            for i in range(commits):
                group = [batches[(i * per_commit + j) % len(batches)] for j in range(per_commit)]
                # Queue a whole group before awaiting, so that one commit takes all of it.
                await asyncio.gather(*(store.write(b) for b in group))
            return time.perf_counter() - started

        elapsed = asyncio.run(run())
        cpu = time.process_time() - cpu  # includes the spinning thread when there is one
        rows = store.stats.rows_committed
        per_commit_ms = store.stats.commit_seconds_total / max(1, store.stats.commits) * 1000
        wal = store.path.with_name(store.path.name + ".wal")
        wal_bytes = wal.stat().st_size if wal.exists() else 0
        store.shutdown()
    return per_commit_ms, rows / elapsed, cpu / rows * 1e6, wal_bytes / rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests-per-commit", type=int, default=12)
    parser.add_argument("--commits", type=int, default=20)
    parser.add_argument(
        "--signal",
        choices=["spans", "logs", "metrics"],
        default="spans",
        help="logs and metrics use bench/ingest.py's requests (100 items each)",
    )
    parser.add_argument(
        "--duckdb-threads",
        type=int,
        default=StorageSettings().duckdb_threads,
        help="storage.duckdb_threads",
    )
    args = parser.parse_args()
    rnd = random.Random(7)
    renderer = AttributeRenderer(DecodeLimits())
    if args.signal == "spans":
        batches = [decode_trace_bytes(make_request(rnd, 100), renderer).batches for _ in range(64)]
    else:
        import ingest

        signal, make = {
            "logs": (Signal.LOG_RECORDS, ingest.make_logs),
            "metrics": (Signal.METRIC_POINTS, ingest.make_metrics),
        }[args.signal]
        limits = DecodeLimits()
        batches = [
            decode_request(signal, make(rnd), Encoding.PROTOBUF, limits).batches for _ in range(64)
        ]
    rows = args.requests_per_commit * 100
    print(f"{args.commits} commits of {args.requests_per_commit} requests ({rows} items) each")

    stop = threading.Event()

    def spin() -> None:
        count = 0
        while not stop.is_set():
            count += 1

    for label, busy, interval in (
        ("writer alone", False, 0.005),
        ("busy thread beside", True, 0.005),
        ("busy thread, switch interval 0.2 ms", True, 0.0002),
    ):
        sys.setswitchinterval(interval)
        stop.clear()
        spinner = threading.Thread(target=spin, daemon=True)
        if busy:
            spinner.start()
        ms, rate, cpu_us, wal = _measure(
            batches, args.requests_per_commit, args.commits, args.duckdb_threads
        )
        stop.set()
        print(
            f"  {label:40s} {ms:8.1f} ms/commit {rate:10,.0f} rows/s"
            + (f" {cpu_us:6.1f} us CPU/row {wal:7,.0f} B WAL/row" if not busy else "")
        )


if __name__ == "__main__":
    main()
