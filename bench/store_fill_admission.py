"""The store's fill wait against a bounded ingest queue, in one process (no server).

A producer bounded like ingest admission (at most ``--max-rows`` rows queued and not yet
committed; past that a request is refused and retried 5 ms later, as a client would) loads
1,000-span requests with log positions into ``DuckDBStore``, for each ``fill_wait`` given.
With ``--end-fill`` it does what core/ingest.py does: ``end_fill()`` on a refusal and once the
rows held pass half the bound. Prints stored rows/s, commits and refusals.

    python bench/store_fill_admission.py --seconds 4 --max-rows 8000 64000 --end-fill
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from opstrata.otlp.decoder import Encoding, decode_request
from opstrata.otlp.limits import DecodeLimits
from opstrata.schema import Signal
from opstrata.storage.duckdb_store import DuckDBStore
from tests.test_store_resources import _spans_body

PER_REQUEST = 1000


async def _run(store: DuckDBStore, max_rows: int, seconds: float, end_fill: bool) -> tuple:
    body = _spans_body([[("service.name", "fill")]], PER_REQUEST, 1_700_000_000_000_000_000)
    batches = decode_request(Signal.SPANS, body, Encoding.PROTOBUF, DecodeLimits()).batches
    held = stored = refused = position = 0

    def done(_: asyncio.Future) -> None:
        nonlocal held, stored
        held -= PER_REQUEST
        stored += PER_REQUEST

    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if held + PER_REQUEST > max_rows:
            refused += 1
            if end_fill:
                store.end_fill()
            await asyncio.sleep(0.005)  # the client's retry
            continue
        position += 1
        held += PER_REQUEST
        store.enqueue(batches, log_position=position).add_done_callback(done)
        if end_fill and 2 * held > max_rows:
            store.end_fill()
        await asyncio.sleep(0)
    while held:
        await asyncio.sleep(0.01)
    return stored / (time.monotonic() - started), refused


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--max-rows", type=int, nargs="+", default=[8000, 64000])
    parser.add_argument("--fill-wait", type=float, nargs="+", default=[1.0, 0.0])
    parser.add_argument("--end-fill", action="store_true")
    args = parser.parse_args()
    for max_rows in args.max_rows:
        for fill_wait in args.fill_wait:
            directory = Path(tempfile.mkdtemp(prefix="fill-admission-"))
            store = DuckDBStore(directory, fill_wait=fill_wait)
            store.start()
            try:
                rate, refused = asyncio.run(_run(store, max_rows, args.seconds, args.end_fill))
                stats = store.stats
                print(
                    f"max_rows={max_rows} fill_wait={fill_wait} end_fill={args.end_fill}: "
                    f"{rate:,.0f} rows/s, {stats.commits} commits of "
                    f"{stats.rows_committed / max(stats.commits, 1):,.0f} rows, "
                    f"{refused} refused polls",
                    flush=True,
                )
            finally:
                store.shutdown()
                shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
