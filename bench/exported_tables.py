"""Metric tables imported per request against kept exported until the commit, in one process.

    python bench/exported_tables.py [--requests 400] [--rounds 5]

Decodes ``bench/ingest.py``'s metrics requests (100 points each) the way the server did before
(each table imported into pyarrow at decode, a commit's tables concatenated by pyarrow) and the
way it does now (tables kept exported, concatenated by ``_wire.concat_tables`` and imported once,
each request handed a slice, the exported buffers released), arms alternating. Prints this
thread's CPU per point by step: decode, concatenate (one commit of all the requests), hand-over
(slices and release; none before), and freeing everything (what the last consumer pays). Both
arms' concatenated tables must be equal, or the bench says so.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).parent))

from ingest import make_metrics

from opstrata.otlp.anyvalue import AttributeRenderer
from opstrata.otlp.decode_metrics import decode_metric_bytes
from opstrata.otlp.exported_tables import concat_exported, release_exported
from opstrata.otlp.limits import DecodeLimits

_STEPS = ("decode", "concatenate", "hand-over", "free")


def run(bodies: list[bytes], exported: bool, keep: bool) -> tuple[list[float], dict]:
    """One arm: µs of this thread's CPU per point by step, and (with ``keep``: then they are
    not freed in the timed step) the concatenated tables."""
    renderer = AttributeRenderer(DecodeLimits())
    clock = time.thread_time
    started = clock()
    requests = [decode_metric_bytes(body, renderer, exported) for body in bodies]
    decoded = clock()
    per_table: dict = {}
    for request in requests:
        for table, batch in request.batches:
            per_table.setdefault(table, []).append(batch)
    if exported:
        whole = {table: concat_exported(tables) for table, tables in per_table.items()}
    else:
        whole = {
            table: pa.Table.from_batches(batches).combine_chunks().to_batches()[0]
            for table, batches in per_table.items()
        }
    concatenated = clock()
    if exported:  # as DuckDBStore._hand_over
        offsets = dict.fromkeys(whole, 0)
        for request in requests:
            batches = request.batches
            for i, (table, batch) in enumerate(batches):
                batches[i] = (table, whole[table].slice(offsets[table], batch.num_rows))
                offsets[table] += batch.num_rows
        release_exported([t for tables in per_table.values() for t in tables])
    handed = clock()
    points = sum(request.accepted for request in requests)
    kept = dict(whole) if keep else {}
    del requests, per_table, whole
    freed = clock()
    spent = [decoded - started, concatenated - decoded, handed - concatenated, freed - handed]
    return [seconds / points * 1e6 for seconds in spent], kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rnd = random.Random(1)
    bodies = [make_metrics(rnd) for _ in range(args.requests)]
    results: dict[bool, list[list[float]]] = {False: [], True: []}
    tables = {exported: run(bodies, exported, keep=True)[1] for exported in (False, True)}
    if any(not tables[True][t].equals(tables[False][t]) for t in tables[False]):
        print("the two arms' concatenated tables differ")
    del tables
    for round_ in range(args.rounds):
        for exported in (False, True) if round_ % 2 == 0 else (True, False):
            results[exported].append(run(bodies, exported, keep=False)[0])
    print(f"{args.requests} requests, µs of CPU per point, median of {args.rounds} rounds")
    print(f"{'arm':10}" + "".join(f"{step:>13}" for step in _STEPS) + f"{'total':>10}")
    for exported, rounds in results.items():
        medians = [statistics.median(r[i] for r in rounds) for i in range(len(_STEPS))]
        totals = statistics.median(sum(r) for r in rounds)
        name = "exported" if exported else "imported"
        print(f"{name:10}" + "".join(f"{m:13.3f}" for m in medians) + f"{totals:10.3f}")


if __name__ == "__main__":
    main()
