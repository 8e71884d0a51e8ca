"""Incidents end to end: spans from the real SDK teach the server the call graph, alerts raised by
a plugin are correlated by it, ranked, resolved after quiet, reopened on relapse, notified."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from tests.otelsdk import log_exporter, make_logs, resource, span_exporter
from tests.pluginsupport import Webhook, plugin_env, topology_rows_consumed, wait_for
from tests.serverproc import ServerProcess

S = 1_000_000_000
T0 = 1_767_225_600 * S  # 2026-01-01T00:00:00Z: simulated event time, far from the wall clock

PLACEMENT = {
    "frontend": "node-a",
    "checkout": "node-b",
    "payment": "node-c",
    "mailer": "node-d",
}


class Services:
    """One SDK tracer provider per service, each with its own resource."""

    def __init__(self) -> None:
        self.memory = InMemorySpanExporter()
        self.providers: dict[str, TracerProvider] = {}

    def tracer(self, service: str) -> trace.Tracer:
        if service not in self.providers:
            node = PLACEMENT[service]
            provider = TracerProvider(
                resource=resource(
                    service, **{"host.name": node, "k8s.node.name": node, "k8s.pod.name": service}
                )
            )
            provider.add_span_processor(SimpleSpanProcessor(self.memory))
            self.providers[service] = provider
        return self.providers[service].get_tracer("tests.incidents")

    def take(self) -> list[ReadableSpan]:
        spans = list(self.memory.get_finished_spans())
        self.memory.clear()
        return spans


def _call(
    services: Services,
    caller: str,
    callee: str,
    parent: trace.Span | None,
    start: int,
    duration: int,
    **attributes: object,
) -> tuple[trace.Span, trace.Span]:
    ctx = trace.set_span_in_context(parent) if parent is not None else None
    client = services.tracer(caller).start_span(
        f"call {callee}", context=ctx, kind=SpanKind.CLIENT, start_time=start,
        attributes={"peer.service": callee},
    )  # fmt: skip
    server = services.tracer(callee).start_span(
        f"serve {callee}", context=trace.set_span_in_context(client), kind=SpanKind.SERVER,
        start_time=start + S // 1000, attributes=attributes,
    )  # fmt: skip
    return client, server


def checkout_trace(
    services: Services, start: int, db_ms: float, flagged: frozenset[str] = frozenset()
) -> None:
    """frontend → checkout → payment → postgresql, with the database call taking ``db_ms``."""
    db = int(db_ms * 1e6)
    root = services.tracer("frontend").start_span(
        "GET /checkout", kind=SpanKind.SERVER, start_time=start,
        attributes={"sample.alert": True} if "frontend" in flagged else {},
    )  # fmt: skip
    c1, checkout = _call(
        services, "frontend", "checkout", root, start + 1_000_000, db + 8_000_000,
        **({"sample.alert": True} if "checkout" in flagged else {}),
    )  # fmt: skip
    c2, payment = _call(
        services, "checkout", "payment", checkout, start + 2_000_000, db + 4_000_000,
        **({"sample.alert": True} if "payment" in flagged else {}),
    )  # fmt: skip
    query = services.tracer("payment").start_span(
        "SELECT orders", context=trace.set_span_in_context(payment), kind=SpanKind.CLIENT,
        start_time=start + 3_000_000, attributes={"db.system": "postgresql"},
    )  # fmt: skip
    end = start + 3_000_000 + db
    query.end(end_time=end)
    for span in (payment, c2, checkout, c1, root):
        end += 1_000_000
        span.end(end_time=end)


def mail(services: Services, start: int, flagged: bool) -> None:
    span = services.tracer("mailer").start_span(
        "send", kind=SpanKind.SERVER, start_time=start,
        attributes={"sample.alert": True} if flagged else {},
    )  # fmt: skip
    if flagged:
        span.set_status(Status(StatusCode.ERROR))
    span.end(end_time=start + 2_000_000)


def send(server: ServerProcess, spans: list[ReadableSpan]) -> None:
    exporter = span_exporter(server, "grpc")
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    exporter.shutdown()


@pytest.fixture
def server(tmp_path: Path, sample_site: Path, webhook: Webhook) -> Iterator[ServerProcess]:
    config = tmp_path / "opstrata.toml"
    config.write_text(
        f'[plugins.webhook]\nurl = "{webhook.url}"\n'
        "[incidents]\nquiet_seconds = 300\nreopen_seconds = 1800\n"
    )
    # Only the sample plugin raises alerts here (the detectors would add their own, unscripted).
    env = {**plugin_env(sample_site), "OPSTRATA_DISABLED_PLUGINS": '["aiops", "mlops", "llmops"]'}
    process = ServerProcess(tmp_path / "data", env=env, config_file=config).start()
    yield process
    assert process.stop() == 0


def _incidents(server: ServerProcess, **params: object) -> list[dict]:
    return server.api("/api/v1/incidents", **params).json()["incidents"]


def test_cascade_is_one_incident_ranked_at_the_database_and_unrelated_fault_is_another(
    server: ServerProcess,
    webhook: Webhook,
) -> None:
    services = Services()
    # Twenty quiet minutes teach the call graph and the database's normal latency (5 ms).
    for i in range(120):
        checkout_trace(services, T0 + i * 10 * S, db_ms=5)
        mail(services, T0 + i * 10 * S + S, flagged=False)
    quiet = services.take()
    send(server, quiet)
    # The topology consumer takes batches every ~0.25 s: the graph is learnt before the fault.
    wait_for(lambda: topology_rows_consumed(server) >= len(quiet), what="the call graph learnt")
    fault = T0 + 20 * 60 * S
    # The database slows down tenfold; every service on the path turns anomalous (the sample
    # plugin alerts on flagged spans, standing in for detectors), the deepest one first. The
    # mailer, unrelated, fails at the same time, alone: its incident opens once the failure
    # has lasted longer than confirm_seconds (120 s).
    for i in range(16):
        now = fault + i * 10 * S
        flagged = frozenset(["payment", "checkout", "frontend"][: 1 + i // 2])
        checkout_trace(services, now, db_ms=60, flagged=flagged)
        mail(services, now + S, flagged=i >= 1)
    send(server, services.take())

    def settled() -> list[dict] | None:
        found = _incidents(server, status="open")
        alerts = server.api("/api/v1/alerts").json()["alerts"]
        return found if len(alerts) == 4 and len(found) == 2 else None

    incidents = wait_for(settled, what="four alerts in two open incidents")
    by_service = {tuple(sorted(i["services"])): i for i in incidents}
    cascade = by_service[("checkout", "frontend", "payment")]
    mailer = by_service[("mailer",)]
    top = cascade["candidates"][0]
    assert top["entity"] == {"kind": "service", "name": "postgresql"}
    assert "latency x" in top["reason"]
    assert [c["entity"]["name"] for c in cascade["candidates"][1:3]] == ["payment", "checkout"]
    assert cascade["baseline_candidates"], "the baseline ranking is computed beside"
    assert mailer["candidates"][0]["entity"] == {"kind": "service", "name": "mailer"}
    detail = server.api(f"/api/v1/incidents/{cascade['id']}").json()
    assert {a["incident_id"] for a in detail["alerts"]} == {cascade["id"]}
    assert len(detail["alerts"]) == 3

    # Quiet for longer than quiet_seconds (event time): both resolve.
    later = fault + 20 * 60 * S
    for i in range(6):
        checkout_trace(services, later + i * 10 * S, db_ms=5)
    send(server, services.take())
    wait_for(lambda: not _incidents(server, status="open"), what="both incidents resolved")

    # A relapse of the payment path within the reopen window reopens the cascade incident.
    relapse = later + 5 * 60 * S
    checkout_trace(services, relapse, db_ms=60, flagged=frozenset(["payment"]))
    send(server, services.take())
    reopened = wait_for(lambda: _incidents(server, status="open"), what="a reopened incident")
    assert [i["id"] for i in reopened] == [cascade["id"]]
    assert reopened[0]["reopened"] == 1

    def delivered() -> list[str] | None:
        changes = webhook.changes()
        return changes if "reopened" in changes else None

    changes = wait_for(delivered, what="webhook deliveries up to the reopening")
    assert changes.count("opened") == 2
    assert changes.count("resolved") == 2
    assert "updated" in changes


def test_incident_filters_and_detail_with_exemplars_and_logs(
    server: ServerProcess,
    webhook: Webhook,
) -> None:
    services = Services()
    for i in range(3):
        mail(services, T0 + i * S, flagged=i == 2)
    for i in range(1, 6):  # the failure lasts past confirm_seconds: its incident opens
        mail(services, T0 + 2 * S + i * 30 * S, flagged=True)
    send(server, services.take())
    [incident] = wait_for(lambda: _incidents(server, status="open"), what="an incident")
    assert _incidents(server, service="mailer")[0]["id"] == incident["id"]
    assert _incidents(server, entity="service:mailer")[0]["id"] == incident["id"]
    assert _incidents(server, layer="aiops", severity="error")[0]["id"] == incident["id"]
    assert _incidents(server, service="checkout") == []
    assert _incidents(server, entity="host:elsewhere") == []
    assert _incidents(server, start="2026-01-01T00:00:03Z") == []
    assert len(_incidents(server, start="2026-01-01T00:00:00Z", end=str(T0 + 10 * S))) == 1
    bad = server.api("/api/v1/incidents", start="yesterday")
    assert bad.status_code == 400 and "start" in bad.json()["detail"]

    alert = server.api("/api/v1/alerts").json()["alerts"][0]
    [trace_id] = alert["evidence"]["exemplar_trace_ids"]
    context = trace.SpanContext(
        int(trace_id, 16), 1, is_remote=False, trace_flags=trace.TraceFlags(1)
    )

    def build(provider) -> None:
        logger = provider.get_logger("mailer")
        with trace.use_span(trace.NonRecordingSpan(context)):
            logger.emit(
                body="smtp relay refused connection", timestamp=T0 + 2 * S,
                severity_number=SeverityNumber.ERROR, severity_text="ERROR",
            )  # fmt: skip
        logger.emit(
            body="unrelated chatter", timestamp=T0 + 2 * S, severity_number=SeverityNumber.INFO
        )

    exporter = log_exporter(server, "grpc")
    exporter.export(make_logs(build))
    exporter.shutdown()
    detail = server.api(f"/api/v1/incidents/{incident['id']}").json()
    assert detail["exemplar_trace_ids"] == [trace_id]
    assert [line["body"] for line in detail["log_lines"]] == ["smtp relay refused connection"]
    assert detail["log_lines"][0]["trace_id"] == trace_id
    assert detail["incident"]["timeline"][0]["what"] == "opened"
