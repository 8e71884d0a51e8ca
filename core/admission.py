"""Admission: a bound, in bytes, on the requests being decoded or awaiting their commit, and a
short, bounded wait for room in it."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable

__all__ = ["Admission"]


class Admission:
    """Counts the bytes of requests in flight and refuses new ones past ``capacity_bytes``.

    Used from the event loop thread only, so it needs no lock. A request larger than the whole
    capacity is still admitted when nothing else is in flight, so that the request size limit,
    not the queue, decides what is too large.

    A request that finds no room may wait for it (:meth:`wait`), in arrival order, for a short
    time, while the bodies waiting stay under ``waiting_capacity_bytes``. A burst larger than
    the queue is then taken as fast as the store drains it, rather than refused and retried in
    lockstep a retry hint later (every client of a burst gets the same hint); refusals are left
    for a backlog that outlasts the wait.
    """

    __slots__ = (
        "_waiters",
        "capacity_bytes",
        "in_flight_bytes",
        "in_flight_requests",
        "on_empty",
        "waiting_bytes",
        "waiting_capacity_bytes",
    )

    def __init__(self, capacity_bytes: int, waiting_capacity_bytes: int | None = None) -> None:
        self.capacity_bytes = capacity_bytes
        self.in_flight_bytes = 0
        self.in_flight_requests = 0
        # A quarter: bodies waiting are not decoded yet, and the memory budget has room for
        # that much beside the queue (docs/configuration.md, "Memory").
        self.waiting_capacity_bytes = (
            capacity_bytes // 4 if waiting_capacity_bytes is None else waiting_capacity_bytes
        )
        self.waiting_bytes = 0
        """Body bytes of the requests waiting for room (held by the receivers meanwhile)."""
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self.on_empty: Callable[[], None] | None = None
        """Called when a release leaves nothing in flight (shutdown waits for that)."""

    @property
    def waiting_requests(self) -> int:
        return len(self._waiters)

    def fits(self, nbytes: int) -> bool:
        return not self.in_flight_requests or self.in_flight_bytes + nbytes <= self.capacity_bytes

    def try_acquire(self, nbytes: int) -> bool:
        # Requests waiting go first: a newcomer taking the room they wait for would starve them.
        if self._waiters or not self.fits(nbytes):
            return False
        self.take(nbytes)
        return True

    def can_wait(self, body_bytes: int) -> bool:
        """Whether a request of this body size may wait for room (at least one may, whatever
        its size, as at least one may be in flight)."""
        return not self._waiters or self.waiting_bytes + body_bytes <= self.waiting_capacity_bytes

    async def wait(self, nbytes: int, body_bytes: int, timeout: float) -> bool:
        """Wait, behind the requests already waiting, until ``nbytes`` fit; acquire them and
        return True, or return False after ``timeout`` seconds with nothing acquired."""
        waiter = _Waiter(nbytes, body_bytes, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        self.waiting_bytes += body_bytes
        self._admit_waiters()  # room may have come since the caller's try
        try:
            await asyncio.wait_for(asyncio.shield(waiter.admitted), timeout)
        except TimeoutError:
            if waiter.admitted.done():
                return True  # admitted as the time ran out: it holds the bytes now
            self._drop(waiter)
            return False
        except asyncio.CancelledError:
            if waiter.admitted.done():
                self.release(nbytes)  # admitted, but nobody is left to use the bytes
            else:
                self._drop(waiter)
            raise
        return True

    def release(self, nbytes: int) -> None:
        self.in_flight_bytes -= nbytes
        self.in_flight_requests -= 1
        if self._waiters:
            self._admit_waiters()
        if self.in_flight_requests == 0 and self.on_empty is not None:
            self.on_empty()

    def adjust(self, delta: int) -> None:
        """Change the bytes an admitted request holds (its charge trued up once decoded)."""
        self.in_flight_bytes += delta
        if delta < 0 and self._waiters:
            self._admit_waiters()

    def take(self, nbytes: int) -> None:
        """Count a request in flight without the bound: one already acknowledged (replayed
        from the ingest log at start-up) is loaded whatever the queue holds."""
        self.in_flight_bytes += nbytes
        self.in_flight_requests += 1

    def _admit_waiters(self) -> None:
        waiters = self._waiters
        while waiters and self.fits(waiters[0].nbytes):
            waiter = waiters.popleft()
            self.waiting_bytes -= waiter.body_bytes
            self.take(waiter.nbytes)
            waiter.admitted.set_result(None)

    def _drop(self, waiter: _Waiter) -> None:
        self._waiters.remove(waiter)
        self.waiting_bytes -= waiter.body_bytes
        # The head may have been what held the others back (FIFO): let those that fit go.
        self._admit_waiters()


class _Waiter:
    __slots__ = ("admitted", "body_bytes", "nbytes")

    def __init__(self, nbytes: int, body_bytes: int, admitted: asyncio.Future[None]) -> None:
        self.nbytes = nbytes
        self.body_bytes = body_bytes
        self.admitted = admitted
