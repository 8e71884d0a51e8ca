"""Query latency of the HTTP API on a large store: traces, span search, RED, service map, logs,
metrics, and the Jaeger API.

    python bench/query.py [--spans 10000000] [--logs 10000000] [--points 1000000] [--hours 24]

Loads synthetic telemetry (``bench/querydata.py``) straight into a DuckDB store file as Arrow
batches — through OTLP, 21 M items would take ~15 minutes at today's ingest rate, and the query
side does not care how the rows arrived — builds the trace index the way the server's background
thread does, starts the real server (``opstrata serve``) on that directory and times each query
kind over HTTP (keep-alive client; median and p99 of the repeats; with ~20-40 repeats p99 is
close to the maximum). Everything lives in a temporary directory under /tmp, deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

import querydata

from opstrata.storage.duckdb_ddl import BATCH_LOG_TABLE
from opstrata.storage.duckdb_store import DuckDBStore
from opstrata.storage.duckdb_trace_index import TraceIndex
from tests.serverproc import ServerProcess

START = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z
HOUR = 3600 * 10**9


def load(data_dir: Path, args: argparse.Namespace) -> dict:
    con = querydata.create_store_file(data_dir)
    timings = {}
    started = time.perf_counter()
    trace_ids = querydata.load_spans(con, args.spans, START, args.hours)
    timings["spans"] = time.perf_counter() - started
    started = time.perf_counter()
    log_trace_ids = querydata.load_logs(con, args.logs, START, args.hours) if args.logs else []
    timings["logs"] = time.perf_counter() - started
    started = time.perf_counter()
    if args.points:
        querydata.load_metrics(con, args.points, START, args.hours)
    timings["metrics"] = time.perf_counter() - started
    # The store resumes its sequence from the batch log: one row says how far the data goes.
    last_seq = max(
        con.execute('SELECT max("_Seq") FROM otel_traces').fetchall()[0][0] or 0,
        con.execute('SELECT coalesce(max("_Seq"), 0) FROM otel_logs').fetchall()[0][0],
    )
    con.execute(
        f"INSERT INTO {BATCH_LOG_TABLE} VALUES (?, 'spans', ['otel_traces'], 0, now())",
        [last_seq],
    )
    con.execute("CHECKPOINT")
    con.close()
    store = DuckDBStore(data_dir)
    store.start()
    started = time.perf_counter()
    TraceIndex(store).catch_up()
    timings["trace index"] = time.perf_counter() - started
    store.shutdown()
    size = (data_dir / "opstrata.duckdb").stat().st_size
    return {"trace_ids": trace_ids, "log_trace_ids": log_trace_ids, "load": timings, "size": size}


def measure(client: httpx.Client, paths: list[tuple[str, dict]]) -> list[float]:
    out = []
    for path, params in paths:
        started = time.perf_counter()
        response = client.get(path, params=params)
        elapsed = (time.perf_counter() - started) * 1000
        if response.status_code != 200:
            raise RuntimeError(f"{path} {params}: {response.status_code} {response.text[:300]}")
        out.append(elapsed)
    return out


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=10_000_000)
    parser.add_argument("--logs", type=int, default=10_000_000)
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--hours", type=float, default=24.0, help="time the data spans")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument(
        "--keep",
        type=Path,
        help="load into this directory and keep it; if it already holds a loaded store, reuse "
        "it (same --spans/--logs/--points/--hours) instead of loading again",
    )
    parser.add_argument(
        "--only",
        default="",
        help="time only the query kinds whose label contains this text (e.g. 'trace by id')",
    )
    args = parser.parse_args()
    rnd = random.Random(11)
    tmp = Path(tempfile.mkdtemp(prefix="opstrata-qbench-", dir="/tmp"))
    server = None
    try:
        data_dir = args.keep or tmp / "data"
        saved = data_dir / "bench-ids.json"
        if saved.exists():
            loaded = json.loads(saved.read_text())
            print(f"reusing {data_dir}")
        else:
            loaded = load(data_dir, args)
            if args.keep:
                saved.write_text(json.dumps(loaded))
            load_line = ", ".join(f"{k} {v:.1f} s" for k, v in loaded["load"].items())
            print(
                f"loaded {args.spans:,} spans, {args.logs:,} logs, {args.points:,} points "
                f"over {args.hours:g} h ({load_line}); file {loaded['size'] / 2**30:.2f} GiB"
            )
        server = ServerProcess(data_dir).start(timeout=300)
        end = START + int(args.hours * HOUR)
        hour = {"start": str(end - HOUR), "end": str(end)}
        n = args.repeats
        ids = loaded["trace_ids"]
        services = querydata.SERVICES
        routes = querydata.ROUTES

        def span_search(window: dict) -> list[tuple[str, dict]]:
            return [
                (
                    "/api/v1/spans",
                    {
                        "service": rnd.choice(services),
                        "attr.http.route": rnd.choice(routes),
                        "limit": 20,
                        **window,
                    },
                )
                for _ in range(n)
            ]

        kinds: list[tuple[str, list[tuple[str, dict]]]] = [
            ("trace by id", [(f"/api/v1/traces/{rnd.choice(ids)}", {}) for _ in range(n)]),
            ("trace by id (Jaeger)", [(f"/api/traces/{rnd.choice(ids)}", {}) for _ in range(n)]),
            ("span search: service + attribute, last hour", span_search(hour)),
            ("span search: service + attribute, all data", span_search({})),
            (
                "services RED, one hour (all services, 1-min series)",
                [("/api/v1/services", hour)] * max(5, n // 3),
            ),
            (
                "one service RED, one hour",
                [(f"/api/v1/services/{rnd.choice(services)}", hour) for _ in range(n)],
            ),
            (
                "operations of a service, one hour",
                [(f"/api/v1/services/{rnd.choice(services)}/operations", hour) for _ in range(n)],
            ),
            ("service map, one hour", [("/api/v1/service-map", hour)] * max(5, n // 3)),
            (
                "Jaeger dependencies, one hour",
                [("/api/dependencies", {"endTs": str(end // 10**6), "lookback": "3600000"})]
                * max(5, n // 3),
            ),
            (
                "Jaeger trace search: service + tag, one hour, 20 traces",
                [
                    (
                        "/api/traces",
                        {
                            "service": rnd.choice(services[:5]),
                            "limit": "20",
                            "tags": '{"http.response.status_code":"500"}',
                            "start": str((end - HOUR) // 1000),
                            "end": str(end // 1000),
                        },
                    )
                    for _ in range(n)
                ],
            ),
        ]
        if args.logs:
            kinds += [
                (
                    "log search: service + severity + text, one hour",
                    [
                        (
                            "/api/v1/logs",
                            {
                                "service": rnd.choice(services),
                                "severity": "WARN",
                                "contains": "upstream",
                                "limit": 100,
                                **hour,
                            },
                        )
                        for _ in range(n)
                    ],
                ),
                (
                    "logs of one trace",
                    [
                        (f"/api/v1/traces/{rnd.choice(loaded['log_trace_ids'])}/logs", {})
                        for _ in range(n)
                    ],
                ),
            ]
        if args.points:
            kinds += [
                ("metric names", [("/api/v1/metrics", {})] * max(5, n // 3)),
                (
                    "rate of a counter, one hour, 1-min steps, by service",
                    [
                        (
                            "/api/v1/metrics/http.server.requests/query",
                            {
                                "aggregation": "rate",
                                "group_by": "service.name",
                                "step": "60s",
                                **hour,
                            },
                        )
                    ]
                    * max(5, n // 3),
                ),
                (
                    "p99 of a histogram, one hour, 5-min steps",
                    [
                        (
                            "/api/v1/metrics/http.server.request.duration/query",
                            {"aggregation": "p99", "step": "5m", **hour},
                        )
                    ]
                    * max(5, n // 3),
                ),
                (
                    "p99 of an exponential histogram, one hour, 5-min steps",
                    [
                        (
                            "/api/v1/metrics/rpc.server.duration/query",
                            {"aggregation": "p99", "step": "5m", **hour},
                        )
                    ]
                    * max(5, n // 3),
                ),
            ]
        kinds = [(label, paths) for label, paths in kinds if args.only in label]
        with httpx.Client(base_url=server.api_base, timeout=120) as client:
            # Warm up once: the caches, and each code path's first call (imports, cursors).
            warm = ids[0]
            measure(
                client,
                [
                    ("/api/v1/services", hour),
                    (f"/api/v1/traces/{warm}", {}),
                    (f"/api/traces/{warm}", {}),
                ],
            )
            print(f"\nload average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
            print("| query | repeats | median ms | p99 ms |")
            print("|---|---|---|---|")
            for label, paths in kinds:
                times = measure(client, paths)
                print(
                    f"| {label} | {len(times)} | {statistics.median(times):.1f} | "
                    f"{p99(times):.1f} |",
                    flush=True,
                )
            print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
