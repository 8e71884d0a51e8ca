"""Metric tables kept exported until the store's commit (``otlp/exported_tables.py``).

The ingest pipeline hands a ``DuckDBStore`` each metrics request's tables as the C decoder
exported them; the writer concatenates a commit's worth in C, and after the commit gives every
request record batches again (slices of the commit's tables) for the fan-out. What the consumers
get and what is stored must equal the imported decode, also when a commit is refused and its
requests are retried one by one (the refusal is real: the sum table is renamed away through the
store's own cursor, as in ``test_ingest_load_failure``).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

from opstrata.ingest import IngestPipeline
from opstrata.otlp.anyvalue import AttributeRenderer
from opstrata.otlp.decode_metrics import decode_metric_bytes
from opstrata.otlp.decoder import Encoding
from opstrata.otlp.limits import DecodeLimits
from opstrata.schema import Signal, Table
from opstrata.selfmetrics import SelfMetrics
from opstrata.settings import IngestSettings
from opstrata.storage.duckdb_store import DuckDBStore
from tests.test_decode_logs_metrics import column
from tests.test_wire_decoder_metrics import random_request


def _bodies(seed: int, count: int) -> list[bytes]:
    rnd = random.Random(seed)
    bodies = []
    while len(bodies) < count:
        body = random_request(rnd).SerializeToString()
        if decode_metric_bytes(body, AttributeRenderer(DecodeLimits())).batches:
            bodies.append(body)
    return bodies


def _assert_same_batches(got: list, want: list) -> None:
    assert [t for t, _ in got] == [t for t, _ in want]
    for (_, got_batch), (_, want_batch) in zip(got, want, strict=True):
        assert isinstance(got_batch, pa.RecordBatch)
        got_batch.validate(full=True)
        assert got_batch.schema == want_batch.schema
        if not got_batch.equals(want_batch):  # NaN is not equal to itself: compare reprs
            for name in want_batch.schema.names:
                assert repr(column(got_batch, name)) == repr(column(want_batch, name)), name


async def _until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def _run(data: Path, bodies: list[bytes], refuse_first: bool) -> list:
    """Ingest the bodies concurrently (a commit gathers several); returns what the fan-out got
    per commit sequence number and what the store reads back."""
    committed: dict[int, list] = {}

    async def run() -> list:
        store = DuckDBStore(data, load_interval=0.3)
        store.start()
        pipeline = IngestPipeline(IngestSettings(), store, SelfMetrics(), log_dir=data / "log")
        pipeline.on_commit = lambda seq, batches, nbytes: committed.__setitem__(seq, batches)
        pipeline.start()
        try:
            assert pipeline._exported
            if refuse_first:
                store.reader().execute("ALTER TABLE otel_metrics_sum_rows RENAME TO sum_away")
            await asyncio.gather(
                *(pipeline.ingest(Signal.METRIC_POINTS, b, Encoding.PROTOBUF) for b in bodies)
            )
            if refuse_first:
                await _until(lambda: not pipeline.healthy)
                store.reader().execute("ALTER TABLE sum_away RENAME TO otel_metrics_sum_rows")
            await _until(lambda: pipeline.healthy and len(committed) == len(bodies))
            last = store.last_sequence()
            stored = store.read_batches(0, last, frozenset([Signal.METRIC_POINTS]), 10_000)
            # Several requests a commit: concatenated, then sliced apart again. (A refused
            # group's requests are retried one by one, so a refused run may commit each alone.)
            if not refuse_first:
                assert store.stats.commits < len(bodies)
            return [committed[seq] for seq in sorted(committed)], stored
        finally:
            await pipeline.shutdown(timeout=5)
            store.shutdown()

    return asyncio.run(run())


def _reference(bodies: list[bytes]) -> dict[bytes, list]:
    renderer = AttributeRenderer(DecodeLimits())
    return {body: list(decode_metric_bytes(body, renderer).batches) for body in bodies}


def _check(bodies: list[bytes], handed: list, stored: list) -> None:
    want = _reference(bodies)
    # Commits may reorder requests against the list (gather); match each by its batches.
    unmatched = list(bodies)
    for batches in handed:
        match = next(b for b in unmatched if _equal(batches, want[b]))
        unmatched.remove(match)
        _assert_same_batches(batches, want[match])
    assert not unmatched
    assert [sorted(s.tables) for s in stored] == [sorted(t for t, _ in b) for b in handed]
    for read, batches in zip(stored, handed, strict=True):
        _assert_same_batches(sorted(read.tables.items()), sorted(batches))


def _equal(got: list, want: list) -> bool:
    try:
        _assert_same_batches(got, want)
    except AssertionError:
        return False
    return True


def test_consumers_and_store_get_what_the_imported_decode_gives(tmp_path: Path) -> None:
    bodies = _bodies(11, 24)
    handed, stored = _run(tmp_path / "data", bodies, refuse_first=False)
    _check(bodies, handed, stored)


def test_a_refused_commit_of_exported_tables_is_retried_intact(tmp_path: Path) -> None:
    bodies = [
        b
        for b in _bodies(12, 40)
        if any(
            t is Table.METRICS_SUM
            for t, _ in decode_metric_bytes(b, AttributeRenderer(DecodeLimits())).batches
        )
    ][:12]
    handed, stored = _run(tmp_path / "data", bodies, refuse_first=True)
    _check(bodies, handed, stored)
