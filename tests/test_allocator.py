"""``opstrata serve`` runs with Arrow's pool settings (opstrata.allocator), or the user's own.

mimalloc reads its options when pyarrow loads; ``MIMALLOC_VERBOSE=1`` makes it print the
options it read, so these tests see the allocator's own account, not only the environment.
"""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pytest
from opentelemetry.sdk.trace.export import SpanExportResult

from opstrata.allocator import POOL_ENV
from tests.otelsdk import make_spans, span_exporter
from tests.serverproc import ServerProcess

MIMALLOC = pa.default_memory_pool().backend_name == "mimalloc"
DEFAULT_DELAY = POOL_ENV["MIMALLOC_PURGE_DELAY"]


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def _pool_info(server: ServerProcess) -> dict[str, str]:
    text = server.api("/metrics").text
    found = re.search(r"^opstrata_arrow_memory_pool_info\{([^}]*)\} 1\.0$", text, re.M)
    assert found, "no opstrata_arrow_memory_pool_info on /metrics"
    return dict(re.findall(r'(\w+)="([^"]*)"', found[1]))


def _purge_delays_read(server: ServerProcess) -> list[str]:
    """The purge delays mimalloc reported reading, in order (one per start of the process)."""
    return re.findall(r"option 'purge_delay': (\d+)", "".join(server.output))


def _store_spans(server: ServerProcess) -> None:
    """The re-executed server takes data like any other."""

    def build(tracer) -> None:
        for i in range(50):
            with tracer.start_as_current_span(f"pool-{i}"):
                pass

    spans = make_spans("allocator", build)
    exporter = span_exporter(server, "http")
    assert exporter.export(spans) == SpanExportResult.SUCCESS
    exporter.shutdown()
    trace_id = format(spans[0].context.trace_id, "032x")
    reply = server.api(f"/api/v1/traces/{trace_id}")
    assert reply.status_code == 200
    assert len(reply.json()["spans"]) == 1


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_serve_sets_the_pool_settings_it_lacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("MIMALLOC_PURGE_DELAY", "MIMALLOC_RESET_DELAY", "ARROW_DEFAULT_MEMORY_POOL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MIMALLOC_VERBOSE", "1")
    server = ServerProcess(tmp_path / "data").start()
    try:
        # The process the test started (the same pid after exec) runs with the setting.
        assert _environ(server.proc.pid)["MIMALLOC_PURGE_DELAY"] == DEFAULT_DELAY
        info = _pool_info(server)
        assert info["backend"] == pa.default_memory_pool().backend_name
        if MIMALLOC:
            assert info["purge_delay_ms"] == DEFAULT_DELAY
            # mimalloc's own account: first its default (before the re-execution), then ours.
            delays = _purge_delays_read(server)
            assert len(delays) == 2 and delays[-1] == DEFAULT_DELAY, delays
        _store_spans(server)
    finally:
        assert server.stop() == 0


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("name", ["MIMALLOC_PURGE_DELAY", "MIMALLOC_RESET_DELAY"])
def test_a_users_own_setting_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    for other in ("MIMALLOC_PURGE_DELAY", "MIMALLOC_RESET_DELAY", "ARROW_DEFAULT_MEMORY_POOL"):
        monkeypatch.delenv(other, raising=False)
    monkeypatch.setenv(name, "250")
    monkeypatch.setenv("MIMALLOC_VERBOSE", "1")
    server = ServerProcess(tmp_path / "data").start()
    try:
        environ = _environ(server.proc.pid)
        assert environ[name] == "250"
        if name != "MIMALLOC_PURGE_DELAY":  # the older name counts as set: nothing added
            assert "MIMALLOC_PURGE_DELAY" not in environ
        if MIMALLOC:
            assert _pool_info(server)["purge_delay_ms"] == "250"
            assert _purge_delays_read(server) == ["250"]  # read once: no re-execution
    finally:
        assert server.stop() == 0
