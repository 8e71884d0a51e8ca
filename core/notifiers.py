"""Notifiers: told of every new or changed incident, each behind its own bounded queue."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from typing import Protocol, runtime_checkable

from opstrata.alerts import IncidentChange

__all__ = ["Notifier", "NotifierRunner"]

log = logging.getLogger(__name__)


@runtime_checkable
class Notifier(Protocol):
    """Delivers incident changes somewhere (a webhook, a chat, a pager).

    ``notify`` runs in the notifier's own thread and may block (retries, back-off); raising
    counts a failed delivery and moves on to the next change.
    """

    name: str

    def notify(self, change: IncidentChange) -> None: ...


class NotifierRunner:
    """One notifier's thread and queue. A full queue drops the oldest change, counted."""

    def __init__(self, plugin: str, notifier: Notifier, capacity: int = 1000) -> None:
        self.plugin = plugin
        self.notifier = notifier
        self.label = f"{plugin}/{notifier.name}"
        self._queue: queue.Queue[IncidentChange | None] = queue.Queue(capacity)
        self._thread: threading.Thread | None = None
        self.delivered = 0
        self.failed = 0
        self.dropped = 0

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"notifier-{self.label}", daemon=True
        )
        self._thread.start()

    def submit(self, change: IncidentChange) -> None:
        while True:
            try:
                self._queue.put_nowait(change)
                return
            except queue.Full:
                # Make room by dropping the oldest change: the newest state matters most.
                with contextlib.suppress(queue.Empty):
                    self._queue.get_nowait()
                    self.dropped += 1

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is None:
            return
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)
        self._thread = None

    def _run(self) -> None:
        while True:
            change = self._queue.get()
            if change is None:
                return
            try:
                self.notifier.notify(change)
                self.delivered += 1
            except Exception as exc:
                self.failed += 1
                log.warning("notifier %s failed: %s", self.label, exc)
