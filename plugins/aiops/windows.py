"""Event-time windows: which windows are complete, given the event time seen so far."""

from __future__ import annotations

__all__ = ["EventClock"]


class EventClock:
    """Windows of ``width_ns``; a window closes once event time has passed its end by
    ``lateness`` widths. Event time is the highest batch median seen (as the kernel's clock
    does), so one item from a skewed clock cannot close windows early."""

    def __init__(self, width_ns: int, lateness: int) -> None:
        self.width = width_ns
        self.lateness = lateness
        self.now = 0

    def advance(self, batch_median_ns: int) -> None:
        self.now = max(self.now, batch_median_ns)

    def closable(self, open_windows: list[int]) -> list[int]:
        """The open windows (indices) that are complete, oldest first."""
        limit = self.now // self.width - self.lateness
        return sorted(w for w in open_windows if w < limit)

    def accepts(self, window: int) -> bool:
        """False for data of a window already closed (it arrived too late)."""
        return window >= self.now // self.width - self.lateness
