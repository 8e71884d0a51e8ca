"""The ingest pipeline: admit → decode → commit, shared by every receiver.

A receiver hands a request body to :meth:`IngestPipeline.ingest` and turns the outcome (or the
``IngestError`` it raises) into its protocol's reply. The reply to a client is therefore sent
only after the store has made its data durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import pyarrow as pa

from opstrata.admission import Admission
from opstrata.errors import Overloaded, ShuttingDown, Unavailable
from opstrata.otlp.decoded import DecodedRequest, InvalidRequest
from opstrata.otlp.decoder import Encoding, decode_request
from opstrata.otlp.limits import DecodeLimits
from opstrata.schema import Signal, Table
from opstrata.selfmetrics import SelfMetrics
from opstrata.settings import IngestSettings
from opstrata.storage.base import Store, StoreError

__all__ = ["IngestPipeline"]

log = logging.getLogger(__name__)


def _exit_with_parent(parent_pid: int) -> None:
    """In a decode worker: exit when the server is gone (also after its ``kill -9``), rather
    than linger as an orphan."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _stop_pool(pool: ProcessPoolExecutor, timeout: float) -> None:
    """Stop the decode workers within ``timeout``: a stuck or dead worker must not hang the
    server's shutdown (``ProcessPoolExecutor.shutdown(wait=True)`` can)."""
    processes = list(getattr(pool, "_processes", {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + timeout
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            log.warning("decode worker %s did not stop; killing it", process.pid)
            process.kill()


class IngestPipeline:
    """Bounded admission, decoding (in worker processes when configured) and durable commit."""

    def __init__(self, settings: IngestSettings, store: Store, metrics: SelfMetrics) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.limits = DecodeLimits(
            max_attributes=settings.max_attributes,
            max_value_chars=settings.max_value_chars,
            max_depth=settings.max_anyvalue_depth,
        )
        self.admission = Admission(settings.queue_bytes)
        self.on_commit: Callable[[int, list[tuple[Table, pa.RecordBatch]]], None] | None = None
        """Told of every commit (sequence number and batches), in order: the fan-out."""
        self._pool: ProcessPoolExecutor | None = None
        self._closing = False
        self._idle = asyncio.Event()
        self._idle.set()
        metrics.queue_capacity_bytes.set(settings.queue_bytes)

    def start(self) -> None:
        if self.settings.decode_workers > 0:
            self._pool = self._new_pool()
            # Start the workers now, so that the first request does not pay for it.
            for future in [
                self._pool.submit(decode_request, Signal.SPANS, b"", Encoding.PROTOBUF, self.limits)
                for _ in range(self.settings.decode_workers)
            ]:
                future.result()

    def _new_pool(self) -> ProcessPoolExecutor:
        # spawn, not fork: the gRPC core's threads do not survive a fork.
        return ProcessPoolExecutor(
            max_workers=self.settings.decode_workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_exit_with_parent,
            initargs=(os.getpid(),),
        )

    async def shutdown(self, timeout: float = 30.0) -> None:
        """Refuse new requests, let those in flight commit, and stop the decode workers."""
        self._closing = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        if self._pool is not None:
            await asyncio.to_thread(_stop_pool, self._pool, 10.0)
            self._pool = None

    async def _decode(self, signal: Signal, body: bytes, encoding: Encoding) -> DecodedRequest:
        pool = self._pool
        if pool is None:
            return decode_request(signal, body, encoding, self.limits)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                pool, decode_request, signal, body, encoding, self.limits
            )
        except BrokenProcessPool as exc:
            # A dead worker breaks the whole pool for good: replace it, once, and let the
            # client retry.
            if self._pool is pool and not self._closing:
                log.error("a decode worker died; starting new ones")
                self._pool = self._new_pool()
                await asyncio.to_thread(_stop_pool, pool, 5.0)
            raise Unavailable("decoder process failed") from exc

    def refuse_if_full(self, signal: Signal, expected_bytes: int = 0) -> None:
        """Raise ``Overloaded`` now if a request of about this size would not be admitted, so a
        receiver need not read (and decompress) a body only to refuse it."""
        admission = self.admission
        if admission.in_flight_requests and (
            admission.in_flight_bytes + expected_bytes > admission.capacity_bytes
        ):
            self.metrics.throttled_requests.labels(signal.value).inc()
            raise Overloaded(
                f"ingest queue full ({admission.in_flight_bytes} bytes in flight)",
                self.settings.retry_after_seconds,
            )

    async def ingest(self, signal: Signal, body: bytes, encoding: Encoding) -> DecodedRequest:
        """Decode and durably store one request; return what was accepted and rejected.

        Raises ``InvalidRequest`` for a body that cannot be read and ``Unavailable`` (with a
        retry hint) when the queue is full, the server is stopping or the commit failed.
        The work goes on if the caller is cancelled (a client's deadline): its bytes stay
        counted against the queue until it is really done, so retries cannot overfill it.
        """
        metrics = self.metrics
        if self._closing:
            raise ShuttingDown("server is shutting down", self.settings.retry_after_seconds)
        nbytes = len(body)
        admission = self.admission
        if not admission.try_acquire(nbytes):
            metrics.throttled_requests.labels(signal.value).inc()
            raise Overloaded(
                f"ingest queue full ({admission.in_flight_bytes} bytes in flight)",
                self.settings.retry_after_seconds,
            )
        self._idle.clear()
        metrics.queue_bytes.set(admission.in_flight_bytes)
        metrics.queue_requests.set(admission.in_flight_requests)
        work = asyncio.ensure_future(self._admitted(signal, body, encoding, nbytes))
        return await asyncio.shield(work)

    async def _admitted(
        self, signal: Signal, body: bytes, encoding: Encoding, nbytes: int
    ) -> DecodedRequest:
        metrics = self.metrics
        admission = self.admission
        try:
            try:
                decoded = await self._decode(signal, body, encoding)
            except InvalidRequest:
                metrics.rejected_requests.labels(signal.value, "malformed").inc()
                raise
            self._count_decoded(signal, decoded)
            if decoded.batches:
                try:
                    seq = await self.store.write(decoded.batches)
                except StoreError as exc:
                    metrics.rejected_items.labels(signal.value, "commit_failed").inc(
                        decoded.accepted
                    )
                    raise Unavailable(f"commit failed: {exc}", 1) from exc
                metrics.committed_items.labels(signal.value).inc(decoded.accepted)
                self._announce(seq, decoded)
            return decoded
        finally:
            admission.release(nbytes)
            metrics.queue_bytes.set(admission.in_flight_bytes)
            metrics.queue_requests.set(admission.in_flight_requests)
            if admission.in_flight_requests == 0:
                self._idle.set()

    def _announce(self, seq: int, decoded: DecodedRequest) -> None:
        # The data is durable now: whatever happens here must not turn the reply into a
        # "retry", which would store it twice.
        if self.on_commit is None:
            return
        try:
            self.on_commit(seq, decoded.batches)
        except Exception:
            log.exception("fan-out of commit %d failed", seq)

    def _count_decoded(self, signal: Signal, decoded: DecodedRequest) -> None:
        metrics = self.metrics
        metrics.received_items.labels(signal.value).inc(decoded.accepted + decoded.rejected)
        if decoded.rejected:
            metrics.rejected_items.labels(signal.value, "invalid").inc(decoded.rejected)
        if decoded.dropped_attributes:
            metrics.truncations.labels(signal.value, "attribute_dropped").inc(
                decoded.dropped_attributes
            )
        if decoded.truncated_values:
            metrics.truncations.labels(signal.value, "value_truncated").inc(
                decoded.truncated_values
            )
