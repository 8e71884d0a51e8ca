"""The correlator and the root-cause walk on hand-made topologies and alerts (the end-to-end
path, with the real server, SDK and plugins, is in test_incidents.py and test_demo*.py)."""

from __future__ import annotations

import itertools

from opstrata.alerts import Alert, Entity, Evidence, IncidentStatus, Layer, Severity
from opstrata.correlation import TopologyCorrelator
from opstrata.rootcause import rank_by_jump, rank_root_causes
from opstrata.topology import EdgeKind, TopologyGraph

S = 1_000_000_000
M = 60 * S
T0 = 1_767_225_600 * S
_ids = itertools.count()


def alert(
    kind: str,
    entity: tuple[str, str],
    at: int,
    score: float = 0.9,
    layer: Layer = Layer.AIOPS,
    observed: float | None = None,
    expected: float | None = None,
    **resource: str,
) -> Alert:
    n = next(_ids)
    if entity[0] == "service":
        resource.setdefault("service.name", entity[1])
    return Alert(
        id=f"alr_{n:04d}", key=f"k{n}", plugin="test", layer=layer, kind=kind,
        entity=Entity(*entity), resource={k.replace("_", "."): v for k, v in resource.items()},
        severity=Severity.WARNING, score=score, summary=f"{kind} on {entity[1]}",
        evidence=Evidence(observed=observed, expected=expected),
        first_seen_unix_nano=at, last_seen_unix_nano=at,
    )  # fmt: skip


def shop() -> TopologyGraph:
    """frontend → gateway → {checkout → payment, catalog, llm-gateway → model-server};
    model-server runs on gpu-node-1 and serves fraud:v3; llm-gateway uses gpt-4o."""
    graph = TopologyGraph()
    calls = [
        ("frontend", "gateway"), ("gateway", "checkout"), ("gateway", "catalog"),
        ("checkout", "payment"), ("gateway", "llm-gateway"), ("llm-gateway", "model-server"),
    ]  # fmt: skip
    for caller, callee in calls:
        graph.add(EdgeKind.CALLS, ("service", caller), ("service", callee), T0)
    nodes = {
        "frontend": "node-1", "gateway": "node-1", "checkout": "node-2", "payment": "node-2",
        "catalog": "node-3", "llm-gateway": "node-3", "model-server": "gpu-node-1",
    }  # fmt: skip
    for service, node in nodes.items():
        graph.add(EdgeKind.RUNS_ON, ("service", service), ("node", node), T0)
    graph.add(EdgeKind.USES, ("service", "model-server"), ("model", "fraud:v3"), T0)
    graph.add(EdgeKind.USES, ("service", "llm-gateway"), ("llm_model", "gpt-4o"), T0)
    return graph


def feed(engine: TopologyCorrelator, alerts: list[Alert]) -> list[str]:
    changes = []
    for a in sorted(alerts, key=lambda a: a.first_seen_unix_nano):
        changes += [c.change for c in engine.on_alert(a, True)]
    return changes


def open_incidents(engine: TopologyCorrelator) -> list:
    return [i for i in engine.incidents.values() if i.status is not IncidentStatus.RESOLVED]


def test_cross_layer_cascade_is_one_incident_rooted_at_the_gpu_node() -> None:
    engine = TopologyCorrelator(shop())
    model_server = {"service_name": "model-server", "k8s_node_name": "gpu-node-1"}
    alerts = [
        # Arrival order is not onset order: the LLM symptom is reported before the GPU node.
        alert("llm_latency", ("llm_model", "gpt-4o"), T0 + 150 * S, layer=Layer.LLMOPS,
              service_name="llm-gateway"),
        alert("gpu_errors", ("node", "gpu-node-1"), T0, score=0.95, k8s_node_name="gpu-node-1"),
        alert("latency", ("service", "model-server"), T0 + 40 * S, **model_server),
        alert("prediction_drift", ("model", "fraud:v3"), T0 + 90 * S, layer=Layer.MLOPS,
              **model_server),
        alert("latency", ("service", "llm-gateway"), T0 + 100 * S, service_name="llm-gateway"),
    ]  # fmt: skip
    feed(engine, alerts)
    [incident] = open_incidents(engine)
    assert set(incident.layers) == {Layer.AIOPS, Layer.MLOPS, Layer.LLMOPS}
    assert len(incident.alert_ids) == 5
    assert incident.candidates[0].entity == Entity("host", "gpu-node-1")
    assert incident.models == ["fraud:v3", "gpt-4o"] or set(incident.models) == {
        "fraud:v3",
        "gpt-4o",
    }


def test_unrelated_simultaneous_faults_stay_apart_and_a_bridge_merges_them() -> None:
    engine = TopologyCorrelator(shop(), confirm_seconds=0)
    feed(
        engine,
        [
            alert("latency", ("service", "checkout"), T0),
            alert("errors", ("service", "catalog"), T0 + 5 * S),
        ],
    )
    assert len(open_incidents(engine)) == 2
    # gateway calls both: its alert shows the two were one problem seen from two ends.
    changes = feed(engine, [alert("latency", ("service", "gateway"), T0 + 30 * S)])
    assert "merged" in changes
    [merged] = open_incidents(engine)
    assert len(merged.alert_ids) == 3
    gone = [i for i in engine.incidents.values() if i.merged_into == merged.id]
    assert len(gone) == 1 and gone[0].status is IncidentStatus.RESOLVED
    for alert_id in merged.alert_ids:
        owners = [i for i in open_incidents(engine) if alert_id in i.alert_ids]
        assert len(owners) == 1


def test_host_pressure_is_ranked_above_the_services_it_slows() -> None:
    graph = shop()
    engine = TopologyCorrelator(graph)
    feed(
        engine,
        [
            alert("cpu", ("node", "node-2"), T0 + 5 * S, score=0.7, k8s_node_name="node-2"),
            alert("latency", ("service", "payment"), T0 + 20 * S, 0.99, k8s_node_name="node-2"),
            alert("latency", ("service", "checkout"), T0 + 25 * S, 0.99, k8s_node_name="node-2"),
            alert("latency", ("service", "gateway"), T0 + 60 * S, 0.99, k8s_node_name="node-1"),
        ],
    )
    [incident] = open_incidents(engine)
    assert incident.candidates[0].entity == Entity("host", "node-2")
    # The baseline only sees jump sizes: a service outranks the node there.
    assert incident.baseline_candidates[0].entity.kind == "service"


def test_a_database_without_telemetry_is_blamed_from_its_callers_calls() -> None:
    graph = shop()
    minute = T0 // M
    for m in range(-30, 3):
        slow = m >= 0
        graph.add_call_stats(
            "payment", "postgresql", minute + m, 100, 20 if slow else 0,
            100 * (80e6 if slow else 6e6), T0,
        )  # fmt: skip
    alerts = [
        alert("latency", ("service", "payment"), T0 + 10 * S, 0.9, observed=90, expected=10),
        alert("latency", ("service", "checkout"), T0 + 30 * S, 0.95, observed=300, expected=20),
    ]
    ranked = rank_root_causes(alerts, graph)
    assert ranked[0].entity == Entity("service", "postgresql")
    assert ranked[0].evidence["inferred"] and "latency x" in ranked[0].reason
    assert ranked[1].entity == Entity("service", "payment")
    assert rank_by_jump(alerts)[0].entity == Entity("service", "checkout")


def test_quiet_resolves_and_a_related_relapse_reopens() -> None:
    engine = TopologyCorrelator(shop(), quiet_seconds=300, reopen_seconds=1800, confirm_seconds=0)
    feed(engine, [alert("latency", ("service", "payment"), T0)])
    [incident] = open_incidents(engine)
    changes = [c.change for c in engine.advance(T0 + 301 * S)]
    assert changes == ["resolved"] and not open_incidents(engine)
    # A neighbour's alert after the end is a new story, not a relapse...
    changes = feed(engine, [alert("errors", ("service", "checkout"), T0 + 900 * S)])
    assert changes == ["opened"]
    engine.advance(T0 + 1201 * S)
    # ... a relapse of the payment service within the reopen window reopens its incident.
    changes = feed(engine, [alert("errors", ("service", "payment"), T0 + 1210 * S)])
    assert changes == ["reopened"]
    [again] = open_incidents(engine)
    assert again.id == incident.id and again.reopened == 1
    # Past the reopen window, the same entity opens a new incident.
    engine.advance(T0 + 1300 * S)
    changes = feed(engine, [alert("latency", ("service", "payment"), T0 + 4000 * S)])
    assert changes[-1] == "opened" and "reopened" not in changes
    assert open_incidents(engine)[0].id != incident.id


def test_topology_survives_a_save_and_load(tmp_path) -> None:
    graph = shop()
    graph.add_call_stats("payment", "postgresql", T0 // M, 10, 1, 10 * 6e6, T0)
    graph.alias("payment.svc:8080", "payment")
    graph.save(tmp_path / "topology.json")
    loaded = TopologyGraph()
    loaded.load(tmp_path / "topology.json")
    assert sorted(loaded.edges()) == sorted(graph.edges())
    assert loaded.resolve("payment.svc:8080") == "payment"


def test_edges_not_seen_for_long_are_forgotten() -> None:
    graph = shop()
    graph.add(
        EdgeKind.RUNS_ON, ("service", "checkout"), ("pod", "checkout-new"), T0 + 8 * 86_400 * S
    )
    gone = graph.forget_before(T0 + 86_400 * S)
    assert gone == len(shop().edges())
    assert [edge[2] for edge in graph.edges()] == [("pod", "checkout-new")]


def test_a_lone_blip_waits_and_opens_once_it_lasts_or_is_corroborated() -> None:
    engine = TopologyCorrelator(shop(), confirm_seconds=120)
    notice = alert("drift", ("service", "catalog"), T0)  # a warning
    blip = alert("latency", ("service", "payment"), T0)
    blip.severity = Severity.ERROR
    assert feed(engine, [notice, blip]) == [] and not engine.incidents
    # A lone warning stays a notice however long it lasts.
    notice.last_seen_unix_nano = T0 + 300 * S
    assert engine.on_alert(notice, False) == [] and not engine.incidents
    # The error, still firing two minutes on: confirmed, opened when it was confirmed.
    blip.last_seen_unix_nano = T0 + 125 * S
    assert [c.change for c in engine.on_alert(blip, False)] == ["opened"]
    [incident] = open_incidents(engine)
    assert incident.opened_unix_nano == T0
    assert incident.timeline[0].what == "opened"
    assert incident.timeline[0].time_unix_nano == T0 + 125 * S
    # Another source, related (catalog and gateway are neighbours), corroborates at once.
    other = TopologyCorrelator(shop(), confirm_seconds=120)
    assert feed(other, [alert("errors", ("service", "catalog"), T0)]) == []
    changes = feed(other, [alert("latency", ("service", "gateway"), T0 + 20 * S)])
    assert changes[0] == "opened"
    [both] = open_incidents(other)
    assert len(both.alert_ids) == 2
    # A critical alert needs no corroboration; an unrelated pair stays pending.
    third = TopologyCorrelator(shop(), confirm_seconds=120)
    assert feed(third, [alert("errors", ("service", "catalog"), T0),
                        alert("latency", ("service", "payment"), T0 + 10 * S)]) == []  # fmt: skip
    critical = alert("errors", ("service", "payment"), T0 + 20 * S)
    critical.severity = Severity.CRITICAL
    assert feed(third, [critical])[0] == "opened"


def test_an_alert_that_ended_still_corroborates_what_overlapped_it() -> None:
    """Detectors of different signals report at different paces: the node's CPU alert (from
    metrics) has ended by the time the latency alert of the same minutes (from spans) arrives.
    In event time they overlapped: one incident, opened when the latency alert came."""
    engine = TopologyCorrelator(shop(), confirm_seconds=120)
    cpu = alert("metric_anomaly", ("node", "node-2"), T0 + 60 * S)
    cpu.severity = Severity.ERROR
    assert feed(engine, [cpu]) == [] and not engine.incidents
    cpu.last_seen_unix_nano, cpu.status = T0 + 240 * S, "resolved"
    latency = alert("latency", ("service", "payment"), T0 + 120 * S)
    latency.severity = Severity.ERROR
    assert feed(engine, [latency])[0] == "opened"
    [incident] = open_incidents(engine)
    assert set(incident.alert_ids) == {cpu.id, latency.id}
    assert incident.timeline[0].time_unix_nano == T0 + 120 * S
    # One that had ended before the other began corroborates nothing.
    later = TopologyCorrelator(shop(), confirm_seconds=120)
    early = alert("metric_anomaly", ("node", "node-2"), T0)
    early.severity = Severity.ERROR
    feed(later, [early])
    early.last_seen_unix_nano, early.status = T0 + 60 * S, "resolved"
    late = alert("latency", ("service", "payment"), T0 + 120 * S)
    late.severity = Severity.ERROR
    assert feed(later, [late]) == [] and not later.incidents


def test_the_opening_does_not_depend_on_which_detector_reported_first() -> None:
    """catalog's latency (pending) is confirmed at 121 s by the gateway's log alert; catalog's
    error alert of the 120-s window arrives after that, from a slower detector. In event time
    the incident was confirmed at 120 s (two kinds of signal on catalog): its opening says so,
    as a replay in event order would."""
    engine = TopologyCorrelator(shop(), confirm_seconds=120)
    latency = alert("latency", ("service", "catalog"), T0 + 60 * S)
    logs = alert("new_log_template", ("service", "gateway"), T0 + 121 * S)
    errors = alert("errors", ("service", "catalog"), T0 + 120 * S)
    for a in (latency, logs, errors):
        a.severity = Severity.ERROR
    assert engine.on_alert(latency, True) == []
    assert next(c.change for c in engine.on_alert(logs, True)) == "opened"
    [incident] = open_incidents(engine)
    assert incident.timeline[0].time_unix_nano == T0 + 121 * S
    engine.on_alert(errors, True)
    assert set(incident.alert_ids) == {latency.id, logs.id, errors.id}
    assert incident.timeline[0].what == "opened"
    assert incident.timeline[0].time_unix_nano == T0 + 120 * S
    # In event order the same alerts open it then too.
    ordered = TopologyCorrelator(shop(), confirm_seconds=120)
    for a in (latency, errors, logs):
        a.incident_id = None
    feed(ordered, [latency, errors, logs])
    [same] = open_incidents(ordered)
    assert same.timeline[0].time_unix_nano == T0 + 120 * S


def test_one_measurement_seen_twice_does_not_corroborate_itself() -> None:
    engine = TopologyCorrelator(shop(), confirm_seconds=120)
    service = alert("latency", ("service", "payment"), T0)
    operation = alert("latency", ("operation", "payment/POST /pay"), T0 + 5 * S,
                      service_name="payment")  # fmt: skip
    # The service's latency and its operation's latency: one signal, still a lone warning.
    assert feed(engine, [service, operation]) == [] and not engine.incidents
    # Another kind of signal on the same service is separate evidence.
    errors = alert("errors", ("service", "payment"), T0 + 10 * S)
    assert feed(engine, [errors])[0] == "opened"
    [incident] = open_incidents(engine)
    assert len(incident.alert_ids) == 3


def test_a_log_burst_seen_as_rate_and_as_template_counts_is_one_measurement() -> None:
    engine = TopologyCorrelator(shop(), confirm_seconds=120)
    rate = alert("log_rate", ("service", "llm-gateway"), T0)
    templates = alert("log_burst", ("service", "llm-gateway"), T0 + 2 * S)
    # The same burst of log lines counted two ways: still a lone warning.
    assert feed(engine, [rate, templates]) == [] and not engine.incidents
    # Failing calls seen in the spans are separate evidence.
    errors = alert("error_burst", ("service", "llm-gateway"), T0 + 5 * S)
    assert feed(engine, [errors])[0] == "opened"


def test_an_entity_alerting_again_rejoins_its_open_incident() -> None:
    engine = TopologyCorrelator(shop(), confirm_seconds=0, join_gap_seconds=120)
    node = {"k8s_node_name": "node-2"}
    first = [
        alert("cpu", ("node", "node-2"), T0, **node),
        alert("latency", ("service", "checkout"), T0 + 30 * S, **node),
        alert("latency", ("service", "payment"), T0 + 40 * S, **node),
    ]
    feed(engine, first)
    [incident] = open_incidents(engine)
    for a in first:
        a.status = "resolved"
    # The node keeps the incident open (another alert of it fires on), the payment alert ended
    # minutes ago; payment slows down again: the same incident, not a second one.
    later = alert("cpu_steal", ("node", "node-2"), T0 + 400 * S, k8s_node_name="node-2")
    feed(engine, [later])
    again = alert("latency", ("service", "payment"), T0 + 700 * S)
    assert again.first_seen_unix_nano - later.last_seen_unix_nano > 120 * S  # time alone: apart
    feed(engine, [again])
    assert [i.id for i in open_incidents(engine)] == [incident.id]
    assert again.id in incident.alert_ids


def test_a_chronic_source_opens_nothing_keeps_nothing_open_and_weighs_less() -> None:
    graph = shop()
    start = T0 + 4 * 1800 * S
    for m in range(-30, 5):  # the gateway's calls to the catalog went on as usual
        graph.add_call_stats("gateway", "catalog", start // M + m, 100, 0, 100 * 5e6, T0)
    engine = TopologyCorrelator(graph, confirm_seconds=0, quiet_seconds=300)
    # The catalog's p99 flaps: an alert every half hour for hours, each a new onset.
    flaps = []
    for n in range(6):
        flap = alert("latency", ("service", "catalog"), T0 + n * 1800 * S)
        flap.key = "catalog-p99"
        flaps.append(flap)
    assert "opened" in feed(engine, flaps[:4])  # its first onsets were news
    engine.advance(T0 + 4 * 1800 * S - 1)
    assert not open_incidents(engine)
    assert feed(engine, [flaps[4]]) == []  # now chronic: nothing opens
    # A real fault beside it: the chronic alert joins as evidence but neither roots it nor
    # keeps it open.
    at = T0 + 4 * 1800 * S + 10 * S
    fault = [
        alert("latency", ("service", "gateway"), at, score=0.8),
        alert("latency", ("service", "frontend"), at + 30 * S, score=0.8),
    ]
    feed(engine, fault)
    flaps[5].first_seen_unix_nano = flaps[5].last_seen_unix_nano = at + 40 * S
    feed(engine, [flaps[5]])
    [incident] = open_incidents(engine)
    assert flaps[5].id in incident.alert_ids
    assert incident.candidates[0].entity == Entity("service", "gateway")
    [catalog] = [c for c in incident.candidates if c.entity == Entity("service", "catalog")]
    assert catalog.evidence["strength"] < 0.5 < flaps[5].score
    # Repeats of the chronic alert alone do not hold the incident open past the quiet period.
    flaps[5].last_seen_unix_nano = at + 400 * S
    changes = [c.change for c in engine.on_alert(flaps[5], False)]
    assert "resolved" in changes


def test_a_windowed_detector_is_dated_half_a_window_before_it_spoke() -> None:
    from opstrata.rootcause import estimated_onset

    drift = alert("prediction_drift", ("model", "fraud:v3"), T0 + 270 * S, layer=Layer.MLOPS,
                  service_name="model-server")  # fmt: skip
    drift.evidence = Evidence(
        details={"window_start_unix_nano": T0 - 330 * S, "window_end_unix_nano": T0 + 270 * S}
    )
    assert estimated_onset(drift) == T0 - 30 * S
    symptom = alert("latency", ("service", "llm-gateway"), T0 + 60 * S)
    assert estimated_onset(symptom) == T0 + 60 * S
    ranked = rank_root_causes([symptom, drift], shop())
    assert ranked[0].entity == Entity("model", "fraud:v3")
    assert ranked[0].evidence["onset_after_first_seconds"] == 0
