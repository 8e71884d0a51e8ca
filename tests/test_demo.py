"""The simulated environment: what it sends arrives as the scenario says, and the demo runs."""

from __future__ import annotations

import argparse
import itertools
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from opstrata.alerts import Entity
from opstrata.cli import main
from opstrata.demo import SCENARIOS, Simulation
from opstrata.demo.console import _plan
from opstrata.demo.environment import SERVICES
from tests.serverproc import ServerProcess
from tests.storeread import read_table

START = 1_699_999_980 * 1_000_000_000  # a whole minute, in the past
MIN = 60 * 1_000_000_000


def _median(values: list[float]) -> float:
    assert values, "no values to compare"
    return statistics.median(values)


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two simultaneous faults (a slow database and a failing GPU node), sent to a real server
    through the real OTLP/gRPC exporters, read back from its store and its API."""
    data = tmp_path_factory.mktemp("demo") / "data"
    # What is stored is the subject here, not what detectors make of it: without them the
    # server takes the run faster.
    detectors = '["aiops", "mlops", "llmops"]'
    server = ServerProcess(data, env={"OPSTRATA_DISABLED_PLUGINS": detectors}).start()
    sim = Simulation(
        "slow-database+gpu-node-trouble",
        seed=7,
        speed=0,
        warmup_minutes=5,
        duration_minutes=12,
        rate=1.5,
        start_unix_nano=START,
    )
    stats = sim.run(server.grpc_endpoint)
    try:
        # One checkout trace through the API, while the server runs.
        traces = {}
        for tick in sim.ticks():
            for span in tick.spans:
                if span.name == "POST /checkout":
                    traces[span.context.trace_id] = span
            if traces:
                break
        trace_id = f"{next(iter(traces)):032x}"
        reply = server.api(f"/api/v1/traces/{trace_id}")
        assert reply.status_code == 200, reply.text
        checkout = reply.json()
    finally:
        assert server.stop() == 0, "".join(server.output)
    return {
        "sim": sim,
        "stats": stats,
        "checkout": checkout,
        "spans": read_table(data, "otel_traces"),
        "logs": read_table(data, "otel_logs"),
        "gauges": read_table(data, "otel_metrics_gauge"),
        "sums": read_table(data, "otel_metrics_sum"),
        "histograms": read_table(data, "otel_metrics_histogram"),
    }


def test_every_service_arrives_with_its_kubernetes_resource(stored: dict) -> None:
    assert stored["stats"].failed_exports == 0
    spans = stored["spans"]
    assert len(spans) == stored["stats"].spans
    assert {s["ServiceName"] for s in spans} == set(SERVICES)
    for span in spans[:: max(1, len(spans) // 500)]:
        res = span["ResourceAttributes"]
        assert res["service.name"] == span["ServiceName"]
        assert res["k8s.pod.name"] == res["service.instance.id"]
        assert res["k8s.pod.name"].startswith(span["ServiceName"] + "-")
        assert res["host.name"] == res["k8s.node.name"]
        assert res["k8s.namespace.name"] == "shop" and res["cloud.region"] == "eu-west-1"
    nodes = {s["ServiceName"]: s["ResourceAttributes"]["k8s.node.name"] for s in spans}
    assert nodes["model-server"] == "gpu-node-1"


def test_calls_between_services_link_client_and_server_spans(stored: dict) -> None:
    spans = stored["spans"]
    by_id = {s["SpanId"]: s for s in spans}
    linked = 0
    for span in spans:
        if span["SpanKind"] == "Server" and span["ParentSpanId"]:
            parent = by_id[span["ParentSpanId"]]
            assert parent["SpanKind"] == "Client"
            assert parent["SpanAttributes"]["peer.service"] == span["ServiceName"]
            assert parent["TraceId"] == span["TraceId"]
            assert parent["Timestamp"] <= span["Timestamp"]
            linked += parent["ServiceName"] != span["ServiceName"]
    assert linked > 1000
    children = {s["ParentSpanId"] for s in spans}
    leaves = [s for s in spans if s["SpanAttributes"].get("db.system") == "postgresql"]
    assert leaves and all(s["SpanAttributes"]["peer.service"] == "postgresql" for s in leaves)
    assert not any(s["SpanId"] in children for s in leaves)
    # The API's view of one checkout: frontend down to the model server and the LLM review.
    trace = stored["checkout"]
    services = {s["service_name"] for s in trace["spans"]}
    assert {"frontend", "api-gateway", "checkout", "payment", "model-server"} <= services


def test_every_signal_carries_simulated_time(stored: dict) -> None:
    sim = stored["sim"]
    for row in stored["spans"]:
        assert sim.start_unix_nano <= row["Timestamp"] < sim.end_unix_nano + MIN
    for row in stored["logs"]:
        assert sim.start_unix_nano <= row["Timestamp"] < sim.end_unix_nano + 30 * MIN
    times = {row["TimeUnix"] for row in stored["gauges"]}
    interval = 30 * 1_000_000_000  # the default metric export interval, simulated
    assert min(times) == START + interval and max(times) == sim.end_unix_nano
    assert all((t - START) % interval == 0 for t in times)
    hosts = {
        r["ResourceAttributes"]["host.name"]
        for r in stored["gauges"]
        if r["MetricName"] == "system.cpu.utilization"
    }
    assert hosts == {"node-a", "node-b", "node-c", "gpu-node-1"}
    names = {r["MetricName"] for r in stored["histograms"]}
    assert {"http.server.request.duration", "gen_ai.client.token.usage"} <= names
    sums = {r["MetricName"] for r in stored["sums"]}
    assert {"gpu.errors", "nv_inference_request_success", "app.orders.placed"} <= sums


def test_the_slow_database_slows_its_callers_and_times_out(stored: dict) -> None:
    onset = stored["sim"].onset_unix_nano
    spans = stored["spans"]

    def durations(pick, after: bool) -> list[float]:
        return [
            s["Duration"]
            for s in spans
            if pick(s)
            and ((s["Timestamp"] >= onset + 3 * MIN) if after else s["Timestamp"] < onset)
        ]

    def db(s: dict) -> bool:
        return s["SpanAttributes"].get("peer.service") == "postgresql"

    def checkout(s: dict) -> bool:
        return s["ServiceName"] == "frontend" and s["SpanName"] == "POST /checkout"

    assert _median(durations(db, True)) > 8 * _median(durations(db, False))
    assert _median(durations(checkout, True)) > 1.5 * _median(durations(checkout, False))
    timeouts = [s["Timestamp"] for s in spans if db(s) and "QueryCanceled" in s["StatusMessage"]]
    assert timeouts and min(timeouts) >= onset
    assert stored["sim"].truths[0].root_cause == Entity("service", "postgresql")


def test_the_gpu_fault_cascades_to_the_model_and_the_llm(stored: dict) -> None:
    onset = stored["sim"].onset_unix_nano
    spans, gauges = stored["spans"], stored["gauges"]
    temps = [(r["TimeUnix"], r["Value"]) for r in gauges if r["MetricName"] == "gpu.temperature"]
    assert (
        max(v for t, v in temps if t >= onset + 3 * MIN)
        > max(v for t, v in temps if t < onset) + 10
    )
    model = [s for s in spans if s["ServiceName"] == "model-server"]
    before = [s for s in model if s["Timestamp"] < onset]
    after = [s for s in model if s["Timestamp"] >= onset + 4 * MIN]
    assert _median([s["Duration"] for s in after]) > 3 * _median([s["Duration"] for s in before])
    attrs = before[0]["SpanAttributes"]
    assert attrs["ml.model.name"] == "fraud-model" and attrs["ml.model.version"] == "3"
    assert {"ml.feature.amount", "ml.feature.country", "ml.prediction", "ml.prediction.id"} <= set(
        attrs
    )

    def score(group: list[dict]) -> float:
        return _median(
            [
                float(s["SpanAttributes"]["ml.prediction.score"])
                for s in group
                if "ml.prediction.score" in s["SpanAttributes"]
            ]
        )

    assert score(after) > score(before) + 0.1

    def reviews_per_minute(lo: int, hi: int) -> float:
        calls = [
            s
            for s in spans
            if s["SpanAttributes"].get("gen_ai.request.model") == "gpt-4o"
            and lo <= s["Timestamp"] < hi
        ]
        return len(calls) / ((hi - lo) / MIN)

    end = stored["sim"].end_unix_nano
    assert reviews_per_minute(onset + 4 * MIN, end) > 1.5 * reviews_per_minute(START, onset)
    llm = next(
        s for s in spans if s["SpanName"] == "chat gpt-4o-mini" and s["StatusCode"] != "Error"
    )["SpanAttributes"]
    assert llm["gen_ai.provider.name"] == "openai" and llm["gen_ai.operation.name"] == "chat"
    assert int(llm["gen_ai.usage.input_tokens"]) > 0 and int(llm["gen_ai.usage.output_tokens"]) > 0


def test_late_labels_name_stored_predictions(stored: dict) -> None:
    predictions = {
        s["SpanAttributes"]["ml.prediction.id"]
        for s in stored["spans"]
        if "ml.prediction.id" in s["SpanAttributes"]
    }
    labels = [r for r in stored["logs"] if "ml.label" in r["LogAttributes"]]
    assert labels
    assert all(r["LogAttributes"]["ml.prediction.id"] in predictions for r in labels)
    assert {r["LogAttributes"]["ml.label"] for r in labels} <= {"0", "1"}
    errors = [r for r in stored["logs"] if r["SeverityText"] == "ERROR"]
    assert any("Xid 48" in r["Body"] for r in errors)
    assert all(
        r["Timestamp"] >= stored["sim"].onset_unix_nano
        for r in errors
        if "Xid" in r["Body"] or "QueryCanceled" in r["Body"]
    )


def test_a_seed_fixes_the_telemetry() -> None:
    def first(seed: int) -> list[tuple]:
        sim = Simulation(
            "bad-deploy",
            seed=seed,
            speed=0,
            warmup_minutes=0,
            duration_minutes=1,
            start_unix_nano=START,
        )
        tick = next(iter(sim.ticks()))
        return [
            (s.context.span_id, s.start_time, s.end_time, s.name, dict(s.attributes or {}))
            for s in tick.spans
        ]

    assert first(3) == first(3)
    assert first(3) != first(4)
    truth = Simulation("normal", start_unix_nano=START).truth
    assert truth.root_cause is None and truth.onset_unix_nano is None
    for name, scenario in SCENARIOS.items():
        if name != "normal":
            truth = Simulation(name, start_unix_nano=START).truth
            assert truth.matches(scenario.root_cause) and truth.affected
    with pytest.raises(ValueError, match="unknown scenario"):
        Simulation("no-such-fault")


def test_demo_command_runs_end_to_end_and_cleans_up() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "opstrata.cli",
            "demo",
            "--scenario",
            "normal",
            "--speed",
            "0",
            "--rate",
            "1",
            "--warmup-minutes",
            "1",
            "--fault-minutes",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "=== scenario normal" in done.stdout
    sent = re.search(r"sent ([\d,]+) spans", done.stdout)
    assert sent and int(sent.group(1).replace(",", "")) > 100
    assert "verdict: no fault was injected" in done.stdout
    data_dir = re.search(r"data in (\S+)\)", done.stdout)
    assert data_dir and not Path(data_dir.group(1)).exists()


def test_demo_rejects_an_unknown_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--scenario", "no-such-fault"]) == 2
    assert "unknown scenario" in capsys.readouterr().err


def test_all_scenarios_run_on_one_clock_that_ends_now() -> None:
    args = argparse.Namespace(seed=2, speed=0.0, rate=1.0, warmup_minutes=10.0, fault_minutes=5.0)
    names = [n for n in SCENARIOS if n != "normal"]
    sims = _plan(names, args)
    assert [s.truth.scenario for s in sims] == names
    assert sims[0].fault_at_minutes == 10 and all(s.fault_at_minutes == 20 for s in sims[1:])
    for before, after in itertools.pairwise(sims):
        assert after.start_unix_nano == before.end_unix_nano
        assert after.onset_unix_nano - before.end_unix_nano == 20 * MIN
    assert sims[-1].end_unix_nano <= time.time_ns() < sims[-1].end_unix_nano + 2 * MIN
