"""Requests replayed from the ingest log at start-up reach the consumers charged what they hold.

Exported metric tables reach consumers as slices of their commit's tables; a replayed request's
batches measured again (``get_total_buffer_size``) counted the whole tables, ~30 times too much,
so the fan-out's inbox bounds tripped and consumers read the replay back from DuckDB.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from opstrata.consumers import CommittedBatch
from opstrata.ingest import IngestPipeline
from opstrata.otlp.anyvalue import AttributeRenderer
from opstrata.otlp.decode_metrics import decode_metric_bytes
from opstrata.otlp.decoder import Encoding
from opstrata.otlp.limits import DecodeLimits
from opstrata.schema import Signal
from opstrata.selfmetrics import SelfMetrics
from opstrata.settings import IngestSettings
from opstrata.storage.duckdb_store import DuckDBStore
from tests.test_store_exported_metrics import _bodies

_REQUESTS = 40


def _log_then_die(data: str) -> None:
    """Acknowledge the requests (logged and fsynced) and die before the store loads them."""

    async def run() -> None:
        store = DuckDBStore(Path(data), load_interval=60)
        store.start()
        log_dir = Path(data) / "log"
        pipeline = IngestPipeline(IngestSettings(), store, SelfMetrics(), log_dir=log_dir)
        pipeline.start()
        bodies = _bodies(11, _REQUESTS)
        await pipeline.ingest(Signal.METRIC_POINTS, bodies[0], Encoding.PROTOBUF)
        await asyncio.sleep(0.5)  # the first loads; the rest wait for the 60 s load interval
        await asyncio.gather(
            *(pipeline.ingest(Signal.METRIC_POINTS, b, Encoding.PROTOBUF) for b in bodies[1:])
        )
        os._exit(0)

    asyncio.run(run())


def test_replayed_metric_requests_are_charged_their_own_bytes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    code = f"from tests.test_replay_charge import _log_then_die; _log_then_die({str(data)!r})"
    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, timeout=120)

    committed: list[CommittedBatch] = []

    async def restart() -> None:
        store = DuckDBStore(data, load_interval=0.3)
        store.start()
        pipeline = IngestPipeline(IngestSettings(), store, SelfMetrics(), log_dir=data / "log")
        pipeline.on_commit = lambda seq, batches, nbytes: committed.append(
            CommittedBatch.of(seq, batches, nbytes)
        )
        pipeline.start()
        try:
            assert await pipeline.wait_loaded(30)
        finally:
            await pipeline.shutdown(timeout=5)
            store.shutdown()

    asyncio.run(restart())
    # The first request loaded before the crash unless the machine was too slow for it.
    assert len(committed) in (_REQUESTS - 1, _REQUESTS), len(committed)
    replayed = _bodies(11, _REQUESTS)[-len(committed) :]
    renderer = AttributeRenderer(DecodeLimits())
    own = sum(decode_metric_bytes(b, renderer).buffer_bytes for b in replayed)
    charged = sum(batch.nbytes for batch in committed)
    assert own * 0.9 <= charged <= own * 1.1, (charged, own)
