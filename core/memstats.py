"""Where the server's memory is: gauges on ``/metrics``, computed when scraped.

Ingest holds data in several places between the request and the consumers — the admission
queue (decoded batches awaiting their load), the store's writer (the group being committed,
DuckDB's buffers) and the consumers' inboxes (batches already loaded) — and the process's
resident size is what an operator has to fit in. These gauges show each holder beside the
total, so a memory problem can be placed without a profiler (docs/ingest.md, "Memory").
Nothing here runs per request: everything is read at scrape time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pyarrow as pa
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["HeapTrimmer", "MemoryCollector", "malloc_bytes", "resident_bytes"]

log = logging.getLogger(__name__)

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int:
    """The process's resident set size (Linux ``/proc/self/statm``; 0 elsewhere)."""
    try:
        with open("/proc/self/statm", "rb") as handle:
            return int(handle.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
            "fordblks", "keepcost",
        )
    ]  # fmt: skip


def _mallinfo2() -> Any:
    """glibc's ``mallinfo2`` (2.33+), or None: the C heap is where the decoder's column
    buffers live, and what glibc keeps of freed memory is resident but in no other gauge."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        function = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    function.restype = _MallInfo2
    return function


_MALLINFO2 = _mallinfo2()


def malloc_bytes() -> tuple[int, int] | None:
    """(bytes in use, bytes free but kept) in glibc's heap, or None without glibc."""
    if _MALLINFO2 is None:
        return None
    info = _MALLINFO2()
    return info.uordblks + info.hblkhd, info.fordblks


def pool_settings() -> dict[str, str]:
    """Arrow's default pool and the setting that matters for it, for ``/metrics``: its backend
    and, for mimalloc, the purge delay in ms from the environment (``default``: mimalloc's own,
    10 ms; ``n/a`` for another backend). mimalloc reads it once, when pyarrow loads, so the
    environment the process started with is what it runs with (docs/configuration.md, Memory).
    """
    backend = pa.default_memory_pool().backend_name
    delay = "n/a"
    if backend == "mimalloc":
        # mimalloc before 2.1 called the option reset_delay; it still reads the old name.
        names = ("MIMALLOC_PURGE_DELAY", "MIMALLOC_RESET_DELAY")
        delay = next((os.environ[name] for name in names if name in os.environ), "default")
    return {"backend": backend, "purge_delay_ms": delay}


def _malloc_trim() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        function = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function


_MALLOC_TRIM = _malloc_trim()


class HeapTrimmer:
    """Gives the C heap's free pages back to the OS when a lot is free and ingest is quiet.

    The decoder's column buffers come from glibc's malloc on the event loop's thread and are
    freed, a request at a time, by whichever thread drops the last reference (the store's
    writer, a consumer). glibc returns freed memory to the OS only from the top of the heap,
    so a heap that held a backlog stays resident after it is loaded: 200-300 MiB "free" but
    resident in the bench's runs (docs/performance.md, "Ingest, sixth round").
    ``malloc_trim(0)`` releases the free pages in every arena, in 15-60 ms here, holding each
    arena's lock meanwhile: ctypes drops the GIL for the call, but a thread that calls malloc
    with the GIL held (the event loop decoding a request) then blocks on that lock and every
    Python thread with it. So it runs only when the heap keeps at least ``threshold_bytes``
    free (``mallinfo2().fordblks``, checked once a second) and ``quiet()`` says the ingest
    backlog is drained; 0 bytes turns it off (``ingest.heap_trim_mib``).
    """

    def __init__(
        self, quiet: Callable[[], bool], threshold_bytes: int, interval: float = 1.0
    ) -> None:
        self._quiet = quiet
        self.threshold_bytes = threshold_bytes
        self.interval = interval
        self.trims = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if _MALLOC_TRIM is None or _MALLINFO2 is None or self.threshold_bytes <= 0:
            return
        self._thread = threading.Thread(target=self._run, name="heap-trim", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def due(self) -> bool:
        """Whether a trim is worth its stall now."""
        heap = malloc_bytes()
        return heap is not None and heap[1] >= self.threshold_bytes and self._quiet()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if self.due():
                _MALLOC_TRIM(0)
                self.trims += 1


def inbox_bytes(runners: Sequence[Any]) -> tuple[int, int]:
    """(distinct batches, their Arrow buffer bytes) held in the consumers' inboxes. The same
    committed batch sits in several inboxes at once; it is counted once."""
    seen: dict[int, int] = {}
    for runner in runners:
        for batch in runner.inbox_snapshot():
            if id(batch) not in seen:
                # As decoded (the fan-out's count): the tables may be slices of a commit's.
                seen[id(batch)] = batch.nbytes
    return len(seen), sum(seen.values())


class MemoryCollector(Collector):
    """Gauges of memory by holder: process RSS, Arrow's pool, the ingest backlog, the
    consumers' inboxes and DuckDB's buffer manager."""

    def __init__(self, pipeline: Any, store: Any, runners: Sequence[Any]) -> None:
        self._pipeline = pipeline
        self._store = store
        self._runners = runners
        self._pool = pool_settings()  # fixed when the process started

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "opstrata_resident_memory_bytes",
            "Resident set size of the server process.",
            value=resident_bytes(),
        )
        pool = pa.default_memory_pool()
        yield InfoMetricFamily(
            "opstrata_arrow_memory_pool",
            "Arrow's memory pool and the settings it runs with (docs/configuration.md, Memory).",
            value=self._pool,
        )
        yield GaugeMetricFamily(
            "opstrata_arrow_allocated_bytes",
            "Bytes allocated from Arrow's memory pool (decoded batches and their copies).",
            value=pool.bytes_allocated(),
        )
        yield GaugeMetricFamily(
            "opstrata_arrow_max_allocated_bytes",
            "Most bytes ever allocated at once from Arrow's memory pool.",
            value=pool.max_memory() or 0,
        )
        heap = malloc_bytes()
        if heap is not None:
            yield GaugeMetricFamily(
                "opstrata_malloc_used_bytes",
                "Bytes in use in the C heap (glibc malloc): decoded column buffers among them.",
                value=heap[0],
            )
            yield GaugeMetricFamily(
                "opstrata_malloc_free_bytes",
                "Bytes freed to the C heap (glibc malloc) and kept by it, not returned to the OS.",
                value=heap[1],
            )
        pipeline = self._pipeline
        yield GaugeMetricFamily(
            "opstrata_ingest_backlog_bytes",
            "Decoded size of acknowledged requests not yet loaded into the store.",
            value=pipeline.backlog_bytes,
        )
        yield GaugeMetricFamily(
            "opstrata_ingest_backlog_requests",
            "Acknowledged requests not yet loaded into the store.",
            value=pipeline.backlog_requests,
        )
        batches, nbytes = inbox_bytes(self._runners)
        yield GaugeMetricFamily(
            "opstrata_consumer_inbox_batches",
            "Distinct committed batches waiting in consumers' inboxes.",
            value=batches,
        )
        yield GaugeMetricFamily(
            "opstrata_consumer_inbox_bytes",
            "Arrow bytes of the committed batches waiting in consumers' inboxes (counted once).",
            value=nbytes,
        )
        duckdb_family = GaugeMetricFamily(
            "opstrata_duckdb_memory_bytes",
            "Memory held by DuckDB's buffer manager, by tag (duckdb_memory()).",
            labels=["tag"],
        )
        for tag, used in self._duckdb_memory():
            duckdb_family.add_metric([tag], used)
        yield duckdb_family

    def _duckdb_memory(self) -> list[tuple[str, int]]:
        reader = getattr(self._store, "reader", None)
        if reader is None:
            return []
        try:
            cursor = reader()
            rows = cursor.execute(
                "SELECT tag, memory_usage_bytes FROM duckdb_memory() WHERE memory_usage_bytes > 0"
            ).fetchall()
        except Exception as exc:  # a store that is closing: the other gauges still count
            log.debug("duckdb_memory() failed: %s", exc)
            return []
        return [(str(tag).lower(), int(used)) for tag, used in rows]
