"""Acknowledged data survives ``kill -9``; a graceful stop flushes and exits 0."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.serverproc import ServerProcess
from tests.storeread import read_table


def _request(trace_id: bytes, spans: int) -> bytes:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    attr = resource_spans.resource.attributes.add()
    attr.key, attr.value.string_value = "service.name", "durable"
    scope_spans = resource_spans.scope_spans.add()
    for _ in range(spans):
        span = scope_spans.spans.add()
        span.trace_id = trace_id
        span.span_id = random.randbytes(8)
        span.name = "work"
        span.start_time_unix_nano = time.time_ns()
        span.end_time_unix_nano = span.start_time_unix_nano + 1000
        kv = span.attributes.add()
        kv.key, kv.value.string_value = "payload", "x" * 200
    return request.SerializeToString()


def _send_until_stopped(base: str, acked: dict[str, int], stop: threading.Event) -> None:
    with httpx.Client(timeout=10) as client:
        while not stop.is_set():
            trace_id = random.randbytes(16)
            try:
                reply = client.post(
                    base + "/v1/traces",
                    content=_request(trace_id, 50),
                    headers={"content-type": "application/x-protobuf"},
                )
            except httpx.HTTPError:
                return  # the server is gone
            if reply.status_code == 200:
                partial = ExportTraceServiceResponse.FromString(reply.content).partial_success
                assert partial.rejected_spans == 0
                acked[trace_id.hex()] = 50


def test_acknowledged_spans_survive_kill_9(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = ServerProcess(data_dir).start()
    acked: dict[str, int] = {}
    stop = threading.Event()
    senders = [
        threading.Thread(target=_send_until_stopped, args=(first.http_base, acked, stop))
        for _ in range(4)
    ]
    for sender in senders:
        sender.start()
    deadline = time.monotonic() + 30
    while len(acked) < 60 and time.monotonic() < deadline:
        time.sleep(0.05)
    first.kill()  # SIGKILL while requests are in flight
    stop.set()
    for sender in senders:
        sender.join(30)
    assert len(acked) >= 60, "too few acknowledged requests before the kill"

    second = ServerProcess(data_dir).start()
    assert second.stop() == 0
    stored: dict[str, int] = {}
    for row in read_table(data_dir, "otel_traces", "WHERE ServiceName = 'durable'"):
        stored[row["TraceId"]] = stored.get(row["TraceId"], 0) + 1
    missing = {t: n for t, n in acked.items() if stored.get(t) != n}
    assert not missing, f"{len(missing)} acknowledged traces lost or incomplete"


def _committed_spans(server: ServerProcess) -> float:
    for line in server.api("/metrics").text.splitlines():
        if line.startswith('opstrata_committed_items_total{signal="spans"}'):
            return float(line.split()[-1])
    return 0.0


def test_kill_9_while_loading_replays_the_log_exactly_once(tmp_path: Path) -> None:
    """Acknowledged but not yet loaded into the store when killed: the restart loads them from
    the ingest log, each exactly once (the loaded log position commits with the rows)."""
    data_dir = tmp_path / "data"
    # One request per store commit: loading falls far behind the acknowledgements.
    env = {"OPSTRATA_STORAGE__COMMIT_MAX_ROWS": "1"}
    first = ServerProcess(data_dir, env=env).start()
    acked: dict[str, int] = {}
    stop = threading.Event()
    senders = [
        threading.Thread(target=_send_until_stopped, args=(first.http_base, acked, stop))
        for _ in range(12)
    ]
    for sender in senders:
        sender.start()
    deadline = time.monotonic() + 30
    while len(acked) < 150 and time.monotonic() < deadline:
        time.sleep(0.05)
    acked_before = sum(acked.values())
    committed = _committed_spans(first)
    first.kill()
    stop.set()
    for sender in senders:
        sender.join(30)
    assert len(acked) >= 150, "too few acknowledged requests before the kill"
    assert committed < acked_before, "the kill must come while acknowledged spans await loading"

    second = ServerProcess(data_dir).start()
    assert second.stop() == 0
    assert "ingest log: loading" in "".join(second.output)
    stored: dict[str, int] = {}
    for row in read_table(data_dir, "otel_traces", "WHERE ServiceName = 'durable'"):
        stored[row["TraceId"]] = stored.get(row["TraceId"], 0) + 1
    missing = {t: n for t, n in acked.items() if stored.get(t, 0) < n}
    doubled = {t: n for t, n in stored.items() if n != 50}
    assert not missing, f"{len(missing)} acknowledged traces lost or incomplete"
    assert not doubled, f"{len(doubled)} traces stored more than once or in part"
    # What the store has loaded, the log no longer holds (beyond the segment being written).
    assert len(list((data_dir / "ingest-log").glob("*.seg"))) == 1


def test_sigterm_flushes_and_exits_zero(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data").start()
    trace_id = random.randbytes(16)
    reply = httpx.post(
        server.http_base + "/v1/traces",
        content=_request(trace_id, 10),
        headers={"content-type": "application/x-protobuf"},
    )
    assert reply.status_code == 200
    assert server.stop() == 0
    assert "opstrata: stopped" in "".join(server.output)
    rows = read_table(tmp_path / "data", "otel_traces", "WHERE TraceId = ?", [trace_id.hex()])
    assert len(rows) == 10


def _children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in found.stdout.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text()


_WITH_WORKER = {"OPSTRATA_INGEST__DECODE_WORKERS": "1"}


def test_decode_workers_do_not_outlive_a_killed_server(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", env=_WITH_WORKER).start()
    assert server.proc is not None
    workers = _children(server.proc.pid)
    assert workers, "decode_workers = 1 starts a decode worker process"
    server.kill()
    deadline = time.monotonic() + 15
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(w) for w in workers)


def test_shutdown_does_not_hang_on_a_dead_decode_worker(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", env=_WITH_WORKER).start()
    assert server.proc is not None
    workers = _children(server.proc.pid)
    assert workers
    for worker in workers:
        os.kill(worker, signal.SIGKILL)
    assert server.stop(timeout=60) == 0


def test_ingest_recovers_when_a_decode_worker_dies(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", env=_WITH_WORKER).start()
    try:
        assert server.proc is not None
        workers = _children(server.proc.pid)
        assert workers
        for worker in workers:
            os.kill(worker, signal.SIGKILL)
        statuses = []
        for _ in range(5):
            reply = httpx.post(
                server.http_base + "/v1/logs",
                content=b"{}",
                headers={"content-type": "application/json"},
                timeout=30,
            )
            statuses.append(reply.status_code)
        # At most the request that found the dead worker is refused, as "retry later".
        assert statuses.count(503) <= 1 and statuses[-1] == 200, statuses
    finally:
        assert server.stop() == 0
