"""``usage`` grouped by model and day over many LLM calls: the query behind
``GET /api/v1/llmops/usage?group_by=model&bucket=1d``, on a DuckDB store like the server's.

    python bench/llmops_usage.py [--calls 10000000] [--repeat 7] [--data-dir DIR] [--http]

Generated calls (30 days, 40 models, 12 services, 5,000 users, 20 prompts) are inserted
directly into the calls' tables (``llmops_call_rows`` and ``llmops_dims``, read through the
``llmops_calls`` view) as Arrow batches of 1 M rows, in time order as the consumer
writes them, through a store opened with the server's default settings (2 threads, 2 GB). Then
each query runs --repeat times through the plugin's own query code; the median and the best
wall time are printed. The first run of each is a warm-up and not counted. With ``--http`` the
same questions are asked end to end of a real ``opstrata serve`` started on the data directory
(``GET /api/v1/llmops/...`` with httpx, response decoded), which is what the target is about.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).parent.parent))  # tests.serverproc

from opstrata.plugins.llmops import queries
from opstrata.plugins.llmops.dims import dims_of, insert_calls
from opstrata.plugins.llmops.queries import Filters
from opstrata.plugins.llmops.recognise import CALLS
from opstrata.plugins.llmops.store import CALLS_TABLE, ROLLUP_TABLE, compact, cursor_of, roll_up
from opstrata.storage.duckdb_store import DuckDBStore
from tests.serverproc import ServerProcess

DAY = 86_400 * 10**9
T0 = 1_760_000_000 * 10**9 // DAY * DAY


def generated(rng: np.random.Generator, first: int, count: int, total: int) -> pa.Table:
    """Calls number ``first`` .. ``first + count - 1`` of ``total`` spread over 30 days."""
    times = T0 + (np.arange(first, first + count, dtype=np.int64) * (30 * DAY // total))
    models = np.array([f"model-{i:02d}" for i in range(40)], dtype=object)
    services = np.array([f"svc-{i:02d}" for i in range(12)], dtype=object)
    model = models[rng.zipf(1.5, count) % 40]
    inp = rng.integers(50, 5000, count)
    out = rng.integers(10, 800, count)
    cached = rng.integers(0, 50, count)
    cost = inp * 150_000 + out * 600_000
    errors = rng.random(count) < 0.02
    ids = rng.integers(0, 2**63, (count, 2))

    def text(values: np.ndarray) -> pa.Array:
        return pa.array(values, pa.string())

    columns = {
        "Timestamp": pa.array(times, pa.timestamp("ns")),
        "TraceId": text(np.char.mod("%016x", ids[:, 0]).astype(object) * 2),
        "SpanId": text(np.char.mod("%016x", ids[:, 1]).astype(object)),
        "ServiceName": text(services[rng.integers(0, 12, count)]),
        "Provider": text(np.full(count, "openai", dtype=object)),
        "RequestModel": text(model),
        "ResponseModel": text(model),
        "Model": text(model),
        "Operation": text(np.full(count, "chat", dtype=object)),
        "Source": text(np.full(count, "span", dtype=object)),
        "Conventions": text(np.full(count, "genai", dtype=object)),
        "InputTokens": pa.array(inp),
        "OutputTokens": pa.array(out),
        "CacheReadTokens": pa.array(cached),
        "CacheWriteTokens": pa.array(np.zeros(count, dtype=np.int64), mask=np.ones(count, bool)),
        "ReasoningTokens": pa.array(np.zeros(count, dtype=np.int64), mask=np.ones(count, bool)),
        "TotalTokens": pa.array(inp + out),
        "CostPicoUsd": pa.array(cost, mask=model == "model-39"),
        "CostSource": text(np.where(model == "model-39", None, "table")),
        "Duration": pa.array(rng.integers(10**7, 5 * 10**9, count)),
        "Ttft": pa.array(rng.integers(10**7, 10**9, count)),
        "FinishReason": text(np.full(count, "stop", dtype=object)),
        "IsError": pa.array(errors),
        "ErrorType": text(np.where(errors, "RateLimitError", "")),
        "PromptName": text(np.char.mod("prompt-%d", rng.integers(0, 20, count)).astype(object)),
        "PromptVersion": text(np.char.mod("v%d", rng.integers(1, 4, count)).astype(object)),
        "SessionId": text(np.char.mod("s-%d", rng.integers(0, 200_000, count)).astype(object)),
        "UserId": text(np.char.mod("u-%d", rng.integers(0, 5000, count)).astype(object)),
    }
    return pa.table(columns, schema=CALLS)


def timed(what: str, run, repeat: int) -> None:
    run()  # warm-up
    walls = []
    for _ in range(repeat):
        started = time.perf_counter()
        rows = run()
        walls.append(time.perf_counter() - started)
    print(
        f"{what:<52} median {statistics.median(walls) * 1e3:7.1f} ms   best "
        f"{min(walls) * 1e3:7.1f} ms   ({len(rows)} rows)"
    )


def over_http(data_dir: Path, repeat: int) -> None:
    """The API questions end to end, through a server started on ``data_dir``."""
    server = ServerProcess(data_dir).start(timeout=300)
    try:
        day = 86_400 * 10**9

        def ask(path: str, **params: object):
            def run() -> list:
                response = server.api(path, **params)
                response.raise_for_status()
                body = response.json()
                if isinstance(body, list):
                    return body
                return body["rows"] if "rows" in body else body["models"]

            return run

        if not ask("/api/v1/llmops/usage", group_by="model")():
            raise SystemExit(f"no calls in {data_dir}: fill it first with a run without --http")
        timed("GET usage?group_by=model&bucket=1d", ask("/api/v1/llmops/usage", group_by="model",
              bucket="1d"), repeat)  # fmt: skip
        timed(
            "GET usage?group_by=model&bucket=1d&user=u-1 (calls)",
            ask("/api/v1/llmops/usage", group_by="model", bucket="1d", user="u-1"),
            repeat,
        )
        timed("GET usage?group_by=model&bucket=1d&latency=true", ask("/api/v1/llmops/usage",
              group_by="model", bucket="1d", latency="true"), repeat)  # fmt: skip
        timed("GET usage?group_by=service,model&bucket=1h", ask("/api/v1/llmops/usage",
              group_by="service,model", bucket="1h"), repeat)  # fmt: skip
        timed("GET usage?group_by=user (last day)", ask("/api/v1/llmops/usage", group_by="user",
              start=str(T0 + 29 * day), end=str(T0 + 30 * day)), repeat)  # fmt: skip
        timed("GET models", ask("/api/v1/llmops/models"), repeat)
        timed("GET prompts", ask("/api/v1/llmops/prompts"), repeat)
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--http", action="store_true", help="ask a real server (needs --data-dir)")
    args = parser.parse_args()
    if args.http:
        if args.data_dir is None:
            parser.error("--http needs --data-dir (filled by a run without --http)")
        over_http(args.data_dir, args.repeat)
        return
    with tempfile.TemporaryDirectory() as tmp:
        store = DuckDBStore(args.data_dir or Path(tmp))
        store.start()
        try:
            cursor = cursor_of(store)
            have = cursor.execute(f"SELECT count(*) FROM {CALLS_TABLE}").fetchall()[0][0]
            if have < args.calls:
                rng = np.random.default_rng(7)
                started = time.perf_counter()
                step = 1_000_000
                for first in range(have, args.calls, step):
                    pending = generated(rng, first, min(step, args.calls - first), args.calls)
                    dims = dims_of(store, cursor)
                    dims.remember(insert_calls(cursor, dims, pending).pending)  # autocommitted
                    roll_up(cursor, pending)  # as the plugin's writer does with each write
                cursor.execute("BEGIN TRANSACTION")
                compact(cursor)  # and its partial rows merged, as the writer does every minute
                cursor.execute("COMMIT")
                cursor.execute("FORCE CHECKPOINT")
                took = time.perf_counter() - started
                print(f"inserted {args.calls - have:,} calls in {took:.1f} s")
            # (a database filled before llmops_rollup existed got it built by cursor_of)
            rolled = cursor.execute(f"SELECT count(*) FROM {ROLLUP_TABLE}").fetchall()[0][0]
            total = cursor.execute(f"SELECT count(*) FROM {CALLS_TABLE}").fetchall()[0][0]
            print(f"{total:,} calls in {store.path}; {rolled:,} rollup rows")
            day = 86_400 * 10**9
            everything = Filters()
            timed("usage group_by=model bucket=1d",
                  lambda: queries.usage(cursor, everything, ["model"], day, False, 100_000)[0],
                  args.repeat)  # fmt: skip
            calls_only = Filters(errors_only=False)  # a filter the rollup cannot answer
            timed("  the same from the calls (errors=false: no rollup)",
                  lambda: queries.usage(cursor, calls_only, ["model"], day, False, 100_000)[0],
                  args.repeat)  # fmt: skip
            timed("usage group_by=model bucket=1d latency=true",
                  lambda: queries.usage(cursor, everything, ["model"], day, True, 100_000)[0],
                  args.repeat)  # fmt: skip
            timed("usage group_by=service,model bucket=1h",
                  lambda: queries.usage(cursor, everything, ["service", "model"], day // 24,
                                        False, 100_000)[0],
                  args.repeat)  # fmt: skip
            last_day = Filters(start=T0 + 29 * day, end=T0 + 30 * day)
            timed("usage group_by=user, last day",
                  lambda: queries.usage(cursor, last_day, ["user"], None, False, 100_000)[0],
                  args.repeat)  # fmt: skip
            timed("models (with p50/p95/p99 latency, TTFT)",
                  lambda: queries.models(cursor, everything)[0], args.repeat)  # fmt: skip
        finally:
            store.shutdown()


if __name__ == "__main__":
    main()
