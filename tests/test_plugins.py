"""A third-party plugin, pip-installed, sees the stream, raises alerts that become incidents,
answers on its route; consumers are isolated, bounded, and resume exactly after restarts.

The plugin is ``tests/sample_plugin``, installed into its own directory by the ``sample_site``
fixture (``tests/conftest.py``)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace.export import SpanExportResult

from tests.otelsdk import make_spans, span_exporter
from tests.pluginsupport import Webhook, plugin_env, wait_for
from tests.serverproc import ServerProcess
from tests.test_bad_input import PROTOBUF, _spans

SECRET = "hush"


def _metric(server: ServerProcess, name: str, label: str) -> float:
    for line in server.api("/metrics").text.splitlines():
        if line.startswith(f'{name}{{consumer="{label}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_installed_plugin_sees_batches_raises_incident_and_serves_route(
    tmp_path: Path, sample_site: Path, webhook: Webhook
) -> None:
    config = tmp_path / "opstrata.toml"
    notify_file = tmp_path / "changes.jsonl"
    config.write_text(
        f'[plugins.webhook]\nurl = "{webhook.url}"\nsecret = "{SECRET}"\n'
        f'[plugins.sample]\nnotify_file = "{notify_file}"\n'
        # One alert, one incident at once (confirming lone alerts: test_incidents.py).
        "[incidents]\nconfirm_seconds = 0\n"
    )
    env = plugin_env(sample_site)
    server = ServerProcess(tmp_path / "data", env=env, config_file=config).start()
    try:

        def build(tracer) -> None:
            for i in range(5):
                with tracer.start_as_current_span(f"GET /item/{i}") as span:
                    if i == 3:
                        span.set_attribute("sample.alert", True)

        spans = make_spans("shop", build)
        exporter = span_exporter(server, "grpc")
        assert exporter.export(spans) is SpanExportResult.SUCCESS
        exporter.shutdown()

        assert wait_for(lambda: server.api("/api/v1/sample/counts").json().get("shop") == 5)
        incidents = wait_for(
            lambda: server.api("/api/v1/incidents").json()["incidents"], what="an incident"
        )
        [incident] = incidents
        assert incident["status"] == "open"
        assert incident["entities"] == [{"kind": "service", "name": "shop"}]
        assert incident["services"] == ["shop"]
        assert incident["candidates"][0]["entity"]["name"] == "shop"
        detail = server.api(f"/api/v1/incidents/{incident['id']}").json()
        [alert] = detail["alerts"]
        assert alert["plugin"] == "sample" and alert["kind"] == "sample_flag"
        flagged = next(s for s in spans if s.name == "GET /item/3")
        assert alert["evidence"]["exemplar_trace_ids"] == [format(flagged.context.trace_id, "032x")]

        acked = httpx.post(f"{server.api_base}/api/v1/incidents/{incident['id']}/ack").json()
        assert acked["status"] == "acknowledged"
        resolved = httpx.post(f"{server.api_base}/api/v1/incidents/{incident['id']}/resolve")
        assert resolved.json()["status"] == "resolved"
        assert server.api("/api/v1/incidents", status="resolved").json()["incidents"]
        missing = httpx.post(f"{server.api_base}/api/v1/incidents/inc_nothing/ack")
        assert missing.status_code == 404

        wait_for(lambda: len(webhook.received) >= 3, what="three webhook deliveries")
        assert webhook.changes() == ["opened", "acknowledged", "resolved"]
        for headers, body in webhook.received:
            expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
            assert headers["x-opstrata-signature"] == expected
        assert json.loads(webhook.received[0][1])["incident"]["id"] == incident["id"]
        assert [json.loads(x)["change"] for x in notify_file.read_text().splitlines()] == [
            "opened", "acknowledged", "resolved",
        ]  # fmt: skip

        plugins = {p["name"]: p for p in server.api("/api/v1/plugins").json()}
        sample = plugins["sample"]
        assert sample["version"] == "0.3.0" and not sample["builtin"]
        assert {c["name"] for c in sample["consumers"]} == {"spans", "slow", "broken"}
        assert sample["detectors"] == ["sample-threshold"]
        assert sample["routes"] == "/api/v1/sample/"
        assert "opstrata_register_consumers" in sample["hooks"]
        broken = next(c for c in sample["consumers"] if c["name"] == "broken")
        assert broken["errors"] >= 1 and "ZeroDivisionError" in broken["last_error"]
        assert _metric(server, "opstrata_consumer_errors_total", "sample/broken") >= 1
        assert plugins["webhook"]["builtin"] and plugins["webhook"]["notifiers"] == ["webhook"]
    finally:
        assert server.stop() == 0

    listing = subprocess.run(
        [sys.executable, "-m", "opstrata.cli", "plugins", "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, env={**os.environ, **plugin_env(sample_site)}, check=True,
    )  # fmt: skip
    assert "sample" in listing.stdout and "0.3.0" in listing.stdout
    assert "opstrata_register_routes" in listing.stdout


def test_disabled_plugin_is_not_loaded(tmp_path: Path, sample_site: Path) -> None:
    env = {**plugin_env(sample_site), "OPSTRATA_DISABLED_PLUGINS": '["sample"]'}
    server = ServerProcess(tmp_path / "data", env=env).start()
    try:
        names = {p["name"] for p in server.api("/api/v1/plugins").json()}
        assert "sample" not in names and "webhook" in names
        assert server.api("/api/v1/sample/counts").status_code == 404
    finally:
        assert server.stop() == 0


def test_bad_plugin_settings_stop_the_server_with_a_message(
    tmp_path: Path, sample_site: Path
) -> None:
    env = {**plugin_env(sample_site), "OPSTRATA_PLUGINS__SAMPLE__NONSENSE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "opstrata.cli", "serve", "--data-dir", str(tmp_path / "d"),
         "--otlp-grpc", "127.0.0.1:0", "--otlp-http", "127.0.0.1:0", "--api", "127.0.0.1:0"],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    assert "plugins.sample: unknown keys ['nonsense']" in result.stderr


def _seqs(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def _send(server: ServerProcess, n: int) -> None:
    with httpx.Client(timeout=30) as client:
        for _ in range(n):
            reply = client.post(
                server.http_base + "/v1/traces", content=_spans(3), headers=PROTOBUF
            )
            assert reply.status_code == 200


def test_slow_and_failing_consumers_are_isolated(tmp_path: Path, sample_site: Path) -> None:
    env = {**plugin_env(sample_site), "OPSTRATA_PLUGINS__SAMPLE__SLOW_SECONDS": "0.15"}
    server = ServerProcess(tmp_path / "data", env=env).start()
    state = tmp_path / "data" / "plugins" / "sample"
    try:
        _send(server, 40)
        # The fast consumer keeps up while the slow one is still working through its backlog.
        wait_for(lambda: len(_seqs(state / "spans.seq")) == 40, what="the fast consumer")
        assert len(_seqs(state / "slow.seq")) < 40
        assert _metric(server, "opstrata_consumer_lag_batches", "sample/slow") > 0
        wait_for(lambda: len(_seqs(state / "slow.seq")) == 40, timeout=120, what="the slow one")
        assert _metric(server, "opstrata_consumer_catch_up_batches_total", "sample/slow") > 0
        assert _metric(server, "opstrata_consumer_errors_total", "sample/broken") == 40
    finally:
        assert server.stop() == 0
    fast, slow = _seqs(state / "spans.seq"), _seqs(state / "slow.seq")
    assert slow == fast == sorted(set(fast)), "every batch once, in order"


@pytest.mark.parametrize("how", ["sigterm", "kill -9"])
def test_restarted_consumer_resumes_after_its_last_batch(
    tmp_path: Path, sample_site: Path, how: str
) -> None:
    env = {**plugin_env(sample_site), "OPSTRATA_PLUGINS__SAMPLE__SLOW_SECONDS": "0.1"}
    state = tmp_path / "data" / "plugins" / "sample"
    first = ServerProcess(tmp_path / "data", env=env).start()
    _send(first, 30)
    wait_for(lambda: len(_seqs(state / "slow.seq")) >= 5, what="some progress")
    if how == "sigterm":
        assert first.stop() == 0
    else:
        first.kill()
    seen_before = len(_seqs(state / "slow.seq"))
    assert seen_before < 30, "the restart must come mid-stream"

    second = ServerProcess(tmp_path / "data", env=env).start()
    try:
        _send(second, 10)
        wait_for(lambda: len(set(_seqs(state / "slow.seq"))) == 40, timeout=120, what="catch-up")
    finally:
        assert second.stop() == 0
    slow = _seqs(state / "slow.seq")
    assert sorted(set(slow)) == sorted(set(_seqs(state / "spans.seq")))
    assert len(set(slow)) == 40, "no batch missing"
    assert slow == sorted(slow) and len(slow) == len(set(slow)), "no batch seen twice"
