"""Deploys as change events: a service's new ``service.version`` raises an info
``deployment`` alert (plugins/aiops/deploys.py), which lets the first errors of that service
after it open an incident at once (core/correlation.py) — and nothing else (not a warning)."""

from __future__ import annotations

import pickle
from collections.abc import Iterator

import pyarrow as pa
import pytest
from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from opstrata import AlertEvent
from opstrata.alerts import Severity
from opstrata.correlation import TopologyCorrelator
from opstrata.plugins.aiops.deploys import DeployWatch
from tests.otelsdk import send_log_records, span_exporter
from tests.pluginsupport import wait_for
from tests.serverproc import ServerProcess
from tests.test_correlation import alert, feed, open_incidents, shop

S = 1_000_000_000
MINUTE = 60 * S
T0 = 1_767_571_200 * S  # 2026-01-05 00:00 UTC: simulated event time


def _deploy(service: str, at: int):
    made = alert("deployment", ("service", service), at)
    made.severity = Severity.INFO
    return made


def _error(kind: str, entity: tuple[str, str], at: int):
    made = alert(kind, entity, at)
    made.severity = Severity.ERROR
    return made


def test_a_deploy_confirms_its_own_services_errors_only() -> None:
    # A new ERROR log template alone waits (one-off events do not last); after a deploy of
    # its service it opens the incident at once, on the template, with the deploy as evidence.
    engine = TopologyCorrelator(shop(), confirm_seconds=120)
    assert feed(engine, [_error("new_log_template", ("service", "checkout"), T0)]) == []
    engine = TopologyCorrelator(shop(), confirm_seconds=120)
    deploy = _deploy("checkout", T0)
    template = _error("new_log_template", ("service", "checkout"), T0 + 38 * S)
    assert feed(engine, [deploy]) == []
    assert feed(engine, [template]) == ["opened"]
    [incident] = open_incidents(engine)
    assert set(incident.alert_ids) == {deploy.id, template.id}
    assert incident.timeline[0].what == "opened"
    assert incident.timeline[0].alert_id == template.id
    assert incident.timeline[0].time_unix_nano == T0 + 38 * S
    assert incident.severity == Severity.ERROR
    # An operation of the deployed service counts as the service.
    engine = TopologyCorrelator(shop(), confirm_seconds=120)
    op = _error("error_rate", ("operation", "checkout/POST /orders"), T0 + 60 * S)
    assert feed(engine, [_deploy("checkout", T0), op]) == ["opened"]
    # Not: a neighbour's alert (gateway calls checkout), what began before the deploy, what
    # comes long after it, another deploy, or a deploy on its own.
    for others in (
        [alert("latency", ("service", "gateway"), T0 + 30 * S)],
        [_error("new_log_template", ("service", "checkout"), T0 - 30 * S)],
        [_error("new_log_template", ("service", "checkout"), T0 + 20 * MINUTE)],
        [_deploy("payment", T0 + 10 * S)],
        [],
    ):
        engine = TopologyCorrelator(shop(), confirm_seconds=120)
        assert feed(engine, [_deploy("checkout", T0), *others]) == [], others
        assert not engine.incidents


def test_a_warning_after_a_deploy_still_needs_another_source() -> None:
    # Warm-up latency after a rollout is normal: a deploy does not confirm a warning (of the
    # service or of one of its operations); the warning waits as it would without the deploy.
    for warning in (
        alert("latency", ("service", "checkout"), T0 + 60 * S),
        alert("error_rate", ("operation", "checkout/POST /orders"), T0 + 60 * S),
    ):
        assert warning.severity == Severity.WARNING
        engine = TopologyCorrelator(shop(), confirm_seconds=120)
        assert feed(engine, [_deploy("checkout", T0), warning]) == []
        assert not engine.incidents
        # Once it turns to an error (the same alert, escalated), the deploy confirms it.
        warning.severity = Severity.ERROR
        warning.last_seen_unix_nano += 30 * S
        assert [c.change for c in engine.on_alert(warning, False)] == ["opened"]


def test_a_deploy_confirms_errors_for_its_whole_window() -> None:
    # The deploy's window is 15 minutes: an error starting 6..14 minutes after it, with nothing
    # in between, is still confirmed by it (the pending pool keeps it that long); 16 is not.
    for minutes in (6, 10, 14):
        engine = TopologyCorrelator(shop(), confirm_seconds=120, join_gap_seconds=300)
        template = _error("new_log_template", ("service", "checkout"), T0 + minutes * MINUTE)
        assert feed(engine, [_deploy("checkout", T0), template]) == ["opened"], minutes
    engine = TopologyCorrelator(shop(), confirm_seconds=120, join_gap_seconds=300)
    late = _error("new_log_template", ("service", "checkout"), T0 + 16 * MINUTE)
    assert feed(engine, [_deploy("checkout", T0), late]) == []


def test_a_service_that_deploys_often_keeps_the_corroboration() -> None:
    # Six deploys of checkout in a day, each followed by its own new ERROR template: every one
    # opens its incident at once, even under one alert key (change events are never chronic).
    engine = TopologyCorrelator(shop(), confirm_seconds=120, quiet_seconds=600)
    for n in range(6):
        at = T0 + n * 3 * 60 * MINUTE
        deploy = _deploy("checkout", at)
        deploy.key = "aiops/deployment/checkout"
        template = _error("new_log_template", ("service", "checkout"), at + 40 * S)
        changes = feed(engine, [deploy, template])
        assert "opened" in changes, (n, changes)
        assert deploy.incident_id == template.incident_id is not None


def _spans(version: str, at: int) -> tuple[pa.Array, pa.Array, pa.Array]:
    resources = pa.array(
        [[("service.name", "checkout"), ("service.version", version)]],
        type=pa.map_(pa.string(), pa.string()),
    )
    return pa.array(["checkout"]), resources, pa.array([at], pa.int64())


def test_deploys_are_keyed_per_version_and_resolve_after_a_restart() -> None:
    events: list[AlertEvent] = []
    watch = DeployWatch(events.append)
    watch.observe(*_spans("1.0", T0))
    watch.observe(*_spans("1.1", T0 + 11 * MINUTE))
    watch.observe(*_spans("1.2", T0 + 16 * MINUTE))  # a second deploy within the first's window
    assert [(e.key, e.resolved) for e in events] == [
        ("aiops/deployment/checkout/1.1", False),
        ("aiops/deployment/checkout/1.2", False),
    ]
    # A restart while both are in their windows: the saved state (pickled, as the consumer
    # saves it) brings them back, and each still gets its resolved event on its own key.
    events.clear()
    restored = DeployWatch(events.append)
    restored.restore(pickle.loads(pickle.dumps(watch.state())))
    restored.advance(T0 + 20 * MINUTE)
    assert events == []
    restored.advance(T0 + 26 * MINUTE)
    assert [(e.key, e.resolved, e.time_unix_nano) for e in events] == [
        ("aiops/deployment/checkout/1.1", True, T0 + 26 * MINUTE),
    ]
    restored.advance(T0 + 40 * MINUTE)
    assert [(e.key, e.resolved) for e in events[1:]] == [("aiops/deployment/checkout/1.2", True)]
    # A version seen before the restart is no new deploy after it.
    restored.observe(*_spans("1.1", T0 + 41 * MINUTE))
    assert len(events) == 2


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("deploys") / "data").start()
    yield proc
    assert proc.stop() == 0, "".join(proc.output)


def _send_spans(server: ServerProcess, version: str, minutes: range) -> None:
    """Five requests a minute to ``checkout`` at ``version``, all fine, through the SDK."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create(
            {"service.name": "checkout", "service.version": version, "host.name": "node-1"}
        )
    )
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("tests.deploys")
    for minute in minutes:
        for i in range(5):
            t = T0 + minute * MINUTE + i * 12 * S
            tracer.start_span("POST /orders", kind=SpanKind.SERVER, start_time=t).end(
                end_time=t + 20_000_000
            )
    provider.shutdown()
    exporter = span_exporter(server, "http")
    assert exporter.export(memory.get_finished_spans()) is SpanExportResult.SUCCESS
    exporter.shutdown()


def test_a_new_version_and_its_first_error_open_an_incident_at_once(server) -> None:
    # 35 minutes of checkout 1.0 (logging long enough that a new ERROR template alerts), then
    # 1.1 rolls out and its first requests log an error nobody has seen before.
    _send_spans(server, "1.0", range(0, 35))
    logs = [
        {"timestamp": T0 + m * MINUTE + 5 * S, "severity_number": SeverityNumber.INFO,
         "body": f"order {1000 + m} placed"}
        for m in range(0, 40)
    ]  # fmt: skip
    logs.append(
        {"timestamp": T0 + 35 * MINUTE + 40 * S, "severity_number": SeverityNumber.ERROR,
         "severity_text": "ERROR", "body": "unhandled exception in POST /orders: KeyError"}
    )  # fmt: skip
    send_log_records(server, {"service.name": "checkout", "host.name": "node-1"}, logs)
    _send_spans(server, "1.1", range(35, 40))
    _send_spans(server, "1.1", range(45, 46))  # moves event time on: windows close

    def alerts() -> list[dict]:
        found = server.api("/api/v1/alerts", limit=1000, plugin="aiops").json()["alerts"]
        kinds = {a["kind"] for a in found}
        return found if {"deployment", "new_log_template"} <= kinds else []

    found = wait_for(alerts, 30, "a deployment and a new ERROR template")
    [deploy] = [a for a in found if a["kind"] == "deployment"]
    assert deploy["entity"] == {"kind": "service", "name": "checkout"}
    assert deploy["severity"] == "info"
    assert deploy["first_seen_unix_nano"] == T0 + 35 * MINUTE
    assert deploy["evidence"]["details"] == {"version": "1.1", "previous_version": "1.0"}
    assert deploy["resource"]["service.version"] == "1.1"
    [template] = [a for a in found if a["kind"] == "new_log_template"]

    def incidents() -> list[dict]:
        return server.api("/api/v1/incidents").json()["incidents"]

    [incident] = wait_for(incidents, 30, "an incident")
    assert set(incident["alert_ids"]) >= {deploy["id"], template["id"]}
    opened = [e for e in incident["timeline"] if e["what"] == "opened"]
    assert opened[0]["time_unix_nano"] == T0 + 35 * MINUTE + 40 * S
    assert incident["candidates"][0]["entity"] == {"kind": "service", "name": "checkout"}
