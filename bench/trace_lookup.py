"""Where a trace-by-id lookup spends its time, in-process, on a store loaded by ``bench/query.py``.

    python bench/query.py --keep /tmp/qbench ...      # loads the store once and keeps it
    python bench/trace_lookup.py /tmp/qbench [--lookups 400]

Opens the kept store directly (no server: HTTP adds ~1-2 ms on top) and times each stage of
``GET /api/v1/traces/{id}`` for random sampled trace ids: the index lookup, the read of the
rows (one statement), and turning them into the response body. Wall and process CPU time per
stage, median and p99; CPU time is the steadier figure on a shared machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))

from opstrata.api.trace_render import trace_body
from opstrata.schema import Table
from opstrata.storage.duckdb_queries import DuckDBQueries
from opstrata.storage.duckdb_store import DuckDBStore


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path, help="a directory kept by bench/query.py --keep")
    parser.add_argument("--lookups", type=int, default=400)
    args = parser.parse_args()
    ids = json.loads((args.data_dir / "bench-ids.json").read_text())["trace_ids"]
    rnd = random.Random(3)
    store = DuckDBStore(args.data_dir)
    store.start()
    try:
        queries = DuckDBQueries(store)
        stages: dict[str, tuple[list[float], list[float]]] = {
            name: ([], []) for name in ("locate", "read", "render", "total")
        }
        trace_body(ids[0], queries.trace_rows([ids[0]]))  # first call: imports, cursor
        print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        for _ in range(args.lookups):
            trace_id = rnd.choice(ids)
            marks = [(time.perf_counter(), time.process_time())]
            queries.index.locate(Table.TRACES, [trace_id])
            marks.append((time.perf_counter(), time.process_time()))
            table = queries.trace_rows([trace_id])  # locates again: "read" includes a lookup
            marks.append((time.perf_counter(), time.process_time()))
            trace_body(trace_id, table)
            marks.append((time.perf_counter(), time.process_time()))
            for name, (a, b) in zip(
                ("locate", "read", "render"), itertools.pairwise(marks), strict=True
            ):
                stages[name][0].append((b[0] - a[0]) * 1000)
                stages[name][1].append((b[1] - a[1]) * 1000)
            stages["total"][0].append((marks[3][0] - marks[1][0]) * 1000)
            stages["total"][1].append((marks[3][1] - marks[1][1]) * 1000)
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print("| stage | wall median ms | wall p99 ms | CPU median ms | CPU p99 ms |")
        print("|---|---|---|---|---|")
        labels = {
            "locate": "index lookup alone",
            "read": "trace_rows (lookup + read)",
            "render": "render + encode",
            "total": "trace_rows + render",
        }
        for name, (wall, cpu) in stages.items():
            print(
                f"| {labels[name]} | {statistics.median(wall):.2f} | {_p99(wall):.2f} | "
                f"{statistics.median(cpu):.2f} | {_p99(cpu):.2f} |"
            )
    finally:
        store.shutdown()


if __name__ == "__main__":
    main()
