"""The store gathers already-acknowledged loads into one commit per ``load_interval``: the first
load after a quiet spell commits at once, the next waits for the interval unless someone waits
for it (an awaited write, or ``commit_soon`` from a reader)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from opstrata.otlp.decoder import Encoding, decode_request
from opstrata.otlp.limits import DecodeLimits
from opstrata.schema import Signal, Table
from opstrata.storage.duckdb_store import DuckDBStore
from tests.test_store_resources import _spans_body

_INTERVAL = 60.0  # far longer than any wait below: only a cut-short wait commits in time
_SPANS = 5


def _batches(service: str) -> list:
    body = _spans_body([[("service.name", service)]], _SPANS, 1_700_000_000_000_000_000)
    return decode_request(Signal.SPANS, body, Encoding.PROTOBUF, DecodeLimits()).batches


async def _scenario(store: DuckDBStore) -> None:
    first = store.enqueue(_batches("a"), log_position=1)
    await asyncio.wait_for(first, 10)  # quiet before: at once
    second = store.enqueue(_batches("b"), log_position=2)
    await asyncio.sleep(0.5)
    assert not second.done(), "a load right after a commit waits for the interval"
    store.commit_soon()
    await asyncio.wait_for(second, 10)
    third = store.enqueue(_batches("c"), log_position=3)
    awaited = store.enqueue(_batches("d"))  # no log position: someone waits for it
    await asyncio.wait_for(asyncio.gather(third, awaited), 10)
    assert store.log_position() == 3


def test_loads_wait_for_the_interval_unless_someone_waits(tmp_path: Path) -> None:
    store = DuckDBStore(tmp_path, load_interval=_INTERVAL)
    store.start()
    try:
        asyncio.run(_scenario(store))
        assert store.count(Table.TRACES) == 4 * _SPANS
    finally:
        store.shutdown()
