"""Arrow's memory pool runs with the purge delay in the server's environment, and says so.

mimalloc reads its options when pyarrow loads; ``MIMALLOC_VERBOSE=1`` makes it print the
options it read, so these tests see the allocator's own account, not only the environment.
opstrata sets nothing itself: the measurements did not pay for it (docs/configuration.md,
"Memory"; docs/performance.md, "Ingest, ninth round").
"""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pytest
from opentelemetry.sdk.trace.export import SpanExportResult

from tests.otelsdk import make_spans, span_exporter
from tests.serverproc import ServerProcess

MIMALLOC = pa.default_memory_pool().backend_name == "mimalloc"
POOL_VARIABLES = ("MIMALLOC_PURGE_DELAY", "MIMALLOC_RESET_DELAY", "ARROW_DEFAULT_MEMORY_POOL")


def _start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **pool: str) -> ServerProcess:
    """A server whose environment holds exactly ``pool`` of the pool variables, and has
    mimalloc report the options it reads."""
    for name in POOL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in {**pool, "MIMALLOC_VERBOSE": "1"}.items():
        monkeypatch.setenv(name, value)
    return ServerProcess(tmp_path / "data").start()


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
    """The server takes data with the setting as without."""

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
def test_a_users_purge_delay_reaches_the_pool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = _start(tmp_path, monkeypatch, MIMALLOC_PURGE_DELAY="250")
    try:
        assert _environ(server.proc.pid)["MIMALLOC_PURGE_DELAY"] == "250"
        info = _pool_info(server)
        assert info["backend"] == pa.default_memory_pool().backend_name
        if MIMALLOC:
            assert info["purge_delay_ms"] == "250"
            assert _purge_delays_read(server) == ["250"]  # mimalloc's own account, read once
        _store_spans(server)
    finally:
        assert server.stop() == 0


def test_without_a_setting_the_pool_keeps_its_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = _start(tmp_path, monkeypatch)
    try:
        info = _pool_info(server)
        assert info["backend"] == pa.default_memory_pool().backend_name
        if MIMALLOC:
            assert info["purge_delay_ms"] == "default"
            delays = _purge_delays_read(server)
            assert len(delays) == 1 and delays[0] != "250", delays  # started once, not re-run
    finally:
        assert server.stop() == 0
