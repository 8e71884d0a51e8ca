"""Logs and metrics read back through the HTTP API after sending them with the real SDK
(``tests/querysetup.py``)."""

from __future__ import annotations

import pytest

from tests.querysetup import BASE, LOG_TRACE_ID
from tests.serverproc import ServerProcess


@pytest.fixture
def sent(query_server: tuple[ServerProcess, dict]) -> tuple[ServerProcess, dict]:
    return query_server


def _get(server: ServerProcess, path: str, **params) -> dict:
    response = server.api(path, **params)
    assert response.status_code == 200, response.text
    return response.json()


def _window(sent_metrics: dict) -> dict:
    """One step that holds every point sent."""
    start = sent_metrics["first"] - 10**9
    end = sent_metrics["last"] + 10**9
    return {"start": str(start), "end": str(end), "step": str(end - start)}


# -- logs ------------------------------------------------------------------------------------


def test_log_search_by_service_severity_text_and_attribute(sent) -> None:
    server, _ = sent
    everything = _get(server, "/api/v1/logs", service="logs-svc", limit=100)["logs"]
    assert len(everything) == 30
    times = [r["timestamp_unix_nano"] for r in everything]
    assert times == sorted(times, reverse=True) and times[0] == BASE + 29 * 10**9
    errors = _get(server, "/api/v1/logs", service="logs-svc", severity="error")["logs"]
    assert sorted(r["attributes"]["order.id"] for r in errors) == sorted(
        str(i) for i in range(0, 30, 3)
    )
    assert all(r["severity_number"] >= 17 for r in errors)
    assert _get(server, "/api/v1/logs", severity="17")["logs"] == errors
    failed = _get(server, "/api/v1/logs", contains="failed TO CHARGE")["logs"]
    assert len(failed) == 10 and all("FAILED to charge" in r["body"] for r in failed)
    # LIKE wildcards in the text are literal characters.
    assert _get(server, "/api/v1/logs", contains="order _")["logs"] == []
    shard_b = _get(server, "/api/v1/logs", **{"attr.shard": "b", "severity": "ERROR"})["logs"]
    assert sorted(int(r["attributes"]["order.id"]) for r in shard_b) == [15, 18, 21, 24, 27]
    windowed = _get(
        server, "/api/v1/logs", start=str(BASE + 5 * 10**9), end="2026-01-01T00:00:08Z"
    )["logs"]
    assert [r["timestamp_unix_nano"] for r in windowed] == [BASE + s * 10**9 for s in (7, 6, 5)]


def test_log_pagination_and_the_logs_of_one_trace(sent) -> None:
    server, _ = sent
    seen, cursor = [], None
    for _ in range(10):
        params = {"service": "logs-svc", "limit": 7, **({"cursor": cursor} if cursor else {})}
        page = _get(server, "/api/v1/logs", **params)
        seen += [r["timestamp_unix_nano"] for r in page["logs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [BASE + i * 10**9 for i in range(29, -1, -1)]
    trace_hex = format(LOG_TRACE_ID, "032x")
    of_trace = _get(server, f"/api/v1/traces/{trace_hex}/logs")["logs"]
    assert [r["attributes"]["order.id"] for r in of_trace] == ["29", "28", "27", "26", "25"]
    assert all(r["trace_id"] == trace_hex for r in of_trace)
    by_param = _get(server, "/api/v1/logs", trace_id=trace_hex.upper())["logs"]
    assert by_param == of_trace
    bad = server.api("/api/v1/logs", severity="loud")
    assert bad.status_code == 400 and "severity" in bad.json()["detail"]


# -- metrics ---------------------------------------------------------------------------------


def test_metric_names_with_type_unit_and_series(sent) -> None:
    server, _ = sent
    metrics = {(m["name"], m["type"]): m for m in _get(server, "/api/v1/metrics")["metrics"]}
    requests = metrics[("q.requests", "sum")]
    assert requests["unit"] == "1" and requests["description"] == "requests served"
    assert requests["temporality"] == "cumulative" and requests["monotonic"] is True
    assert requests["points"] == 3 and requests["series"] == 1
    assert metrics[("q.temperature", "gauge")]["series"] == 2
    assert ("q.latency", "histogram") in metrics
    assert ("q.expo", "exponential_histogram") in metrics
    series = _get(server, "/api/v1/metrics/q.temperature/series")["series"]
    assert sorted(s["attributes"]["room"] for s in series) == ["lab", "office"]
    assert all(s["service_name"] == "metrics-svc" for s in series)
    assert server.api("/api/v1/metrics/nope/series").status_code == 404


def test_rate_over_a_cumulative_counter_with_a_reset(sent) -> None:
    server, data = sent
    window = _window(data["metrics"])
    body = _get(server, "/api/v1/metrics/q.requests/query", aggregation="rate", **window)
    [series] = body["series"]
    [(time, value)] = series["points"]
    step_seconds = int(window["step"]) / 1e9
    # 5, then 8 (+3), then a restart at 2 (+2, not -6): 10 requests over the step.
    assert value == pytest.approx(10 / step_seconds)
    assert time == int(window["start"])
    as_sum = _get(server, "/api/v1/metrics/q.requests/query", aggregation="max", **window)
    assert as_sum["series"][0]["points"][0][1] == 2  # the last value in the step


def test_percentiles_from_histograms(sent) -> None:
    server, data = sent
    window = _window(data["metrics"])
    expo = _get(server, "/api/v1/metrics/q.expo/query", aggregation="p99", **window)
    [(_, p99)] = expo["series"][0]["points"]
    # 1..1000 recorded once each: the 99th percentile is 990, within one bucket's width.
    assert p99 == pytest.approx(990, rel=0.05)
    [(_, p50)] = _get(server, "/api/v1/metrics/q.expo/query", aggregation="p50", **window)[
        "series"
    ][0]["points"]
    assert p50 == pytest.approx(500, rel=0.05)
    explicit = _get(server, "/api/v1/metrics/q.latency/query", aggregation="p50", **window)
    assert explicit["series"][0]["points"][0][1] == pytest.approx(50)
    avg = _get(server, "/api/v1/metrics/q.latency/query", aggregation="avg", **window)
    assert avg["series"][0]["points"][0][1] == pytest.approx(50.5)


def test_gauge_aggregations_and_group_by(sent) -> None:
    server, data = sent
    window = _window(data["metrics"])
    avg = _get(server, "/api/v1/metrics/q.temperature/query", aggregation="avg", **window)
    assert avg["series"][0]["points"][0][1] == pytest.approx(20.25)
    assert avg["series"][0]["labels"] == {}
    grouped = _get(
        server,
        "/api/v1/metrics/q.temperature/query",
        aggregation="max",
        group_by="room,service.name",
        **window,
    )
    values = {s["labels"]["room"]: s["points"][0][1] for s in grouped["series"]}
    assert values == {"lab": 21.5, "office": 19.0}
    assert {s["labels"]["service.name"] for s in grouped["series"]} == {"metrics-svc"}
    only_lab = _get(
        server,
        "/api/v1/metrics/q.temperature/query",
        aggregation="sum",
        **{"attr.room": "lab"},
        **window,
    )
    assert only_lab["series"][0]["points"][0][1] == 21.5


def test_wrong_aggregation_is_400_and_unknown_metric_404(sent) -> None:
    server, data = sent
    window = _window(data["metrics"])
    wrong = server.api("/api/v1/metrics/q.temperature/query", aggregation="p99", **window)
    assert wrong.status_code == 400 and "gauge" in wrong.json()["detail"]
    assert server.api("/api/v1/metrics/nope/query", **window).status_code == 404


def test_exemplars_link_to_their_trace(sent) -> None:
    server, data = sent
    window = _window(data["metrics"])
    body = _get(
        server, "/api/v1/metrics/q.requests/exemplars", start=window["start"], end=window["end"]
    )
    trace_ids = {e["trace_id"] for e in body["exemplars"]}
    assert data["metrics"]["exemplar_trace"] in trace_ids
    exemplar = next(
        e for e in body["exemplars"] if e["trace_id"] == data["metrics"]["exemplar_trace"]
    )
    assert exemplar["trace_url"] == f"/api/v1/traces/{exemplar['trace_id']}"
    assert exemplar["value"] == 5 and exemplar["attributes"] == {"route": "/a"}
