"""Admission: a bound, in bytes, on the requests being decoded or awaiting their commit."""

from __future__ import annotations

__all__ = ["Admission"]


class Admission:
    """Counts the bytes of requests in flight and refuses new ones past ``capacity_bytes``.

    Used from the event loop thread only, so it needs no lock. A request larger than the whole
    capacity is still admitted when nothing else is in flight, so that the request size limit,
    not the queue, decides what is too large.
    """

    __slots__ = ("capacity_bytes", "in_flight_bytes", "in_flight_requests")

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self.in_flight_bytes = 0
        self.in_flight_requests = 0

    def try_acquire(self, nbytes: int) -> bool:
        if self.in_flight_requests and self.in_flight_bytes + nbytes > self.capacity_bytes:
            return False
        self.in_flight_bytes += nbytes
        self.in_flight_requests += 1
        return True

    def release(self, nbytes: int) -> None:
        self.in_flight_bytes -= nbytes
        self.in_flight_requests -= 1
