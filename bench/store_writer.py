"""CPU per stored row of the store's writer, by part, on ``bench/ingest.py``'s requests.

    python bench/store_writer.py [--signal spans|logs|metrics|all] [--requests-per-commit 400]
        [--commits 6] [--rounds 4] [--duckdb-threads 1 2] [--row-group-size 122880 16384]

Decodes ``bench/ingest.py``'s requests with the server's decoder, then loads them into a fresh
``DuckDBStore`` per run the way its writer thread does under load (``_insert`` of one group of
requests per commit, called from this thread so that its CPU is the writer's), then runs a
``CHECKPOINT``. Prints, per row, the process CPU of the load (insert and commit, DuckDB's worker
threads included), the calling thread's share ("writer"), the part spent building the tables
before DuckDB sees them ("glue": ``_stored_table``, the resource ids, the concatenation), and
the load with the checkpoint. With several ``--duckdb-threads`` or ``--row-group-size`` values
the runs alternate (medians over ``--rounds``); the figures of a row group size include the
store's other DuckDB settings of today (no vacuum at the checkpoint), so 122880 is DuckDB's
default size under them, not the store before the tenth round. The machine's load moves these
figures: compare CPU, in one run.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

# A server imports it long before its first load; its first import (~0.1 s) is not the writer's.
import pyarrow.compute

sys.path.insert(0, str(Path(__file__).parent))

import ingest as bench_ingest

from opstrata.otlp.decoder import Encoding, decode_request
from opstrata.otlp.limits import DecodeLimits
from opstrata.schema import Signal
from opstrata.storage import duckdb_store

_SIGNALS = {
    "spans": (bench_ingest.make_spans, Signal.SPANS),
    "logs": (bench_ingest.make_logs, Signal.LOG_RECORDS),
    "metrics": (bench_ingest.make_metrics, Signal.METRIC_POINTS),
}


class _Group:
    """One request as the writer's queue holds it (nobody awaits it)."""

    def __init__(self, batches: list) -> None:
        self.batches = batches
        self.rows = sum(batch.num_rows for _, batch in batches)
        self.log_position = None


def _timed_glue(spent: list[float]) -> Callable[..., pa.Table]:
    """The store's ``_stored_table``, adding its process CPU time to ``spent[0]``."""
    inner = duckdb_store._stored_table

    def glue(*args: object, **kwargs: object) -> pa.Table:
        started = time.process_time()
        try:
            return inner(*args, **kwargs)
        finally:
            spent[0] += time.process_time() - started

    return glue


def run(
    requests: list, per_commit: int, commits: int, threads: int, row_group_size: int
) -> dict[str, float]:
    """One fresh store loaded with ``commits`` groups: µs of CPU per row by part."""
    spent = [0.0]
    original = duckdb_store._stored_table
    duckdb_store._stored_table = _timed_glue(spent)
    try:
        with tempfile.TemporaryDirectory(prefix="opstrata-writer-") as data_dir:
            store = duckdb_store.DuckDBStore(
                Path(data_dir), threads=threads, row_group_size=row_group_size
            )
            store.start()
            groups = [
                [_Group(requests[(c * per_commit + i) % len(requests)]) for i in range(per_commit)]
                for c in range(commits)
            ]
            rows = sum(item.rows for group in groups for item in group)
            process, writer = time.process_time(), time.thread_time()
            seq = 1
            for group in groups:
                store._insert(group, seq)
                seq += len(group)
            loaded, writer = time.process_time() - process, time.thread_time() - writer
            store.reader().execute("CHECKPOINT")
            total = time.process_time() - process
            store.shutdown()
    finally:
        duckdb_store._stored_table = original
    return {
        "load": loaded / rows * 1e6,
        "writer": writer / rows * 1e6,
        "glue": spent[0] / rows * 1e6,
        "with checkpoint": total / rows * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signal", choices=[*_SIGNALS, "all"], default="all")
    parser.add_argument("--requests-per-commit", type=int, default=400)
    parser.add_argument("--commits", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duckdb-threads", type=int, nargs="+", default=[1])
    parser.add_argument(
        "--row-group-size", type=int, nargs="+", default=[duckdb_store.ROW_GROUP_SIZE]
    )
    args = parser.parse_args()
    arms = [(t, g) for t in args.duckdb_threads for g in args.row_group_size]
    print(f"load average {os.getloadavg()[0]:.1f}; {args.requests_per_commit} requests per commit")
    for name in _SIGNALS if args.signal == "all" else [args.signal]:
        make, signal = _SIGNALS[name]
        rnd = random.Random(1)
        requests = [
            decode_request(signal, make(rnd), Encoding.PROTOBUF, DecodeLimits()).batches
            for _ in range(200)
        ]
        results: dict[tuple[int, int], list[dict[str, float]]] = {arm: [] for arm in arms}
        for r in range(args.rounds):
            for threads, size in arms if r % 2 == 0 else arms[::-1]:
                results[threads, size].append(
                    run(requests, args.requests_per_commit, args.commits, threads, size)
                )
        for (threads, size), runs in results.items():
            parts = ", ".join(
                f"{part} {statistics.median(r[part] for r in runs):.2f}" for part in runs[0]
            )
            print(f"{name:8s} duckdb_threads={threads} row_group_size={size}: µs per row: {parts}")


if __name__ == "__main__":
    main()
