"""The Jaeger-compatible read API, in the shapes the Jaeger UI and Grafana's Jaeger data source
read, checked against the spans sent with the real SDK (``tests/querysetup.py``)."""

from __future__ import annotations

import json

import pytest

from tests.querysetup import BASE, MS
from tests.serverproc import ServerProcess

US = 1000


@pytest.fixture
def sent(query_server: tuple[ServerProcess, dict]) -> tuple[ServerProcess, dict]:
    return query_server


def _get(server: ServerProcess, path: str, **params) -> dict:
    response = server.api(path, **params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"data", "total", "limit", "offset", "errors"}
    assert body["errors"] is None
    return body


def _checkout_trace_ids(data: dict) -> list[str]:
    ids = {
        s.context.trace_id
        for s in data["spans"]
        if s.resource.attributes["service.name"] == "frontend"
    }
    return sorted(format(t, "032x") for t in ids)


def test_services_and_operations(sent) -> None:
    server, _ = sent
    services = _get(server, "/api/services")
    assert services["data"] == ["checkout", "frontend", "pager", "payments"]
    assert services["total"] == 4
    ops = _get(server, "/api/services/checkout/operations")["data"]
    assert ops == ["POST /orders", "POST payments", "POST stripe"]
    typed = _get(server, "/api/operations", service="checkout", spanKind="server")["data"]
    assert typed == [{"name": "POST /orders", "spanKind": "server"}]


def test_trace_by_id_in_jaeger_shape(sent) -> None:
    server, data = sent
    trace_id = _checkout_trace_ids(data)[0]
    [trace] = _get(server, f"/api/traces/{trace_id}")["data"]
    assert trace["traceID"] == trace_id and len(trace["spans"]) == 7
    processes = trace["processes"]
    by_service = {p["serviceName"]: pid for pid, p in processes.items()}
    assert set(by_service) == {"frontend", "checkout", "payments"}
    assert {"key": "host.name", "type": "string", "value": "payments-host"} in processes[
        by_service["payments"]
    ]["tags"]
    spans = {s["operationName"]: s for s in trace["spans"]}
    root = spans["GET /checkout"]
    assert root["references"] == [] and root["duration"] == 100 * MS // US
    sent_root = next(
        s
        for s in data["spans"]
        if format(s.context.trace_id, "032x") == trace_id and s.parent is None
    )
    assert root["startTime"] == sent_root.start_time // US
    orders = spans["POST /orders"]
    assert orders["references"] == [
        {"refType": "CHILD_OF", "traceID": trace_id, "spanID": spans["POST checkout"]["spanID"]}
    ]
    assert orders["processID"] == by_service["checkout"]
    tags = {t["key"]: t for t in orders["tags"]}
    assert tags["span.kind"]["value"] == "server"
    assert tags["http.route"] == {"key": "http.route", "type": "string", "value": "/orders"}
    [log] = orders["logs"]
    assert {"key": "event", "type": "string", "value": "order.validated"} in log["fields"]
    assert log["timestamp"] == sent_root.start_time // US + 3 * MS // US
    stripe = spans["POST stripe"]
    assert {"refType": "FOLLOWS_FROM", "traceID": trace_id, "spanID": root["spanID"]} in stripe[
        "references"
    ]


def test_error_spans_carry_the_error_tag(sent) -> None:
    server, _ = sent
    body = _get(
        server,
        "/api/traces",
        service="payments",
        tags=json.dumps({"error": "true"}),
        start=str(BASE // US),
        end=str((BASE + 600 * 10**9) // US),
    )
    [trace] = body["data"]
    charge = next(s for s in trace["spans"] if s["operationName"] == "POST /charge")
    tags = {t["key"]: t for t in charge["tags"]}
    assert tags["error"] == {"key": "error", "type": "bool", "value": True}
    assert tags["otel.status_code"]["value"] == "ERROR"
    assert tags["otel.status_description"]["value"] == "card declined"
    assert trace["spans"][0]["traceID"] == trace["traceID"]


def test_trace_search_by_service_operation_tags_duration_and_limit(sent) -> None:
    server, data = sent
    window = {"start": str(BASE // US), "end": str((BASE + 600 * 10**9) // US)}
    found = _get(server, "/api/traces", service="frontend", **window)["data"]
    assert sorted(t["traceID"] for t in found) == _checkout_trace_ids(data)
    starts = [min(s["startTime"] for s in t["spans"]) for t in found]
    assert starts == sorted(starts, reverse=True)  # most recent first
    assert len(_get(server, "/api/traces", service="frontend", limit="2", **window)["data"]) == 2
    by_op = _get(server, "/api/traces", service="checkout", operation="POST stripe", **window)
    assert len(by_op["data"]) == 4
    by_tag = _get(
        server, "/api/traces", service="checkout", tags='{"http.route":"/orders"}', **window
    )["data"]
    assert len(by_tag) == 4
    logfmt = _get(server, "/api/traces", service="pager", tags="n=7 batch=p", **window)["data"]
    assert len(logfmt) == 1 and logfmt[0]["spans"][0]["operationName"] == "page-7"
    slow = _get(server, "/api/traces", service="pager", minDuration="20ms", **window)["data"]
    assert sorted(t["spans"][0]["operationName"] for t in slow) == sorted(
        f"page-{i}" for i in range(19, 25)
    )
    none = _get(server, "/api/traces", service="frontend", start="1", end="2")
    assert none["data"] == []


def test_dependencies(sent) -> None:
    server, _ = sent
    end_ms = (BASE + 600 * 10**9) // 10**6
    body = _get(server, "/api/dependencies", endTs=str(end_ms), lookback=str(3_600_000))
    links = {(d["parent"], d["child"]): d["callCount"] for d in body["data"]}
    assert links[("frontend", "checkout")] == 4
    assert links[("checkout", "payments")] == 4
    assert links[("checkout", "stripe")] == 4


def test_jaeger_errors(sent) -> None:
    server, _ = sent
    missing = server.api("/api/traces/" + "ab" * 16)
    assert missing.status_code == 404
    assert missing.json()["errors"] == [{"code": 404, "msg": "trace not found"}]
    assert missing.json()["data"] is None
    no_service = server.api("/api/traces")
    assert no_service.status_code == 400
    assert "service" in no_service.json()["errors"][0]["msg"]
    assert server.api("/api/traces", service="x", start="yesterday").status_code == 400
