"""Fan-out of committed batches to consumers: one thread and one bounded inbox per consumer.

``publish`` runs on the ingest path after each commit and never blocks: when a consumer's inbox
is full, the consumer is marked *behind*, its inbox is emptied, and its thread later reads the
batches it missed from the store. Each consumer's offset (the last sequence it finished) is
written to ``<data_dir>/consumers/<plugin>.<name>.offset`` after every batch, so after a
restart — also after ``kill -9`` — it resumes right after the last batch it finished.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from pathlib import Path

from opstrata.consumers import CommittedBatch, Consumer, ConsumerContext

__all__ = ["ConsumerRunner", "OffsetFile"]

log = logging.getLogger(__name__)

_CATCH_UP_CHUNK = 32
_CATCH_UP_MANY = 256
_MANY_BATCHES = 512
_LINGER_SECONDS = 0.005
_RETRY_SECONDS = 1.0


class OffsetFile:
    """The last finished sequence number of one consumer, in a small file rewritten in place.

    The number is written as a fixed-width field with one ``pwrite``: a process killed at any
    point leaves the old or the new number (the page cache keeps what a finished ``pwrite``
    wrote), at a few microseconds per batch. Not fsynced: an OS crash may lose the last
    offsets, and the consumer then sees those batches again.
    """

    WIDTH = 20

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def load(self) -> int | None:
        try:
            text = self.path.read_text().strip()
        except FileNotFoundError:
            return None
        try:
            return int(text)
        except ValueError:
            log.warning("unreadable offset file %s: starting from the head", self.path)
            return None

    def save(self, seq: int) -> None:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
        os.pwrite(self._fd, f"{seq:>{self.WIDTH}}\n".encode(), 0)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class ConsumerRunner:
    """Runs one consumer: its thread, inbox, offset and counters."""

    def __init__(
        self,
        plugin: str,
        consumer: Consumer,
        store,
        ctx: ConsumerContext,
        offsets_dir: Path,
    ) -> None:
        self.plugin = plugin
        self.consumer = consumer
        self.store = store
        self.ctx = ctx
        self.label = f"{plugin}/{consumer.name}"
        offsets_dir.mkdir(parents=True, exist_ok=True)
        self.offsets = OffsetFile(offsets_dir / f"{plugin}.{consumer.name}.offset")
        self._cond = threading.Condition()
        self._inbox: collections.deque[CommittedBatch] = collections.deque()
        self._inbox_bytes = 0
        self._inbox_limit = getattr(consumer, "inbox_bytes", 64 * 1024 * 1024)
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._errors_seen: set[str] = set()
        self.head = 0
        self.offset = 0
        self._start_offset = 0
        self.behind = False
        self.batches = 0
        self.rows = 0
        self.errors = 0
        self.catch_up_batches = 0
        self.busy_seconds = 0.0
        self.last_error = ""
        # A consumer with ``consume_many(batches, ctx)`` (the built-in topology consumer) is
        # given every batch waiting in its inbox at once: its fixed cost per call, paid per
        # request of 100 items, was most of its cost.
        self._many = getattr(consumer, "consume_many", None)
        self._linger = getattr(consumer, "linger_seconds", _LINGER_SECONDS)

    # -- called from the ingest side -------------------------------------------------------------

    def start(self) -> None:
        head = self.store.last_sequence()
        saved = self.offsets.load()
        # A consumer seen for the first time starts at the head: it is not fed all history.
        self.offset = head if saved is None else min(saved, head)
        self._start_offset = self.offset
        if saved is None:
            self.offsets.save(self.offset)
        self.head = head
        self.behind = self.offset < head
        self._thread = threading.Thread(
            target=self._run, name=f"consumer-{self.label}", daemon=True
        )
        self._thread.start()

    def publish(self, batch: CommittedBatch) -> None:
        """Offer a committed batch; never blocks."""
        with self._cond:
            if batch.seq <= self.head:
                return
            wake = False
            if batch.seq != self.head + 1:
                # A commit was never published (its request was cancelled): read from the store.
                wake = not self.behind
                self.behind = True
                self._clear_inbox()
            self.head = batch.seq
            if batch.signal in self.consumer.signals and not self.behind:
                if (
                    len(self._inbox) >= self.consumer.inbox_size
                    or self._inbox_bytes + batch.nbytes > self._inbox_limit
                ):
                    self.behind = wake = True
                    self._clear_inbox()
                else:
                    # The consumer's thread waits for a first batch, then lingers for more:
                    # waking it for every batch would cut its linger short (and cost a thread
                    # switch per request), so only the first and a full inbox wake it.
                    wake = not self._inbox
                    self._inbox.append(batch)
                    self._inbox_bytes += batch.nbytes
                    wake = wake or self._inbox_full()
            if wake:
                self._cond.notify()

    def _inbox_full(self) -> bool:
        """Enough waiting that lingering for more would risk the inbox's bounds."""
        return len(self._inbox) >= _MANY_BATCHES or self._inbox_bytes * 2 > self._inbox_limit

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _clear_inbox(self) -> None:
        self._inbox.clear()
        self._inbox_bytes = 0

    def inbox_snapshot(self) -> list[CommittedBatch]:
        """The batches waiting in the inbox now (for the memory gauges)."""
        with self._cond:
            return list(self._inbox)

    @property
    def lag(self) -> int:
        """Batches of this consumer's signals still to do (an upper bound while behind)."""
        if self.behind:
            return max(0, self.head - self.offset)
        return len(self._inbox)

    @property
    def state(self) -> str:
        if self._thread is None:
            return "stopped"
        return "behind" if self.behind else "live"

    # -- the consumer's thread ---------------------------------------------------------------

    def _run(self) -> None:
        try:
            self.consumer.start(self.ctx)
        except Exception as exc:
            self._count_error(exc)
        while True:
            with self._cond:
                if not (self._inbox or self.behind or self._stopping):
                    # Idle: wait, then linger so that one wake-up takes several batches.
                    # Per-batch wake-ups of many consumer threads cost ingest GIL time, and a
                    # ``consume_many``'s fixed cost per call is paid per wake-up.
                    while not (self._inbox or self.behind or self._stopping):
                        self._cond.wait()
                    deadline = time.monotonic() + self._linger
                    while not (self._stopping or self.behind or self._inbox_full()):
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(left)
                if self._stopping:
                    break
                if self.behind:
                    target = self.head
                    batches = None
                else:
                    batches = [self._inbox.popleft()]
                    if self._many is not None:
                        while self._inbox and len(batches) < _MANY_BATCHES:
                            batches.append(self._inbox.popleft())
                    self._inbox_bytes -= sum(batch.nbytes for batch in batches)
            try:
                if batches is None:
                    self._catch_up(target)
                else:
                    self._process_all([b for b in batches if b.seq > self.offset])
            except Exception as exc:
                # The store or the offset file failed, not the consumer: count it, then go back
                # to the store from the last saved offset once it may have recovered.
                self._count_error(exc)
                with self._cond:
                    self.behind = True
                    self._clear_inbox()
                    self._cond.wait(_RETRY_SECONDS)
            # The batches are let go here, outside the lock: when this consumer holds the last
            # reference, freeing their buffers (~0.3 µs a span, ~0.6 a metric point) would
            # otherwise keep ``publish`` on the event loop waiting for the lock.
            batches = None
        try:
            self.consumer.stop(self.ctx)
            self._save_offset(self.offset)  # what stop() saved may let the offset move on
        except Exception as exc:
            self._count_error(exc)
        self.offsets.close()

    def _catch_up(self, target: int) -> None:
        while self.offset < target and not self._stopping:
            chunk = _CATCH_UP_CHUNK if self._many is None else _CATCH_UP_MANY
            missed = self.store.read_batches(self.offset, target, self.consumer.signals, chunk)
            if not missed:
                break
            self.catch_up_batches += len(missed)
            self._process_all(missed)
            if self._stopping:
                return
        if self._stopping:
            return  # the offset stays at the last batch really delivered
        with self._cond:
            if self.offset < target:
                self.offset = target
                self._save_offset(target)
            # Anything still queued at or below the target has just been handled from the store.
            while self._inbox and self._inbox[0].seq <= self.offset:
                self._inbox_bytes -= self._inbox.popleft().nbytes
            if self.head <= target or self._inbox:
                self.behind = False

    def _process_all(self, batches: list[CommittedBatch]) -> None:
        if self._many is None or len(batches) == 1:
            for batch in batches:
                self._process(batch)
                if self._stopping:
                    return
            return
        if not batches:
            return
        started = time.perf_counter()
        try:
            self._many(batches, self.ctx)
        except Exception as exc:
            self._count_error(exc)
        self.busy_seconds += time.perf_counter() - started
        self.batches += len(batches)
        self.rows += sum(batch.rows for batch in batches)
        self.offset = batches[-1].seq
        self._save_offset(self.offset)

    def _process(self, batch: CommittedBatch) -> None:
        started = time.perf_counter()
        try:
            self.consumer.consume(batch, self.ctx)
        except Exception as exc:
            self._count_error(exc)
        self.busy_seconds += time.perf_counter() - started
        self.batches += 1
        self.rows += batch.rows
        self.offset = batch.seq
        self._save_offset(batch.seq)

    def _save_offset(self, seq: int) -> None:
        """Save ``seq`` as the offset, but never past what the consumer's saved state includes
        (``Consumer.durable_upto``): a restart after ``kill -9`` delivers those batches again."""
        upto = self.consumer.durable_upto()
        if upto is not None:
            seq = min(seq, max(upto, self._start_offset))
        self.offsets.save(seq)

    def _count_error(self, exc: Exception) -> None:
        self.errors += 1
        kind = type(exc).__name__
        self.last_error = f"{kind}: {exc}"
        if kind not in self._errors_seen:
            self._errors_seen.add(kind)
            log.error(
                "consumer %s failed (%s); further %s errors are only counted",
                self.label,
                self.last_error,
                kind,
                exc_info=exc,
            )
