"""The ingest log: request bodies appended to segment files and group-fsynced before the ack.

An acknowledged request is durable once its record is in the log; the store loads the decoded
batches behind it, in commits as large as the backlog allows (a large DuckDB commit costs about
half as much per row as a small one, see docs/performance.md), and records the log position it
has loaded in the same transaction. After a crash the server replays the records past that
position, so every acknowledged item ends up in the store exactly once.

A record is the request body exactly as it was decoded (decompressed protobuf or JSON): the
cheapest thing to write (no serialisation, ~370 bytes per span against ~920 as Arrow IPC), and
decoding is deterministic, so a replay rebuilds the same rows. Positions are byte offsets in one
endless stream; a segment file is named by the position of its first byte and deleted once the
store has loaded all of it.

Record layout (little-endian): ``b"OSL1"``, CRC-32 of the rest, payload length (u32), signal
code (u8), encoding code (u8), two zero bytes, the payload. A record that is cut short or fails
its CRC ends the log: it was never acknowledged (the ack waits for the fsync that covers it).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["IngestLog", "LogRecord"]

log = logging.getLogger(__name__)

_MAGIC = b"OSL1"
_HEADER = struct.Struct("<4sIIBBxx")
_SUFFIX = ".seg"
_IOV_MAX = 1000  # parts per writev (Linux takes at most 1024)


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One request read back from the log: ``end`` is the position just after it."""

    end: int
    signal: int
    encoding: int
    body: bytes


def _segment_name(start: int) -> str:
    return f"{start:020d}{_SUFFIX}"


def _header(payload: bytes, signal: int, encoding: int) -> bytes:
    crc = zlib.crc32(bytes((signal, encoding)))
    crc = zlib.crc32(payload, crc)
    return _HEADER.pack(_MAGIC, crc, len(payload), signal, encoding)


def _settle_future(future: asyncio.Future[None], error: OSError | None) -> None:
    if future.done():  # the waiter was cancelled
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def _records(data: bytes, start: int) -> Iterator[tuple[int, int, LogRecord]]:
    """(offset in ``data``, end offset, record) of the whole records at the front of ``data``."""
    offset = 0
    size = _HEADER.size
    while offset + size <= len(data):
        magic, crc, length, signal, encoding = _HEADER.unpack_from(data, offset)
        end = offset + size + length
        if magic != _MAGIC or end > len(data):
            return
        payload = data[offset + size : end]
        if zlib.crc32(payload, zlib.crc32(bytes((signal, encoding)))) != crc:
            return
        yield offset, end, LogRecord(start + end, signal, encoding, payload)
        offset = end


class IngestLog:
    """Append (event loop thread), write and group fsync (a syncer thread), replay and trim.

    ``append`` only queues the body and hands out its position; the syncer thread computes the
    records' CRCs, writes every record queued meanwhile with one ``writev`` and fsyncs them, so
    the event loop pays neither the CRC (~20 µs for a 37 KiB request) nor a write syscall per
    request (both release the GIL in the syncer). ``wait_synced`` / ``when_synced`` wait for
    the fsync that covers a position, shared by every request appended meanwhile: durability
    against an OS crash costs one write and one fsync per burst. Nothing is acknowledged before
    its fsync, so a record still queued at a crash was never acknowledged.
    """

    def __init__(
        self,
        directory: Path,
        segment_bytes: int = 64 * 1024 * 1024,
        sync_interval: float = 0.005,
    ) -> None:
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        self.sync_interval = sync_interval
        """Least time between the starts of two fsyncs. An ``fdatasync`` costs ~150-200 µs of
        CPU here; back to back under load they took 2-6 µs of CPU per span. When idle the
        fsync starts at once; under load an acknowledgement waits at most this much longer."""
        self.appended = 0
        """Position after the last appended record."""
        self.synced = 0
        """Position up to which the log is fsynced."""
        self._segments: collections.deque[int] = collections.deque()  # start positions
        self._fd: int | None = None
        self._segment_start = 0
        self._written = 0  # position after the last record written (by the syncer)
        self._queued: list[tuple[int, int, bytes]] = []  # (signal, encoding, body), not written
        self._dirty: list[int] = []  # fds written since the last fsync (the current one last)
        self._retired: list[int] = []  # fds of full segments, closed once fsynced
        self._new_segment = False
        self._lock = threading.Lock()  # appended, _queued
        self._io_lock = threading.Lock()  # the files: fds, _segments, _written
        self._wake = threading.Condition(self._lock)
        self._waiters: collections.deque[tuple[int, Callable[[OSError | None], None]]] = (
            collections.deque()
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closing = False
        self.fsyncs = 0
        self.error: OSError | None = None

    # -- opening and replay --------------------------------------------------------------------

    def open(self, loaded: int) -> list[LogRecord]:
        """Open the log whose records up to position ``loaded`` are in the store; return the
        records after it (to load again), drop fully loaded segments and cut a torn tail."""
        self.directory.mkdir(parents=True, exist_ok=True)
        starts = sorted(
            int(path.name[: -len(_SUFFIX)])
            for path in self.directory.glob("*" + _SUFFIX)
            if path.name[: -len(_SUFFIX)].isdigit()
        )
        pending: list[LogRecord] = []
        end = 0
        for index, start in enumerate(starts):
            path = self.directory / _segment_name(start)
            data = path.read_bytes()
            good = 0
            for _, record_end, record in _records(data, start):
                good = record_end
                if record.end > loaded:
                    pending.append(record)
            if good < len(data):
                # A record cut short by a crash: never acknowledged. Later segments cannot
                # exist without this one having been complete, but drop any to be sure.
                log.warning("ingest log: cutting %d torn bytes off %s", len(data) - good, path)
                with open(path, "r+b") as handle:
                    handle.truncate(good)
                    os.fsync(handle.fileno())
                for later in starts[index + 1 :]:
                    (self.directory / _segment_name(later)).unlink()
                starts = starts[: index + 1]
                end = start + good
                break
            end = start + good
        self._segments.extend(starts)
        # The store may have loaded past the log's end (the log's tail lost in an OS crash
        # after the store's own commit): never hand out a loaded position twice.
        self.appended = self.synced = self._written = max(end, loaded)
        self.trim(loaded)
        self._open_segment(self.appended)
        return pending

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._sync_loop, name="ingest-log-sync", daemon=True)
        self._thread.start()

    def _open_segment(self, start: int) -> None:
        """Continue the last segment when it ends at ``start`` and has room, else begin one."""
        if self._segments:
            last = self._segments[-1]
            path = self.directory / _segment_name(last)
            size = path.stat().st_size
            if last + size == start and size < self.segment_bytes:
                self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
                self._segment_start = last
                return
        self._fd = os.open(
            self.directory / _segment_name(start), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644
        )
        self._segment_start = start
        self._segments.append(start)
        self._new_segment = True

    # -- appending (event loop thread) -----------------------------------------------------------

    def append(self, signal: int, encoding: int, body: bytes) -> int:
        """Queue one record for the syncer to write; return the position after it. Raises
        ``OSError`` once the disk has refused a write (the request is then not acknowledged)."""
        if self.error is not None:
            raise self.error
        with self._lock:
            self._queued.append((signal, encoding, body))
            self.appended += _HEADER.size + len(body)
            self._wake.notify()
            return self.appended

    async def wait_synced(self, position: int) -> None:
        """Return once the log is fsynced up to ``position``."""
        if self.synced >= position:
            return
        if self.error is not None:
            raise self.error
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((position, functools.partial(_settle_future, future)))
        await future

    def when_synced(self, position: int, callback: Callable[[OSError | None], None]) -> None:
        """Call ``callback(None)`` on the event loop once the log is fsynced up to
        ``position`` (at once if it is), or ``callback(error)`` if the write or fsync failed:
        ``wait_synced`` without a future and a task per request."""
        if self.synced >= position:
            callback(None)
        elif self.error is not None:
            callback(self.error)
        else:
            self._waiters.append((position, callback))

    # -- writing (the syncer thread; ``record_at`` and ``close`` too, under ``_io_lock``) -------

    def _write_queued(self) -> int:
        """Write the queued records in order, starting a new segment where one is full; return
        the position written up to. Raises ``OSError`` (also for a short write: what follows
        would not parse)."""
        # The files' lock is taken before the queue is: a writer (the syncer, or ``record_at``
        # in the store's writer thread) that has taken records off the queue writes them
        # before any other writer can take the records queued after them. Swapping first and
        # writing later let a second writer overtake the first, so records landed at positions
        # other than those ``append`` handed out, and the syncer could fsync and acknowledge
        # a position whose records another thread had yet to write. (``append`` takes only
        # ``_lock``; nobody takes ``_io_lock`` while holding ``_lock``: no deadlock.)
        with self._io_lock:
            if self.error is not None:
                raise self.error
            with self._lock:
                queued, self._queued = self._queued, []
                upto = self.appended
            if not queued:
                return upto
            try:
                self._write(queued)
            except OSError as exc:
                # The queue taken is lost with this write: no later write may follow it (its
                # positions would be wrong) nor any fsync acknowledge it, in whichever thread.
                self.error = self.error or exc
                raise
        return upto

    def _write(self, queued: list[tuple[int, int, bytes]]) -> None:
        parts: list[bytes] = []
        for signal, encoding, body in queued:
            if self._written - self._segment_start >= self.segment_bytes:
                self._flush(parts)
                assert self._fd is not None
                self._retired.append(self._fd)
                self._open_segment(self._written)
            parts.append(_header(body, signal, encoding))
            parts.append(body)
            self._written += _HEADER.size + len(body)
            if len(parts) >= _IOV_MAX:
                self._flush(parts)
        self._flush(parts)

    def _flush(self, parts: list[bytes]) -> None:
        if not parts:
            return
        fd = self._fd
        assert fd is not None
        expected = sum(map(len, parts))
        written = os.writev(fd, parts)
        parts.clear()
        if written != expected:
            # A torn record (a full disk): refuse this request and every later one; the next
            # start cuts the tail.
            raise OSError(f"ingest log: short write ({written} of {expected} bytes)")
        if not self._dirty or self._dirty[-1] != fd:
            self._dirty.append(fd)

    # -- the syncer thread ---------------------------------------------------------------------

    def _sync_loop(self) -> None:
        last_start = 0.0
        while True:
            with self._lock:
                while self.appended == self.synced and not self._closing:
                    self._wake.wait()
                if self.appended == self.synced and self._closing:
                    return
            delay = last_start + self.sync_interval - time.monotonic()
            if delay > 0 and not self._closing:
                time.sleep(delay)  # more requests join this write and fsync meanwhile
            last_start = time.monotonic()
            error: OSError | None = None
            target = self.synced
            try:
                target = self._write_queued()
            except OSError as exc:
                error = exc
            with self._io_lock:
                dirty, self._dirty = self._dirty, []
                retired, self._retired = self._retired, []
                new_segment, self._new_segment = self._new_segment, False
            try:
                for fd in dirty:
                    os.fdatasync(fd)
                if new_segment:
                    # A new file's name must be durable too, not only its bytes.
                    dir_fd = os.open(self.directory, os.O_RDONLY)
                    try:
                        os.fsync(dir_fd)
                    finally:
                        os.close(dir_fd)
            except OSError as exc:
                error = error or exc
            for fd in retired:
                os.close(fd)
            self.fsyncs += 1
            if error is not None:
                log.error("ingest log: %s; refusing further requests", error)
                self.error = error
            else:
                self.synced = target
            self._notify()
            if error is not None:
                return

    def _notify(self) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(self._settle)

    def _settle(self) -> None:
        # Waiters are in append order, hence in position order.
        waiters = self._waiters
        synced, error = self.synced, self.error
        while waiters:
            position, callback = waiters[0]
            if position <= synced:
                outcome = None
            elif error is not None:
                outcome = error
            else:
                break
            waiters.popleft()
            try:
                callback(outcome)
            except Exception:
                # One waiter's failure (a reply that cannot be sent) must not leave the
                # others unsettled: nothing would settle them until the next fsync, if any.
                log.exception("ingest log: a waiter for position %d failed", position)

    # -- held records (loads the store refused) --------------------------------------------------

    def record_at(self, end: int) -> LogRecord | None:
        """The record ending at ``end``, read back from its segment (None if trimmed away).
        Only for the rare load the store refuses: it reads the whole segment."""
        with contextlib.suppress(OSError):  # the record may still be queued: write it now
            self._write_queued()
        with self._io_lock:
            return self._record_at(end)

    def _record_at(self, end: int) -> LogRecord | None:
        starts = [start for start in self._segments if start < end]
        if not starts:
            return None
        start = starts[-1]
        try:
            data = (self.directory / _segment_name(start)).read_bytes()
        except FileNotFoundError:
            return None
        for _, _, record in _records(data, start):
            if record.end == end:
                return record
        return None

    @property
    def held_directory(self) -> Path:
        return self.directory / "held"

    def hold(self, record: LogRecord) -> Path:
        """Copy a record the store refused to ``held/<end>.osl`` and fsync it, so trimming the
        log (and the store's position moving past it) cannot lose it. Raises ``OSError``."""
        directory = self.held_directory
        directory.mkdir(exist_ok=True)
        path = directory / f"{record.end:020d}.osl"
        temporary = path.with_suffix(".tmp")
        with open(temporary, "wb") as handle:
            handle.write(_header(record.body, record.signal, record.encoding))
            handle.write(record.body)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return path

    def held(self) -> list[LogRecord]:
        """The held records (in position order): loads refused before, to retry."""
        directory = self.held_directory
        if not directory.is_dir():
            return []
        found = []
        for path in sorted(directory.glob("*.osl")):
            if not path.stem.isdigit():
                continue
            for _, _, record in _records(path.read_bytes(), 0):
                found.append(LogRecord(int(path.stem), record.signal, record.encoding, record.body))
                break
            else:
                log.error("ingest log: held record %s is unreadable; left in place", path)
        return found

    def release_held(self, end: int) -> None:
        """Delete a held record once the store has loaded it."""
        with contextlib.suppress(FileNotFoundError):
            (self.held_directory / f"{end:020d}.osl").unlink()

    # -- trimming and closing --------------------------------------------------------------------

    def trim(self, loaded: int) -> None:
        """Delete the segments the store has loaded completely (never the one being written)."""
        segments = self._segments
        if len(segments) < 2 or segments[1] > loaded:
            return  # the usual case, per load: nothing to delete, no lock taken
        with self._io_lock:
            while len(segments) > 1 and segments[1] <= loaded:
                start = segments.popleft()
                with contextlib.suppress(FileNotFoundError):
                    (self.directory / _segment_name(start)).unlink()

    def close(self) -> None:
        """fsync what is left and stop the syncer."""
        with self._lock:
            self._closing = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None
        if self._queued and self.error is None:
            # Never started (or stopped early): what is queued still goes to the files.
            with contextlib.suppress(OSError):
                self._write_queued()
                for fd in self._dirty:
                    os.fdatasync(fd)
        for fd in self._retired:
            os.close(fd)
        self._retired = []
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
