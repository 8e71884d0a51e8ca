"""DuckDB alone: CPU per row of commits by row group size, with and without the checkpoint's vacuum.

    python bench/store_row_groups.py [--signal spans|logs|sum|histogram] [--rows 800000]
        COMMIT_ROWS:ROW_GROUP_SIZE:MAX_VACUUM_TASKS ...

e.g. ``40000:122880:100 40000:16384:0`` (DuckDB's defaults against the store's). Decodes
``bench/ingest.py``'s requests with the server's decoder, views one table in storage types (the
resource attributes dropped: the store keeps an id instead), then per arm loads ``--rows`` rows
into a fresh file attached with that ``ROW_GROUP_SIZE`` in commits of ``COMMIT_ROWS`` (one
DuckDB thread, the store's 256MB checkpoint threshold), runs a ``CHECKPOINT`` and a scan of
every row's attributes. Prints process CPU µs per row for the insert, the commit and the final
checkpoint, the longest commit (one that meets an automatic checkpoint shows), the row groups,
the file size and the scan's CPU. Arms run in the order given: alternate them, and compare CPU.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).parent))

import ingest as bench_ingest

from opstrata.otlp.decoder import Encoding, decode_request
from opstrata.otlp.limits import DecodeLimits
from opstrata.schema import Signal, Table
from opstrata.storage.duckdb_ddl import STORAGE_SCHEMAS

_SIGNALS = {
    "spans": (bench_ingest.make_spans, Signal.SPANS, Table.TRACES, "SpanAttributes"),
    "logs": (bench_ingest.make_logs, Signal.LOG_RECORDS, Table.LOGS, "LogAttributes"),
    "sum": (
        bench_ingest.make_metrics,
        Signal.METRIC_POINTS,
        Table("otel_metrics_sum"),
        "Attributes",
    ),
    "histogram": (
        bench_ingest.make_metrics,
        Signal.METRIC_POINTS,
        Table("otel_metrics_histogram"),
        "Attributes",
    ),
}


def stored_rows(signal: str, rows: int) -> pa.Table:
    """``rows`` rows of one table as the store hands them to DuckDB (less the resource)."""
    make, kind, table, _ = _SIGNALS[signal]
    rnd = random.Random(1)
    decoded = [
        decode_request(kind, make(rnd), Encoding.PROTOBUF, DecodeLimits()) for _ in range(200)
    ]
    data = pa.Table.from_batches(
        [batch for d in decoded for t, batch in d.batches if t == table]
    ).combine_chunks()
    data = pa.table(
        [
            c.chunk(0).view(f.type)
            for c, f in zip(data.columns, STORAGE_SCHEMAS[table], strict=False)
        ],
        names=data.column_names,
    ).drop_columns(["ResourceAttributes"])
    copies = rows // data.num_rows + 1
    return pa.concat_tables([data] * copies).slice(0, rows).combine_chunks()


def run(data: pa.Table, attributes: str, commit: int, row_group: int, vacuum: int) -> str:
    rows = data.num_rows
    with tempfile.TemporaryDirectory(prefix="opstrata-rowgroups-") as tmp:
        config = {
            "threads": 1,
            "memory_limit": "256MB",
            "checkpoint_threshold": "256MB",
            "max_vacuum_tasks": vacuum,
        }
        con = duckdb.connect(":memory:", config=config)
        con.execute(f"ATTACH '{tmp}/x.duckdb' AS db (ROW_GROUP_SIZE {row_group})")
        con.execute("USE db")
        con.execute("CREATE TABLE s AS SELECT * FROM data LIMIT 0")
        insert = committed = worst = 0.0
        loaded = 0
        for offset in range(0, rows - commit + 1, commit):
            part = data.slice(offset, commit)  # noqa: F841 - DuckDB reads it by name
            started = time.process_time()
            con.execute("BEGIN")
            con.execute("INSERT INTO s SELECT * FROM part")
            middle = time.process_time()
            con.execute("COMMIT")
            ended = time.process_time()
            insert, committed = insert + middle - started, committed + ended - middle
            worst = max(worst, ended - started)
            loaded += commit
        started = time.process_time()
        con.execute("CHECKPOINT")
        checkpoint = time.process_time() - started
        groups = con.execute(
            "SELECT count(DISTINCT row_group_id) FROM pragma_storage_info('s')"
        ).fetchone()[0]
        started = time.process_time()
        con.execute(
            f"SELECT count(*), sum(len(list_filter({attributes}, lambda e: e.key = 'http.route')))"
            " FROM s"
        ).fetchall()
        scan = time.process_time() - started
        size = os.path.getsize(f"{tmp}/x.duckdb") / 1e6
        con.close()
    per = 1e6 / loaded
    total = (insert + committed + checkpoint) * per
    return (
        f"commit {commit:7d} row group {row_group:6d} vacuum {vacuum:3d}:"
        f" insert {insert * per:5.2f} commit {committed * per:5.2f}"
        f" checkpoint {checkpoint * per:5.2f} total {total:5.2f}"
        f" µs/row; longest commit {worst:.2f} s; {groups} row groups; {size:.0f} MB;"
        f" scan {scan * 1e3:.0f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signal", choices=list(_SIGNALS), default="spans")
    parser.add_argument("--rows", type=int, default=800_000)
    parser.add_argument("arms", nargs="+", help="COMMIT_ROWS:ROW_GROUP_SIZE:MAX_VACUUM_TASKS")
    args = parser.parse_args()
    data = stored_rows(args.signal, args.rows)
    print(f"{args.signal}: {args.rows:,} rows; load average {os.getloadavg()[0]:.1f}", flush=True)
    for arm in args.arms:
        commit, row_group, vacuum = (int(x) for x in arm.split(":"))
        print(run(data, _SIGNALS[args.signal][3], commit, row_group, vacuum), flush=True)


if __name__ == "__main__":
    main()
