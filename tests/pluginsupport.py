"""What tests of plugins share: the sample plugin's source, an environment that finds it once
pip-installed, waiting for a condition, a local webhook receiver, and a transaction holding the
mlops progress row."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

SAMPLE = Path(__file__).parent / "sample_plugin"


def plugin_env(site: Path) -> dict[str, str]:
    """Environment for a server that loads the plugins installed into ``site``."""
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def wait_for(condition: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


class Webhook:
    """A local HTTP server that records what the webhook notifier posts."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                outer.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def changes(self) -> list[str]:
        return [json.loads(body)["change"] for _, body in self.received]


def topology_rows_consumed(server: Any) -> float:
    """Rows the incident engine's topology consumer has taken, from the server's metrics."""
    text = server.api("/metrics").text
    found = re.search(
        r'^opstrata_consumer_rows_total\{consumer="[^"]*topology"\} (\S+)$', text, re.M
    )
    return float(found.group(1)) if found else 0.0


class ProgressRowHeld:
    """Another cursor's open transaction that changed the mlops progress row (as a prune on the
    API thread can hold one): the consumer's UPDATE of it conflicts until ``release``."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self._release, self._holding = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._hold)

    def _hold(self) -> None:
        cursor = self._store.reader()
        cursor.begin()
        cursor.execute("UPDATE mlops_progress SET seq = seq WHERE consumer = 'models'")
        self._holding.set()
        self._release.wait(60)
        cursor.rollback()

    def hold(self) -> None:
        """Start the transaction; return once it holds the row."""
        self._thread.start()
        assert self._holding.wait(10)

    def release(self) -> None:
        """End the transaction (harmless when it was never started or is already over)."""
        self._release.set()
        if self._thread.is_alive():
            self._thread.join()
