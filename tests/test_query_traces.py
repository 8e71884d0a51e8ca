"""Traces, span search, services (RED), operations and the service map, read back through the
HTTP API after sending spans with the real OpenTelemetry SDK."""

from __future__ import annotations

import httpx
import pytest

from tests.querysetup import BASE, MS
from tests.serverproc import ServerProcess


@pytest.fixture
def sent(query_server: tuple[ServerProcess, dict]) -> tuple[ServerProcess, dict]:
    return query_server


def _hex(value: int, width: int) -> str:
    return format(value, f"0{width}x")


def _get(server: ServerProcess, path: str, **params) -> dict:
    response = server.api(path, **params)
    assert response.status_code == 200, response.text
    return response.json()


def test_trace_by_id_is_in_tree_order_with_events_and_links(sent) -> None:
    server, data = sent
    sent_spans = [s for s in data["spans"] if s.resource.attributes["service.name"] != "pager"]
    trace_id = sent_spans[0].context.trace_id
    mine = [s for s in sent_spans if s.context.trace_id == trace_id]
    body = _get(server, f"/api/v1/traces/{_hex(trace_id, 32).upper()}")
    assert body["span_count"] == len(mine) == 7
    names = [s["name"] for s in body["spans"]]
    # Depth first from the root, siblings by start time (payments before stripe).
    assert names == [
        "GET /checkout",
        "POST checkout",
        "POST /orders",
        "POST payments",
        "POST /charge",
        "INSERT payments",
        "POST stripe",
    ]
    by_name = {s["name"]: s for s in body["spans"]}
    assert by_name["POST /orders"]["events"][0]["name"] == "order.validated"
    assert by_name["POST /orders"]["events"][0]["attributes"] == {"items": "3"}
    [link] = by_name["POST stripe"]["links"]
    assert link["span_id"] == by_name["GET /checkout"]["span_id"]
    assert link["attributes"] == {"why": "audit"}
    assert by_name["POST /charge"]["service_name"] == "payments"
    assert by_name["GET /checkout"]["duration_nano"] == 100 * MS


def test_trace_not_found_and_bad_id(sent) -> None:
    server, _ = sent
    assert server.api("/api/v1/traces/" + "0" * 31 + "1").status_code == 404
    bad = server.api("/api/v1/traces/xyz")
    assert bad.status_code == 400 and "detail" in bad.json()


def test_span_search_by_service_attribute_status_kind_duration(sent) -> None:
    server, _ = sent
    body = _get(server, "/api/v1/spans", service="checkout", **{"attr.http.route": "/orders"})
    assert len(body["spans"]) == 4
    assert {s["name"] for s in body["spans"]} == {"POST /orders"}
    starts = [s["start_time_unix_nano"] for s in body["spans"]]
    assert starts == sorted(starts, reverse=True)  # newest first
    errors = _get(server, "/api/v1/spans", status="error")["spans"]
    assert [(s["service_name"], s["name"]) for s in errors] == [("payments", "POST /charge")]
    clients = _get(server, "/api/v1/spans", service="payments", kind="client")["spans"]
    assert {s["name"] for s in clients} == {"INSERT payments"}
    slow = _get(server, "/api/v1/spans", service="frontend", min_duration="95ms")["spans"]
    assert len(slow) == 4 and all(s["duration_nano"] >= 95 * MS for s in slow)
    by_resource = _get(server, "/api/v1/spans", **{"resource.host.name": "payments-host"})
    assert {s["service_name"] for s in by_resource["spans"]} == {"payments"}
    windowed = _get(
        server,
        "/api/v1/spans",
        service="frontend",
        kind="server",
        start="2026-01-01T00:00:30Z",
        end=str(BASE + 150 * 10**9),
    )
    assert [s["start_time_unix_nano"] for s in windowed["spans"]] == [
        BASE + 120 * 10**9,
        BASE + 60 * 10**9,
    ]


def test_span_pagination_neither_repeats_nor_skips(sent) -> None:
    server, data = sent
    expected = sorted(
        (
            (s.start_time, _hex(s.context.span_id, 16))
            for s in data["spans"]
            if s.resource.attributes["service.name"] == "pager"
        ),
        reverse=True,
    )
    seen: list[tuple[int, str]] = []
    cursor = None
    for _ in range(20):
        params = {"service": "pager", "limit": 4, **({"cursor": cursor} if cursor else {})}
        page = _get(server, "/api/v1/spans", **params)
        seen += [(s["start_time_unix_nano"], s["span_id"]) for s in page["spans"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == expected and len(set(seen)) == 25


def test_services_red_matches_what_was_sent(sent) -> None:
    server, _ = sent
    body = _get(
        server, "/api/v1/services", start=str(BASE), end=str(BASE + 300 * 10**9), step="60s"
    )
    services = {s["name"]: s for s in body["services"]}
    assert set(services) == {"frontend", "checkout", "payments", "pager"}
    payments = services["payments"]
    assert payments["requests"] == 4 and payments["errors"] == 1
    assert payments["error_rate"] == pytest.approx(0.25)
    assert payments["request_rate"] == pytest.approx(4 / 300)
    assert payments["p50_nano"] == pytest.approx(40 * MS)
    checkout = services["checkout"]
    assert checkout["requests"] == 4 and checkout["errors"] == 0
    assert [p["requests"] for p in checkout["series"]] == [1, 1, 1, 1]
    assert [p["time_unix_nano"] for p in checkout["series"]] == [
        BASE + i * 60 * 10**9 for i in range(4)
    ]
    # pager has only internal spans, each a root: 25 requests.
    assert services["pager"]["requests"] == 25
    one = _get(server, "/api/v1/services/payments", start=str(BASE), end=str(BASE + 300 * 10**9))
    assert one["requests"] == 4
    assert server.api("/api/v1/services/nobody", start=str(BASE)).status_code == 404


def test_operations_of_a_service(sent) -> None:
    server, _ = sent
    body = _get(
        server, "/api/v1/services/checkout/operations", start=str(BASE), end=str(BASE + 300 * 10**9)
    )
    ops = {(o["name"], o["kind"]): o for o in body["operations"]}
    assert set(ops) == {
        ("POST /orders", "Server"),
        ("POST payments", "Client"),
        ("POST stripe", "Client"),
    }
    assert ops[("POST stripe", "Client")]["spans"] == 4
    assert ops[("POST stripe", "Client")]["p99_nano"] == pytest.approx(15 * MS)


def test_service_map_from_a_three_service_trace(sent) -> None:
    server, _ = sent
    body = _get(server, "/api/v1/service-map", start=str(BASE), end=str(BASE + 300 * 10**9))
    edges = {(e["source"], e["target"]): e for e in body["edges"]}
    assert set(edges) == {
        ("frontend", "checkout"),
        ("checkout", "payments"),
        ("payments", "postgresql/pay"),
        ("checkout", "stripe"),
    }
    assert edges[("frontend", "checkout")]["calls"] == 4
    assert edges[("frontend", "checkout")]["via"] == "span"
    payments = edges[("checkout", "payments")]
    assert payments["calls"] == 4 and payments["errors"] == 1
    assert payments["error_rate"] == pytest.approx(0.25)
    assert payments["p99_nano"] == pytest.approx(40 * MS)
    assert edges[("payments", "postgresql/pay")]["via"] == "db.system"
    assert edges[("checkout", "stripe")]["via"] == "peer.service"
    assert edges[("checkout", "stripe")]["p99_nano"] == pytest.approx(15 * MS)
    nodes = {n["name"]: n for n in body["nodes"]}
    assert nodes["postgresql/pay"]["kind"] == "database"
    assert nodes["stripe"]["kind"] == "external"
    assert nodes["frontend"]["kind"] == "service" and nodes["frontend"]["requests"] == 4
    # Outside the window: nothing.
    empty = _get(
        server, "/api/v1/service-map", start="2025-01-01T00:00:00Z", end="2025-01-02T00:00:00Z"
    )
    assert empty["edges"] == [] and empty["nodes"] == []


def test_time_parameters_rfc3339_and_nanoseconds_agree(sent) -> None:
    server, _ = sent
    as_text = _get(
        server,
        "/api/v1/spans",
        service="frontend",
        kind="server",
        start="2025-12-31T23:00:00-01:00",
        end="2026-01-01T00:02:00.000000001Z",
    )
    as_ns = _get(
        server,
        "/api/v1/spans",
        service="frontend",
        kind="server",
        start=str(BASE),
        end=str(BASE + 120 * 10**9 + 1),
    )
    starts = [s["start_time_unix_nano"] for s in as_ns["spans"]]
    assert starts == [BASE + 120 * 10**9, BASE + 60 * 10**9, BASE]
    assert as_text == as_ns


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/api/v1/spans", {"start": "yesterday"}),
        ("/api/v1/spans", {"start": "2026-01-01T00:00:00"}),  # no zone
        ("/api/v1/spans", {"limit": 1001}),
        ("/api/v1/spans", {"limit": 0}),
        ("/api/v1/spans", {"cursor": "not-a-cursor"}),
        ("/api/v1/spans", {"status": "bad"}),
        ("/api/v1/spans", {"min_duration": "fast"}),
        ("/api/v1/spans", {"start": str(BASE + 10), "end": str(BASE)}),
        ("/api/v1/services", {"step": "10ms"}),
        ("/api/v1/services", {"start": str(BASE), "end": str(BASE + 10**14), "step": "1s"}),
    ],
)
def test_bad_parameters_are_400_with_a_json_detail(sent, path: str, params: dict) -> None:
    server, _ = sent
    response = httpx.get(server.api_base + path, params=params, timeout=30)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["status_code"] == 400 and body["detail"]
