"""The trace index's catch-up alone: CPU per indexed row, against a git revision, interleaved.

    python bench/trace_index.py [--signal spans|logs] [--rounds 3] [--steps 4]
        [--baseline REV] [--checkpoint-threshold 256MB] [--per-step]

Makes ``bench/ingest.py``'s requests (distinct ones: every trace id new, as in real traffic),
decodes them with the server's decoder, commits 400 of them per step through ``DuckDBStore``,
and after each step runs :meth:`TraceIndex.catch_up` — what the index thread does every second —
counting the process CPU time of the catch-up (DuckDB's threads included). With ``--baseline
REV`` the ``storage/duckdb_trace_index.py`` of REV runs on its own store, the two arms
alternating round by round on the same requests; their index tables must hold the same rows.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import random
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

from opstrata.otlp.decoder import Encoding, decode_request
from opstrata.otlp.limits import DecodeLimits
from opstrata.schema import Signal
from opstrata.storage import duckdb_trace_index
from opstrata.storage.duckdb_store import DuckDBStore

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from ingest import SIGNALS  # noqa: E402 - bench/ingest.py, importable once bench/ is on the path

_SIGNAL = {"spans": Signal.SPANS, "logs": Signal.LOG_RECORDS}
_PER_STEP = 400


def load_revision(rev: str) -> types.ModuleType:
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:storage/duckdb_trace_index.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    spec = importlib.util.spec_from_loader("base_duckdb_trace_index", loader=None)
    module = importlib.util.module_from_spec(spec)
    exec(compile(source, f"{rev}:storage/duckdb_trace_index.py", "exec"), module.__dict__)
    return module


def run(
    module: types.ModuleType, requests: list, steps: int, threshold: str = "256MB", verbose=False
) -> tuple[float, list]:
    """CPU µs per committed row of the catch-ups, and the index table's rows. ``verbose``
    prints each step's catch-up and the WAL's size around it: a catch-up whose commit takes the
    WAL past ``threshold`` runs DuckDB's checkpoint on the index's thread."""
    with tempfile.TemporaryDirectory(prefix="opstrata-trace-index-") as data_dir:
        store = DuckDBStore(Path(data_dir), checkpoint_threshold=threshold)
        wal = Path(data_dir) / "opstrata.duckdb.wal"
        store.start()
        index = module.TraceIndex(store)
        index.ensure_tables()
        cpu, rows = 0.0, 0

        async def commit(first: int) -> None:
            group = requests[first : first + _PER_STEP]
            await asyncio.gather(*(store.write(batches) for batches in group))

        for step in range(steps):
            asyncio.run(commit(step * _PER_STEP))
            step_rows = sum(
                b.num_rows for r in requests[step * _PER_STEP :][:_PER_STEP] for _, b in r
            )
            rows += step_rows
            wal_before = wal.stat().st_size if wal.exists() else 0
            started = time.process_time()
            index.catch_up()
            spent = time.process_time() - started
            cpu += spent
            if verbose:
                wal_after = wal.stat().st_size if wal.exists() else 0
                print(
                    f"    step {step}: catch-up {spent / step_rows * 1e6:.2f} µs/row, "
                    f"WAL {wal_before >> 20} -> {wal_after >> 20} MiB"
                )
        table = module.INDEX_TABLE
        held = store.reader().execute(f"SELECT * FROM {table} ORDER BY ALL").fetchall()
        store.shutdown()
    return cpu / rows * 1e6, held


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signal", choices=list(_SIGNAL), default="spans")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--baseline", help="a git revision to compare with, interleaved")
    parser.add_argument(
        "--checkpoint-threshold",
        default="256MB",
        help="DuckDB's checkpoint_threshold (a small one shows the checkpoint a catch-up's "
        "commit may run)",
    )
    parser.add_argument("--per-step", action="store_true", help="print every step's catch-up")
    args = parser.parse_args()
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    rnd = random.Random(args.signal)
    limits = DecodeLimits()
    requests = [
        decode_request(
            _SIGNAL[args.signal], SIGNALS[args.signal].make(rnd), Encoding.PROTOBUF, limits
        ).batches
        for _ in range(args.steps * _PER_STEP)
    ]
    arms = {"now": duckdb_trace_index}
    if args.baseline:
        arms = {args.baseline: load_revision(args.baseline), **arms}
    per_row: dict[str, list[float]] = {arm: [] for arm in arms}
    held = {}
    for _ in range(args.rounds):
        for arm, module in arms.items():
            cost, held[arm] = run(
                module, requests, args.steps, args.checkpoint_threshold, args.per_step
            )
            per_row[arm].append(cost)
    for arm, values in per_row.items():
        rounds = " ".join(f"{v:.2f}" for v in values)
        print(
            f"{args.signal} {arm:>10}: median {statistics.median(values):.2f} µs/row "
            f"(min {min(values):.2f}; rounds {rounds})"
        )
    if len(held) == 2:
        same = len({tuple(rows) for rows in held.values()}) == 1
        print(f"  same index rows as {args.baseline}: {'yes' if same else 'NO'}")
    print(f"  {len(held['now']):,} index rows")


if __name__ == "__main__":
    main()
