"""How often each alert source fired before: chronic (flapping) sources tell little.

An alert from a source that has fired again and again over the last hours carries less
information than one from a source that is usually quiet — the idea behind Nagios' flap
detection and the "entropy" of alert-correlation products. The history counts each source's
onsets (by alert key) over a trailing window of event time, leaving out the last minutes so a
fault's own re-firings do not make its source look chronic while the fault is on.
"""

from __future__ import annotations

from collections import deque

__all__ = ["OnsetHistory"]

_SECOND = 1_000_000_000


class OnsetHistory:
    """Onsets per alert key over ``window_seconds``, ignoring the last ``recent_seconds``."""

    def __init__(
        self,
        window_seconds: float = 86_400,
        recent_seconds: float = 900,
        chronic_onsets: int = 3,
    ) -> None:
        self.window_ns = int(window_seconds * _SECOND)
        self.recent_ns = int(recent_seconds * _SECOND)
        self.chronic_onsets = chronic_onsets
        self._onsets: dict[str, deque[int]] = {}

    def record(self, key: str, onset: int) -> None:
        onsets = self._onsets.setdefault(key, deque())
        if onsets and onset < onsets[-1]:
            # Out of order (a late plugin): keep the deque sorted; rare, so a rebuild is fine.
            self._onsets[key] = onsets = deque(sorted([*onsets, onset]))
        else:
            onsets.append(onset)
        while onsets and onsets[0] < onset - self.window_ns:
            onsets.popleft()

    def prior(self, key: str, onset: int) -> int:
        """Onsets of ``key`` in ``[onset - window, onset - recent)``."""
        onsets = self._onsets.get(key)
        if not onsets:
            return 0
        low, high = onset - self.window_ns, onset - self.recent_ns
        return sum(1 for t in onsets if low <= t < high)

    def chronic(self, key: str, onset: int) -> bool:
        return self.chronic_onsets > 0 and self.prior(key, onset) >= self.chronic_onsets

    def weight(self, key: str, onset: int) -> float:
        """1 for a source that has been quiet, falling as 1 / (1 + n / chronic_onsets) with
        its earlier onsets n: a source at the chronic threshold counts half."""
        if self.chronic_onsets <= 0:
            return 1.0
        return 1.0 / (1.0 + self.prior(key, onset) / self.chronic_onsets)

    def forget_before(self, cutoff: int) -> None:
        for key in [k for k, onsets in self._onsets.items() if not onsets or onsets[-1] < cutoff]:
            del self._onsets[key]
