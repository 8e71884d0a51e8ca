"""Do the API's read queries work under a DuckDB memory limit, and how long do they take?

``--spans N --dir D`` fills a real store's ``otel_traces`` (once; kept in D) with N synthetic
spans: 6-span traces over 10 services in one hour (root server, client, a server of the next
service, a db client, a peer.service client, an internal span), lognormal durations, 1 % errors.
Then runs the real ``services()``, ``operations(window=None)`` and ``service_map()`` on a
``DuckDBStore(memory_limit=...)`` and prints ok/FAIL, wall and CPU seconds of each.

    python bench/query_memory.py --spans 10000000 --dir /tmp/qm10 --memory-limit 256MB
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import duckdb

from opstrata.settings import StorageSettings
from opstrata.storage.duckdb_ddl import create_statements
from opstrata.storage.duckdb_queries import DuckDBQueries
from opstrata.storage.duckdb_store import DuckDBStore
from opstrata.storage.query_types import TimeWindow

_T0 = 1_700_000_000 * 10**9
_HOUR = 3600 * 10**9


def generate(n: int, data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    # Generated with a large limit: the point is the queries' memory, not the load's.
    con = duckdb.connect(str(data_dir / "opstrata.duckdb"), config={"memory_limit": "2GB"})
    for statement in create_statements():
        con.execute(statement)
    # otel_traces is a view (resources stored once): rows go to its physical table, all under
    # one empty resource.
    con.execute("INSERT INTO otel_resources VALUES (0, [])")
    con.execute(
        f"""INSERT INTO otel_traces_rows ("Timestamp", "TraceId", "SpanId", "ParentSpanId",
        "SpanName", "SpanKind", "ServiceName", "SpanAttributes", "Duration", "StatusCode", "_Seq",
        "ResourceId")
        SELECT make_timestamp_ns({_T0} + CAST(i * ({_HOUR} / {n}) AS BIGINT)),
          printf('%032x', i // 6), printf('%016x', i),
          CASE WHEN i % 6 = 0 THEN '' WHEN i % 6 IN (1, 2) THEN printf('%016x', i - 1)
               ELSE printf('%016x', i - i % 6 + 2) END,
          'op-' || (i % 6) || '-' || ((i // 6) % 8),
          CASE i % 6 WHEN 0 THEN 'Server' WHEN 1 THEN 'Client' WHEN 2 THEN 'Server'
               WHEN 3 THEN 'Client' WHEN 4 THEN 'Client' ELSE 'Internal' END,
          'svc-' || CASE WHEN i % 6 < 2 THEN (i // 6) % 10 ELSE ((i // 6) + 1) % 10 END,
          CASE i % 6 WHEN 3 THEN [{{'key': 'db.system', 'value': 'postgresql'}}]
               WHEN 4 THEN [{{'key': 'peer.service', 'value': 'ext'}}] ELSE [] END,
          CAST(exp(15 + 0.8 * sqrt(-2 * ln(random() + 1e-12)) * cos(6.283185 * random()))
               AS BIGINT),
          CASE WHEN random() < 0.01 THEN 'Error' ELSE 'Ok' END, i, 0
        FROM range({n}) r(i)"""
    )
    con.execute("CHECKPOINT")
    con.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=10_000_000)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--memory-limit", default="256MB")
    parser.add_argument("--threads", type=int, default=StorageSettings().duckdb_threads)
    args = parser.parse_args()
    if not (args.dir / "opstrata.duckdb").exists():
        t = time.time()
        generate(args.spans, args.dir)
        print(f"generated {args.spans} spans in {time.time() - t:.0f} s", flush=True)
    store = DuckDBStore(args.dir, memory_limit=args.memory_limit, threads=args.threads)
    store.start()
    queries = DuckDBQueries(store)
    window = TimeWindow(_T0, _T0 + _HOUR + 1)
    cases = {
        "services": lambda: queries.services(window, 60 * 10**9),
        "operations(window=None)": lambda: queries.operations("svc-1", None),
        "service_map": lambda: queries.service_map(window),
    }
    try:
        for name, run in cases.items():
            wall, cpu = time.time(), time.process_time()
            try:
                run()
                outcome = "ok"
            except duckdb.Error as exc:
                outcome = "FAIL " + str(exc).splitlines()[0][:100]
            print(
                f"{args.memory_limit} {name}: {outcome} "
                f"{time.time() - wall:.1f} s wall, {time.process_time() - cpu:.1f} s CPU",
                flush=True,
            )
    finally:
        store.shutdown()


if __name__ == "__main__":
    main()
