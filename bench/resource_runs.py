"""The decoder's resource runs (``Batches.resource_starts``) against finding them by comparing
rows, in one process, arms alternating round by round on the same decoded requests.

    python bench/resource_runs.py [--signal spans|logs|metrics|all] [--rounds 6]
        [--requests-per-commit 400] [--commits 4]

Per signal, two figures, each as CPU µs per row: the writer's resource ids alone
(``request_resource_ids`` over a group commit's column, 400 requests), and
``bench/store_writer.py``'s whole load (its ``glue`` and ``load`` parts) with the decoder's runs
and with them ignored (``decoded_runs`` answering None, the path of batches without them). The
ids of every row must be equal in both arms, or the bench says so.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))

import store_writer

from opstrata.otlp.decoder import Encoding, decode_request
from opstrata.otlp.limits import DecodeLimits
from opstrata.storage import duckdb_store
from opstrata.storage.duckdb_ddl import RESOURCE_COLUMN, STORAGE_SCHEMAS
from opstrata.storage.duckdb_resources import decoded_runs, request_resource_ids


def _columns(requests: list) -> list[tuple[pa.Array, list[int], list[int]]]:
    """Per table: the group's resource column as the writer views it, the requests' lengths
    and the decoder's run lengths."""
    per_table: dict = {}
    for batches in requests:
        for table, batch in batches:
            per_table.setdefault(table, []).append((batch, batches.resource_starts[table]))
    out = []
    for table, items in per_table.items():
        batches = [batch for batch, _ in items]
        lengths = [batch.num_rows for batch in batches]
        data = pa.Table.from_batches(batches).combine_chunks()
        column = data.column(RESOURCE_COLUMN).chunk(0)
        column = column.view(STORAGE_SCHEMAS[table].field(RESOURCE_COLUMN).type)
        runs = decoded_runs([starts for _, starts in items], lengths)
        assert runs is not None
        out.append((column, lengths, runs))
    return out


def _ids(column: pa.Array, starts: np.ndarray, ids: np.ndarray) -> np.ndarray:
    return np.repeat(ids, np.diff(np.append(starts, len(column))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signal", choices=[*store_writer._SIGNALS, "all"], default="all")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests-per-commit", type=int, default=400)
    parser.add_argument("--commits", type=int, default=4)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f}")
    signals = store_writer._SIGNALS if args.signal == "all" else [args.signal]
    for name in signals:
        make, signal = store_writer._SIGNALS[name]
        rnd = random.Random(1)
        requests = [
            decode_request(signal, make(rnd), Encoding.PROTOBUF, DecodeLimits()).batches
            for _ in range(args.requests_per_commit)
        ]
        columns = _columns(requests)
        rows = sum(len(column) for column, _, _ in columns)
        for column, lengths, runs in columns:
            compared = _ids(column, *request_resource_ids(column, lengths))
            decoded = _ids(column, *request_resource_ids(column, runs, runs_known=True))
            if not np.array_equal(compared, decoded):
                print(f"{name}: the ids differ")
        arms = {
            "compared": lambda columns=columns: [
                request_resource_ids(c, lengths) for c, lengths, _ in columns
            ],
            "decoded": lambda columns=columns: [
                request_resource_ids(c, runs, True) for c, _, runs in columns
            ],
        }
        ids_cpu: dict[str, list[float]] = {arm: [] for arm in arms}
        load: dict[str, list[dict[str, float]]] = {arm: [] for arm in arms}
        for r in range(args.rounds):
            for arm in list(arms) if r % 2 == 0 else list(arms)[::-1]:
                started = time.process_time()
                for _ in range(5):
                    arms[arm]()
                ids_cpu[arm].append((time.process_time() - started) / 5 / rows * 1e6)
                if arm == "compared":
                    duckdb_store.decoded_runs = lambda *_: None
                try:
                    load[arm].append(
                        store_writer.run(
                            requests,
                            args.requests_per_commit,
                            args.commits,
                            1,
                            duckdb_store.ROW_GROUP_SIZE,
                        )
                    )
                finally:
                    duckdb_store.decoded_runs = decoded_runs
        for arm in arms:
            parts = ", ".join(
                f"{part} {statistics.median(r[part] for r in load[arm]):.2f}"
                for part in ("glue", "load")
            )
            print(
                f"{name:8s} {arm:9s} ids {statistics.median(ids_cpu[arm]):.3f} µs/row; "
                f"store load µs/row: {parts}"
            )


if __name__ == "__main__":
    main()
