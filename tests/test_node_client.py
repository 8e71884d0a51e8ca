"""The OpenTelemetry JavaScript SDK, run by ``node``, is a second and independent client.

``tests/node/send.mjs`` uses the real ``@opentelemetry/sdk-node`` and the OTLP trace, metric and
log exporters over gRPC, http/protobuf and http/json (``npm ci --prefix tests/node`` installs them)
to emit one trace, four metrics and two log records. It exits non-zero unless every export
succeeded, so a rejected request fails here with the exporter's own words.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.serverproc import ServerProcess
from tests.storeread import read_table

NODE_DIR = Path(__file__).parent / "node"
SCRIPT = NODE_DIR / "send.mjs"


def _node() -> str:
    """The ``node`` binary, or a failure saying what to install: CI always has both."""
    node = shutil.which("node")
    if node is None:
        pytest.fail(
            "node is not on PATH: install Node.js (^18.19 or >= 20.6) to run the JavaScript client"
        )
    if not (NODE_DIR / "node_modules" / "@opentelemetry" / "sdk-node").is_dir():
        pytest.fail(
            f"{NODE_DIR / 'node_modules'} is missing the OpenTelemetry JS SDK: "
            "run `npm ci --prefix tests/node`"
        )
    return node


def _send(server: ServerProcess, protocol: str, run_id: str) -> dict:
    """Run the JS client against ``server``; what it printed about the telemetry it sent."""
    node = _node()
    endpoint = "http://" + server.grpc_endpoint if protocol == "grpc" else server.http_base
    # The client is configured in code only: no OTEL_* setting from the outside may change it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    cmd = [node, str(SCRIPT), "--protocol", protocol, "--endpoint", endpoint, "--run-id", run_id]
    done = subprocess.run(
        cmd, cwd=NODE_DIR, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, (
        f"{' '.join(cmd)} exited {done.returncode}\n"
        f"--- stdout\n{done.stdout}--- stderr\n{done.stderr}"
        f"--- server\n{''.join(server.output)}"
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _by(rows: list[dict], key: str) -> dict[str, dict]:
    out = {row[key]: row for row in rows}
    assert len(out) == len(rows), rows
    return out


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf", "http/json"])
def test_js_sdk_traces_metrics_and_logs_arrive(server: ServerProcess, protocol: str) -> None:
    run_id = uuid.uuid4().hex[:12]
    sent = _send(server, protocol, run_id)
    service = f"node-{protocol}-{run_id}"
    assert sent["service_name"] == service
    assert sent["exported"] == {"traces": 2, "metrics": 4, "logs": 2}
    trace_id, server_id, client_id = (
        sent["trace_id"],
        sent["server_span_id"],
        sent["client_span_id"],
    )

    # --- the trace, through the API
    response = server.api(f"/api/v1/traces/{trace_id}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["trace_id"] == trace_id
    assert body["span_count"] == 2
    spans = _by(body["spans"], "name")
    root, child = spans["GET /x"], spans["SELECT orders"]
    for span in (root, child):
        assert span["trace_id"] == trace_id
        assert span["service_name"] == service
        assert span["resource_attributes"]["service.name"] == service
        assert span["resource_attributes"]["service.version"] == "1.2.3"
        assert span["resource_attributes"]["test.run_id"] == run_id
        assert span["resource_attributes"]["telemetry.sdk.language"] == "nodejs"
        assert span["scope_name"] == "opstrata.tests.node"
        assert span["scope_version"] == "0.1.0"
        assert span["trace_flags"] & 0xFF == 1  # sampled
        assert span["start_time_unix_nano"] > 0
        assert span["duration_nano"] >= 0

    assert root["span_id"] == server_id
    assert root["parent_span_id"] == ""
    assert root["kind"] == "Server"
    assert root["status_code"] == "Unset"
    assert root["attributes"] == {
        "http.route": "/x",
        "retries": "3",
        "ok": "true",
        "ratio": "0.25",
        "tags": '["a","b"]',
        "codes": "[200,404]",
    }
    [event] = root["events"]
    assert event["name"] == "cache.miss"
    assert event["attributes"] == {"key": "user:42", "hit": "false"}
    assert root["start_time_unix_nano"] <= event["timestamp"]
    assert event["timestamp"] <= root["start_time_unix_nano"] + root["duration_nano"]

    assert child["span_id"] == client_id
    assert child["parent_span_id"] == server_id
    assert child["kind"] == "Client"
    assert child["status_code"] == "Error"
    assert child["status_message"] == "timeout"
    assert child["attributes"] == {"db.system": "postgresql", "db.rows": "7"}
    [link] = child["links"]
    assert (link["trace_id"], link["span_id"]) == (trace_id, server_id)
    assert link["attributes"] == {"link.kind": "follows"}

    # --- logs and metrics, from the store of the stopped server
    assert server.stop() == 0, "".join(server.output)
    data_dir = server.data_dir

    def rows(table: str) -> list[dict]:
        return read_table(data_dir, table, "WHERE ServiceName = ?", [service])

    logs = _by(rows("otel_logs"), "SeverityText")
    assert set(logs) == {"INFO", "ERROR"}
    info, error = logs["INFO"], logs["ERROR"]
    assert info["Body"] == "handling GET /x"
    assert info["SeverityNumber"] == 9
    assert info["LogAttributes"] == {"user.id": "42", "premium": "true"}
    assert (info["TraceId"], info["SpanId"]) == (trace_id, server_id)
    assert error["Body"] == '{"message":"query failed","code":500,"tags":["db","timeout"]}'
    assert error["SeverityNumber"] == 17
    assert error["LogAttributes"] == {"db.system": "postgresql"}
    assert (error["TraceId"], error["SpanId"]) == (trace_id, client_id)
    for record in (info, error):
        assert record["TraceFlags"] == 1
        assert record["ScopeName"] == "opstrata.tests.node"
        assert record["ScopeVersion"] == "0.1.0"
        assert record["ResourceAttributes"]["service.name"] == service
        assert record["Timestamp"] > 0
        assert record["ObservedTimestamp"] > 0

    sums = _by(rows("otel_metrics_sum"), "MetricName")
    assert set(sums) == {"node.requests", "node.queue.depth"}
    requests, depth = sums["node.requests"], sums["node.queue.depth"]
    assert requests["Value"] == 3
    assert requests["IsMonotonic"] is True
    assert requests["AggregationTemporality"] == 2  # cumulative
    assert requests["Attributes"] == {"http.route": "/x"}
    assert requests["MetricUnit"] == "{request}"
    assert requests["MetricDescription"] == "Requests handled"
    assert depth["Value"] == 3
    assert depth["IsMonotonic"] is False
    assert depth["AggregationTemporality"] == 2
    assert depth["Attributes"] == {"queue": "jobs"}
    assert depth["MetricUnit"] == "{item}"

    [histogram] = rows("otel_metrics_histogram")
    assert histogram["MetricName"] == "node.latency"
    assert histogram["MetricUnit"] == "ms"
    assert histogram["Attributes"] == {"http.route": "/x"}
    assert histogram["Count"] == 3
    assert histogram["Sum"] == 130
    assert histogram["Min"] == 3
    assert histogram["Max"] == 120
    assert histogram["ExplicitBounds"] == [10, 100, 1000]
    assert histogram["BucketCounts"] == [2, 0, 1, 0]
    assert histogram["AggregationTemporality"] == 2

    [gauge] = rows("otel_metrics_gauge")
    assert gauge["MetricName"] == "node.temperature"
    assert gauge["MetricUnit"] == "Cel"
    assert gauge["Value"] == 21.5
    assert gauge["Attributes"] == {"room": "lab"}

    for point in (requests, depth, histogram, gauge):
        assert point["ScopeName"] == "opstrata.tests.node"
        assert point["ResourceAttributes"]["service.name"] == service
        assert 0 < point["StartTimeUnix"] <= point["TimeUnix"]
