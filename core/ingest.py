"""The ingest pipeline: admit → decode → log → acknowledge, load behind; shared by every receiver.

A receiver hands a request body to :meth:`IngestPipeline.ingest` and turns the outcome (or the
``IngestError`` it raises) into its protocol's reply. The reply to a client is sent only after
the request's data is durable: its body is in the ingest log (``opstrata.ingestlog``) and
fsynced. Its decoded batches go to the store's writer at once, which loads them into DuckDB in
commits as large as the backlog, recording the log position loaded in the same transaction;
at start-up the records past that position are decoded again and loaded. Admission counts a
request's bytes until the store has loaded it, so it bounds the backlog not yet in DuckDB.

Without a log directory the pipeline acknowledges only after the store's commit (the previous
design, kept for comparison).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pyarrow as pa

from opstrata.admission import Admission
from opstrata.errors import Overloaded, ShuttingDown, Unavailable
from opstrata.ingestlog import IngestLog, LogRecord
from opstrata.memstats import HeapTrimmer
from opstrata.otlp.decode_traces import llm_spans_wanted
from opstrata.otlp.decoded import (
    EXPORTED_OVERHEAD,
    DecodedRequest,
    InvalidRequest,
    side_batch_bytes,
)
from opstrata.otlp.decoder import Encoding, decode_in_worker, decode_request
from opstrata.otlp.exported_tables import ExportedTable
from opstrata.otlp.limits import DecodeLimits
from opstrata.schema import TABLES, Signal, Table
from opstrata.selfmetrics import SelfMetrics
from opstrata.settings import IngestSettings
from opstrata.storage.base import Store, StoreError

__all__ = ["IngestPipeline"]

log = logging.getLogger(__name__)

# Codes of the ingest log's records: fixed numbers, never reused (the log outlives a release).
_SIGNAL_CODES = {Signal.SPANS: 1, Signal.METRIC_POINTS: 2, Signal.LOG_RECORDS: 3}
_ENCODING_CODES = {Encoding.PROTOBUF: 1, Encoding.JSON: 2}
_SIGNALS_BY_CODE = {code: signal for signal, code in _SIGNAL_CODES.items()}
_ENCODINGS_BY_CODE = {code: encoding for encoding, code in _ENCODING_CODES.items()}

# A load the store refuses is retried after 0.2, 0.4, ... s (at most 30 s apart); after this
# many refusals the record is poison: kept in ``held/``, counted, and no longer blocks ingest.
_RETRY_FIRST_SECONDS = 0.2
_RETRY_MAX_SECONDS = 30.0
_POISON_ATTEMPTS = 6

# Admission charges a request its body's size times an expansion factor per (signal, encoding)
# before decoding, then its true decoded size: protobuf measured ~4x for spans and ~13x for
# metric points (docs/performance.md), so it starts above those and learns from each request.
_INITIAL_EXPANSION = {Signal.SPANS: 6.0, Signal.METRIC_POINTS: 16.0, Signal.LOG_RECORDS: 6.0}
_EXPANSION_BOUNDS = (1.0, 64.0)

# The heap trimmer waits until the ingest backlog is at most this (docs/ingest.md, "Memory").
_TRIM_BACKLOG_BYTES = 8 * 1024 * 1024


OnCommit = Callable[[int, list[tuple[Table, pa.RecordBatch]], int | None], None]


def _fixed_costs() -> dict[Table, int]:
    """What ``DecodedRequest.nbytes`` adds to a batch's buffers, per table (a fixed cost per
    buffer): so one pass over the buffers gives both what admission counts and what the
    fan-out's inboxes count (``CommittedBatch.nbytes``), ~20-45 µs per request each."""
    costs = {}
    for table, schema in TABLES.items():
        empty = pa.RecordBatch.from_arrays(
            [pa.array([], type=f.type) for f in schema], schema=schema
        )
        held = DecodedRequest(Signal.SPANS, batches=[(table, empty)]).nbytes
        costs[table] = held - empty.get_total_buffer_size()
    return costs


_FIXED_COSTS = _fixed_costs()


def decoded_sizes(decoded: DecodedRequest) -> tuple[int, int]:
    """(``decoded.nbytes``, the batches' buffer bytes), from one pass over the buffers (none
    when the decoder counted them)."""
    buffers = decoded.buffer_bytes
    if buffers < 0:
        buffers = sum(batch.get_total_buffer_size() for _, batch in decoded.batches)
    held = buffers + sum(
        EXPORTED_OVERHEAD if isinstance(batch, ExportedTable) else _FIXED_COSTS[table]
        for table, batch in decoded.batches
    )
    return held + side_batch_bytes(decoded.batches), buffers


@dataclass(slots=True)
class _Failing:
    """An acknowledged request whose load the store refused: held until a retry loads it."""

    signal: Signal
    decoded: DecodedRequest
    nbytes: int
    held: bool
    attempts: int = 1
    timer: asyncio.TimerHandle | None = None
    retrying: bool = False
    """A retry is queued in the store: its outcome must be seen (or the held copy duplicates)."""


def _exit_with_parent(parent_pid: int) -> None:
    """In a decode worker: exit when the server is gone (also after its ``kill -9``), rather
    than linger as an orphan."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _stop_pool(pool: Executor, timeout: float) -> None:
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

    def __init__(
        self,
        settings: IngestSettings,
        store: Store,
        metrics: SelfMetrics,
        log_dir: Path | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.limits = DecodeLimits(
            max_attributes=settings.max_attributes,
            max_value_chars=settings.max_value_chars,
            max_depth=settings.max_anyvalue_depth,
        )
        self.admission = Admission(settings.queue_bytes, settings.admission_wait_bytes)
        self.expansion: dict[tuple[Signal, Encoding], float] = {
            (signal, encoding): factor
            for signal, factor in _INITIAL_EXPANSION.items()
            for encoding in Encoding
        }
        """Decoded bytes per body byte expected of a request, learnt (docs/ingest.md)."""
        self.on_commit: OnCommit | None = None
        """Told of every commit (sequence number, batches, their buffer bytes when known), in
        order: the fan-out."""
        self._pool: Executor | None = None
        self._closing = False
        self._idle = asyncio.Event()
        self._idle.set()
        self.admission.on_empty = self._idle.set
        if log_dir is not None and not hasattr(store, "enqueue"):
            # A store without queued loads (``enqueue``, ``log_position``): ack on its commit.
            log.warning("store %s cannot load an ingest log; acknowledging on commit", store)
            log_dir = None
        self.log = IngestLog(log_dir) if log_dir is not None else None
        self._exported = bool(getattr(store, "takes_exported_tables", False))
        """Metric tables stay exported (not imported into pyarrow) until the store's commit
        concatenates them (``otlp.exported_tables``)."""
        self.loaded = 0
        """Ingest log position up to which every record's load has finished (in order)."""
        self.backlog_bytes = 0
        """Bytes (as counted by admission) of logged requests queued for the store, not loaded."""
        self.backlog_requests = 0
        self.loads = 0
        """Requests loaded so far."""
        # Trim only with the backlog (nearly) loaded: a trim stalls malloc for tens of ms.
        self._trimmer = HeapTrimmer(
            lambda: self.backlog_bytes <= _TRIM_BACKLOG_BYTES,
            settings.heap_trim_mib * 1024 * 1024,
        )
        self._failing: dict[int, _Failing] = {}
        """Acknowledged requests (by log position) whose load failed, awaiting a retry."""
        self.poisoned = 0
        """Requests the store refused every time: left in the log's ``held/`` directory."""
        self._load_waiters: collections.deque[tuple[int, asyncio.Future[None]]] = (
            collections.deque()
        )
        metrics.queue_capacity_bytes.set(settings.queue_bytes)
        # Read at scrape time, not set per request: the counters' children are looked up once.
        metrics.queue_bytes.set_function(lambda: self.admission.in_flight_bytes)
        metrics.queue_requests.set_function(lambda: self.admission.in_flight_requests)
        self._received = {s: metrics.received_items.labels(s.value) for s in Signal}
        self._committed = {s: metrics.committed_items.labels(s.value) for s in Signal}
        self._throttled = {s: metrics.throttled_requests.labels(s.value) for s in Signal}

    def start(self) -> None:
        """Start the decode workers, and open the ingest log: what a crash left unloaded is
        decoded again and queued for the store before any new request."""
        self._start_pool()
        self._trimmer.start()
        if self.log is not None:
            self.loaded = self.store.log_position()  # type: ignore[attr-defined]
            pending = self.log.open(self.loaded)
            self.log.start(asyncio.get_running_loop())
            on_refused = getattr(self.store, "on_refused", None)
            if on_refused is not None:
                # The store's writer holds a refused record itself, before its next commit
                # records a log position past it (a crash in between would lose it).
                on_refused(self._hold)
            if pending:
                log.info("ingest log: loading %d logged requests the store lacks", len(pending))
            for record in pending:
                self._replay(record)
            for record in self.log.held():
                self._replay_held(record)

    @property
    def healthy(self) -> bool:
        """False while an acknowledged request's load is failing (being retried): ``/readyz``
        says not ready and admission answers 503 / UNAVAILABLE until it loads."""
        return not self._failing

    def _replay(self, record: LogRecord) -> None:
        signal = _SIGNALS_BY_CODE[record.signal]
        try:
            decoded = decode_request(
                signal,
                record.body,
                _ENCODINGS_BY_CODE[record.encoding],
                self.limits,
                self._exported,
            )
        except Exception:
            log.exception("ingest log: a logged %s request no longer decodes; skipped", signal)
            self._loaded_upto(record.end)
            return
        if not decoded.batches:
            self._loaded_upto(record.end)
            return
        # Counted against admission like a live request: the backlog bound covers it too.
        nbytes = max(len(record.body), decoded.nbytes)
        self.admission.take(nbytes)
        self._idle.clear()
        # The decoder's buffer bytes, as a live load passes them: measured again, a metrics
        # request's batches (slices of its commit's tables) would count the whole tables.
        buffers = decoded.buffer_bytes if decoded.buffer_bytes >= 0 else None
        self._load(signal, decoded, nbytes, record.end, buffers)

    def _replay_held(self, record: LogRecord) -> None:
        """Retry a held record (one the store refused before); it is loaded without a log
        position, since the store's position has moved past it."""
        assert self.log is not None
        signal = _SIGNALS_BY_CODE[record.signal]
        try:
            decoded = decode_request(
                signal,
                record.body,
                _ENCODINGS_BY_CODE[record.encoding],
                self.limits,
                self._exported,
            )
        except Exception:
            log.exception("ingest log: held record %d no longer decodes; left held", record.end)
            self.poisoned += 1
            return
        nbytes = max(len(record.body), decoded.nbytes)
        self.admission.take(nbytes)
        self._idle.clear()
        self._failing[record.end] = _Failing(signal, decoded, nbytes, held=True, attempts=0)
        self._retry(record.end)

    def _start_pool(self) -> None:
        workers = self.settings.decode_workers or self.settings.decode_threads
        if workers > 0:
            self._pool = self._new_pool()
            # Start the workers now, so that the first request does not pay for it.
            for future in [
                self._pool.submit(decode_request, Signal.SPANS, b"", Encoding.PROTOBUF, self.limits)
                for _ in range(workers)
            ]:
                future.result()

    def _new_pool(self) -> Executor:
        if not self.settings.decode_workers:
            # Threads of this process: the C decoders parse without the GIL, so a request's
            # parse runs beside the event loop (docs/ingest.md, "Decoding and committing").
            return ThreadPoolExecutor(
                max_workers=self.settings.decode_threads, thread_name_prefix="decode"
            )
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
        # Failing loads are held on disk: the next start retries them, shutdown need not wait.
        for position, failing in list(self._failing.items()):
            if failing.retrying:
                continue  # its outcome settles it (the store loads what was queued first)
            if failing.timer is not None:
                failing.timer.cancel()
            del self._failing[position]
            self._release(failing.nbytes)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        self._trimmer.stop()
        if self.log is not None:
            await asyncio.to_thread(self.log.close)
        if self._pool is not None:
            await asyncio.to_thread(_stop_pool, self._pool, 10.0)
            self._pool = None

    async def _decode(self, signal: Signal, body: bytes, encoding: Encoding) -> DecodedRequest:
        pool = self._pool
        if pool is None:
            return decode_request(signal, body, encoding, self.limits, self._exported)
        loop = asyncio.get_running_loop()
        try:
            if self.settings.decode_workers:
                # A worker process hands its result back pickled: no exported tables, and it is
                # told whether to make the llmops side batch (its own flag is never set).
                return await loop.run_in_executor(
                    pool, decode_in_worker, signal, body, encoding, self.limits, llm_spans_wanted()
                )
            return await loop.run_in_executor(
                pool, decode_request, signal, body, encoding, self.limits, self._exported
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
        """Raise ``Overloaded`` now if a request of about this size would be neither admitted nor
        let wait for room, so a receiver need not read (and decompress) a body only to refuse
        it."""
        admission = self.admission
        charge = int(expected_bytes * self.expansion[signal, Encoding.PROTOBUF])
        if admission.waiting_requests == 0 and admission.fits(charge):
            return
        if not (self._may_wait and admission.can_wait(expected_bytes)):
            self._refuse(signal)

    @property
    def inline(self) -> bool:
        """True when a request is decoded in this thread and acknowledged on the ingest log's
        fsync: then :meth:`submit` does all of a request's work but the wait, without a task."""
        return self._pool is None and self.log is not None

    async def ingest(self, signal: Signal, body: bytes, encoding: Encoding) -> DecodedRequest:
        """Decode and durably store one request; return what was accepted and rejected.

        Raises ``InvalidRequest`` for a body that cannot be read and ``Unavailable`` (with a
        retry hint) when the queue is full, the server is stopping or the commit failed.
        The work goes on if the caller is cancelled (a client's deadline): its bytes stay
        counted against the queue until it is really done, so retries cannot overfill it.
        """
        nbytes = self.try_admit(signal, encoding, len(body))
        if nbytes is None:
            nbytes = await self._wait_for_room(signal, encoding, len(body))
        if self.inline:
            decoded, position = self.submit(signal, body, encoding, nbytes)
            if position:
                assert self.log is not None
                try:
                    await self.log.wait_synced(position)
                except OSError as exc:
                    raise Unavailable(f"ingest log fsync failed: {exc}", 1) from exc
            return decoded
        work = asyncio.ensure_future(self._admitted(signal, body, encoding, nbytes))
        return await asyncio.shield(work)

    def submit(
        self, signal: Signal, body: bytes, encoding: Encoding, nbytes: int | None = None
    ) -> tuple[DecodedRequest, int]:
        """For an :attr:`inline` pipeline: admit, decode, append to the ingest log and queue
        the load, all before returning; return the decoded request and the log position whose
        fsync the reply must wait for (``IngestLog.when_synced``; 0: nothing to wait for).

        ``nbytes``: the charge :meth:`try_admit` already took for it; without it the request is
        admitted here or refused (it does not wait). Raises like :meth:`ingest`. Nothing here
        awaits, so a cancelled caller cannot leave work half done: once appended, the load owns
        the request's admission bytes.
        """
        if nbytes is None:
            nbytes = self.try_admit(signal, encoding, len(body))
            if nbytes is None:
                self._refuse(signal)
        release = True
        try:
            try:
                decoded = decode_request(signal, body, encoding, self.limits, self._exported)
            except InvalidRequest:
                self.metrics.rejected_requests.labels(signal.value, "malformed").inc()
                raise
            nbytes, buffers = self._true_up(signal, encoding, len(body), nbytes, decoded)
            self._count_decoded(signal, decoded)
            if not decoded.batches:
                return decoded, 0
            position = self._append(signal, encoding, body)
            release = False  # the load releases the request's bytes: the backlog is bounded
            self._load(signal, decoded, nbytes, position, buffers)
            return decoded, position
        finally:
            if release:
                self._release(nbytes)

    def try_admit(self, signal: Signal, encoding: Encoding, body_bytes: int) -> int | None:
        """Charge a request against admission now and return its charge; None when there is no
        room now but the request may wait for it (:meth:`ingest` waits). Raises ``Unavailable``
        (``Overloaded`` when it may not wait either)."""
        self._refuse_if_closed(signal)
        # Charged at what it will hold decoded (estimated), so requests being decoded cannot
        # overrun the bound; trued up to the real decoded size once decoded.
        nbytes = self._charge(signal, encoding, body_bytes)
        if self.admission.try_acquire(nbytes):
            self._idle.clear()
            return nbytes
        self._end_fill()
        if self._may_wait and self.admission.can_wait(body_bytes):
            return None
        self._refuse(signal)

    async def _wait_for_room(self, signal: Signal, encoding: Encoding, body_bytes: int) -> int:
        """For a request :meth:`try_admit` let wait: wait (at most ``admission_wait_seconds``)
        for room and return its charge. Raises ``Unavailable``."""
        nbytes = self._charge(signal, encoding, body_bytes)
        wait = self.settings.admission_wait_seconds
        if not await self.admission.wait(nbytes, body_bytes, wait):
            self._refuse(signal)
        self._idle.clear()
        try:
            self._refuse_if_closed(signal)  # it may have started while this request waited
        except Unavailable:
            self._release(nbytes)
            raise
        return nbytes

    def _refuse_if_closed(self, signal: Signal) -> None:
        if self._closing:
            raise ShuttingDown("server is shutting down", self.settings.retry_after_seconds)
        if self._failing:
            self._throttled[signal].inc()
            raise Unavailable(
                "the store is failing to load acknowledged data; retrying it",
                self.settings.retry_after_seconds,
            )

    @property
    def _may_wait(self) -> bool:
        return self.settings.admission_wait_seconds > 0 and not self._closing

    def _refuse(self, signal: Signal) -> NoReturn:
        self._throttled[signal].inc()
        self._end_fill()
        admission = self.admission
        raise Overloaded(
            f"ingest queue full ({admission.in_flight_bytes} bytes in flight, "
            f"{admission.waiting_requests} requests waiting for room)",
            self.settings.retry_after_seconds,
        )

    async def _admitted(
        self, signal: Signal, body: bytes, encoding: Encoding, nbytes: int
    ) -> DecodedRequest:
        metrics = self.metrics
        release = True
        try:
            try:
                decoded = await self._decode(signal, body, encoding)
            except InvalidRequest:
                metrics.rejected_requests.labels(signal.value, "malformed").inc()
                raise
            nbytes, buffers = self._true_up(signal, encoding, len(body), nbytes, decoded)
            self._count_decoded(signal, decoded)
            if not decoded.batches:
                return decoded
            if self.log is None:
                await self._commit(signal, decoded)
                return decoded
            position = self._append(signal, encoding, body)
            release = False  # the load releases the request's bytes: the backlog is bounded
            self._load(signal, decoded, nbytes, position, buffers)
            try:
                await self.log.wait_synced(position)
            except OSError as exc:
                raise Unavailable(f"ingest log fsync failed: {exc}", 1) from exc
            return decoded
        finally:
            if release:
                self._release(nbytes)

    def _append(self, signal: Signal, encoding: Encoding, body: bytes) -> int:
        """Append a request to the ingest log; return its position (``Unavailable`` if the
        write fails)."""
        assert self.log is not None
        try:
            return self.log.append(_SIGNAL_CODES[signal], _ENCODING_CODES[encoding], body)
        except OSError as exc:
            raise Unavailable(f"ingest log write failed: {exc}", 1) from exc

    def _charge(self, signal: Signal, encoding: Encoding, body_bytes: int) -> int:
        return int(body_bytes * self.expansion[signal, encoding])

    def _true_up(
        self,
        signal: Signal,
        encoding: Encoding,
        body_bytes: int,
        charged: int,
        decoded: DecodedRequest,
    ) -> tuple[int, int]:
        """Charge a decoded request what it holds (at least its body), learn its expansion;
        return the new charge and the batches' buffer bytes."""
        decoded_bytes, buffers = decoded_sizes(decoded)
        held = max(body_bytes, decoded_bytes)
        self.admission.adjust(held - charged)
        if body_bytes >= 1024:  # tiny requests say little about big ones
            key = (signal, encoding)
            ratio = min(max(decoded_bytes / body_bytes, _EXPANSION_BOUNDS[0]), _EXPANSION_BOUNDS[1])
            # Up at once, down slowly: an underestimate lets the bound slip, an overestimate
            # only refuses early.
            self.expansion[key] = max(ratio, 0.95 * self.expansion[key] + 0.05 * ratio)
        return held, buffers

    async def _commit(self, signal: Signal, decoded: DecodedRequest) -> None:
        """Without a log: acknowledge after the store's commit."""
        try:
            seq = await self.store.write(decoded.batches)
        except StoreError as exc:
            self.metrics.rejected_items.labels(signal.value, "commit_failed").inc(decoded.accepted)
            raise Unavailable(f"commit failed: {exc}", 1) from exc
        self._committed[signal].inc(decoded.accepted)
        buffers = decoded.buffer_bytes  # the batches may be slices of a whole commit's table now
        self._announce(seq, decoded, buffers if buffers >= 0 else None)

    def _load(
        self,
        signal: Signal,
        decoded: DecodedRequest,
        nbytes: int,
        position: int,
        buffers: int | None = None,
    ) -> None:
        """Queue a logged request's batches for the store; its completion is handled in order."""
        self.backlog_bytes += nbytes
        self.backlog_requests += 1
        admission = self.admission
        if 2 * self.backlog_bytes > admission.capacity_bytes or admission.waiting_requests:
            # Before admission refuses anyone; and requests waiting for room wait for this
            # load's release, which the store's fill wait would hold back up to a second.
            self._end_fill()
        try:
            future = self.store.enqueue(decoded.batches, position)  # type: ignore[attr-defined]
        except StoreError:
            # Only when the store is shutting down: the record stays in the log for the next
            # start, which loads it.
            log.warning("store closed: request at log position %d left for next start", position)
            self.backlog_bytes -= nbytes
            self.backlog_requests -= 1
            self._loaded_upto(position)
            self._release(nbytes)
            return
        future.add_done_callback(
            functools.partial(self._on_loaded, signal, decoded, nbytes, position, buffers)
        )

    def _on_loaded(
        self,
        signal: Signal,
        decoded: DecodedRequest,
        nbytes: int,
        position: int,
        buffers: int | None,
        future: asyncio.Future[int],
    ) -> None:
        self.backlog_bytes -= nbytes
        self.backlog_requests -= 1
        self.loads += 1
        assert self.log is not None
        try:
            seq = future.result()
        except Exception as exc:
            # Acknowledged but refused by the store. An ack means durable: copy the record to
            # ``held/`` before anything can trim it (the store's position moves past it with
            # the next commit), keep its bytes counted, and retry until it loads.
            log.error("loading the request at ingest log position %d failed: %s", position, exc)
            held = getattr(exc, "held", False) or self._hold(position)
            if held:
                self._release_refused(position)
            self._failing[position] = _Failing(signal, decoded, nbytes, held=held)
            self._schedule_retry(position)
        else:
            self._committed[signal].inc(decoded.accepted)
            self._announce(seq, decoded, buffers)
            self._release(nbytes)
        self._loaded_upto(position)
        self._trim()

    def _hold(self, position: int) -> bool:
        assert self.log is not None
        try:
            record = self.log.record_at(position)
            if record is None:
                log.error("ingest log: refused record %d not found in the log", position)
                return False
            self.log.hold(record)
        except OSError as exc:
            log.error("ingest log: cannot hold refused record %d: %s", position, exc)
            return False
        return True

    def _release_refused(self, position: int) -> None:
        """The refused record is held: the store may record positions past it again."""
        release = getattr(self.store, "release_refused", None)
        if release is not None:
            release(position)

    def _trim(self) -> None:
        """Trim the log up to the store's position, but never past a refused record not yet
        copied to ``held/``."""
        assert self.log is not None
        limit = self.store.log_position()  # type: ignore[attr-defined]
        for position, failing in self._failing.items():
            if not failing.held:
                limit = min(limit, position - 1)  # keeps the segment holding the record
        self.log.trim(limit)

    def _schedule_retry(self, position: int) -> None:
        failing = self._failing[position]
        delay = min(_RETRY_FIRST_SECONDS * 2 ** (failing.attempts - 1), _RETRY_MAX_SECONDS)
        failing.timer = asyncio.get_running_loop().call_later(delay, self._retry, position)

    def _retry(self, position: int) -> None:
        failing = self._failing.get(position)
        if failing is None or self._closing:
            return
        failing.timer = None
        if not failing.held:
            failing.held = self._hold(position)
            if failing.held:
                self._release_refused(position)
        try:
            # No log position: the store's has moved past this record already.
            future = self.store.enqueue(failing.decoded.batches, None)  # type: ignore[attr-defined]
        except StoreError:
            return  # shutting down: held (or still in the log) for the next start
        failing.retrying = True
        future.add_done_callback(functools.partial(self._on_retried, position))

    def _on_retried(self, position: int, future: asyncio.Future[int]) -> None:
        failing = self._failing.get(position)
        if failing is None:
            return
        assert self.log is not None
        failing.retrying = False
        try:
            seq = future.result()
        except Exception as exc:
            failing.attempts += 1
            if self._closing:
                log.warning(
                    "log position %d not loaded at shutdown: held for the next start", position
                )
            elif failing.attempts < _POISON_ATTEMPTS or not failing.held:
                log.warning("retrying the load of log position %d failed: %s", position, exc)
                self._schedule_retry(position)
                return
            else:
                self._poison(position, failing, exc)
        else:
            log.info("the load of log position %d succeeded on retry", position)
            self.metrics.committed_items.labels(failing.signal.value).inc(failing.decoded.accepted)
            # Known buffer bytes: the batches may be slices of a whole commit's table now.
            buffers = failing.decoded.buffer_bytes
            self._announce(seq, failing.decoded, buffers if buffers >= 0 else None)
            if failing.held:
                self.log.release_held(position)
        del self._failing[position]
        self._trim()
        self._release(failing.nbytes)

    def _poison(self, position: int, failing: _Failing, exc: BaseException) -> None:
        # Poison: kept in held/ (every start retries it), counted, reported; it no longer
        # holds up ingest.
        assert self.log is not None
        log.error(
            "the store refused the request at log position %d %d times (%s); left in %s",
            position, failing.attempts, exc, self.log.held_directory,
        )  # fmt: skip
        self.poisoned += 1
        self.metrics.rejected_items.labels(failing.signal.value, "load_failed").inc(
            failing.decoded.accepted
        )

    def _end_fill(self) -> None:
        """Admission is short of room: the store may be holding acknowledged loads back to
        fill a row group (``DuckDBStore.fill_wait``), and admission counts them as in flight,
        so clients would be refused while its writer sleeps. Have it commit them."""
        end_fill = getattr(self.store, "end_fill", None)
        if end_fill is not None:
            end_fill()

    def _loaded_upto(self, position: int) -> None:
        if position > self.loaded:
            self.loaded = position
        waiters = self._load_waiters
        while waiters and waiters[0][0] <= self.loaded:
            _, future = waiters.popleft()
            if not future.done():
                future.set_result(None)

    async def wait_loaded(self, timeout: float) -> bool:
        """Wait until everything acknowledged so far is in the store (at most ``timeout``
        seconds); a reader that does this first sees its own acknowledged writes."""
        if self.log is None:
            return True
        target = self.log.appended
        if self.loaded >= target:
            return True
        commit_soon = getattr(self.store, "commit_soon", None)
        if commit_soon is not None:
            commit_soon()  # the store may be holding loads back to gather a larger commit
        future = asyncio.get_running_loop().create_future()
        self._load_waiters.append((target, future))
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return False
        return True

    def _release(self, nbytes: int) -> None:
        self.admission.release(nbytes)  # sets ``_idle`` when nothing is left in flight

    def _announce(self, seq: int, decoded: DecodedRequest, buffers: int | None = None) -> None:
        # The data is durable now: whatever happens here must not turn the reply into a
        # "retry", which would store it twice.
        if self.on_commit is None:
            return
        try:
            self.on_commit(seq, decoded.batches, buffers)
        except Exception:
            log.exception("fan-out of commit %d failed", seq)

    def _count_decoded(self, signal: Signal, decoded: DecodedRequest) -> None:
        metrics = self.metrics
        self._received[signal].inc(decoded.accepted + decoded.rejected)
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
