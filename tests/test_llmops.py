"""LLMOps with real instrumentations: the real ``openai`` client, instrumented in turn by
OpenInference, Traceloop (OpenLLMetry) and the official OpenTelemetry ``openai-v2``, calls a
local OpenAI-compatible server and exports with the real OTLP exporters to a running opstrata;
the API answers exact token counts and costs, normalised errors and masked messages."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.llmops_fake_openai import FAIL_MODEL, SECRETS
from tests.serverproc import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
DATED = "-2024-07-18"  # the fake server answers with a dated model name, as OpenAI does

RUNS = {
    # service name: (instrumentation, extra environment)
    "svc-openinference": ("openinference", {}),
    "svc-traceloop": ("traceloop", {"TRACELOOP_TRACE_CONTENT": "true"}),
    "svc-v2": ("otel-v2", {"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "SPAN_AND_EVENT"}),
    "svc-v2-events": (
        "otel-v2",
        {"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "EVENT_ONLY"},
    ),
}
EXPORTS = {"svc-v2": "spans,logs,metrics", "svc-v2-metrics": "metrics"}
"""What each service exports (spans and logs unless named here). svc-v2 sends its GenAI metrics
beside its spans (they must not count twice); svc-v2-metrics sends nothing but metrics."""
METRICS_ONLY = {"svc-v2-metrics": ("otel-v2", {})}

# Prices in pico-dollars per token: gpt-4o-mini 0.15/0.60 USD per M (cache read 0.075), gpt-4o
# 2.50/10.00 (cache read 1.25), acme-llm-* 0.20/0.80 from the settings below.
# What each instrumentation reports of the usage the fake server answers decides the cost:
# OpenInference and Traceloop report cached (and, but Traceloop's stream, reasoning) tokens,
# openai-v2 reports neither, so all its input is priced as uncached.
PLAIN_WITH_CACHE = 200 * 150_000 + 1000 * 75_000 + 250 * 600_000 + 50 * 600_000  # 285_000_000
PLAIN_NO_CACHE = 1200 * 150_000 + 300 * 600_000  # 360_000_000
STREAM_WITH_CACHE = 288 * 2_500_000 + 512 * 1_250_000 + 150 * 10_000_000  # 2_860_000_000
STREAM_NO_CACHE = 800 * 2_500_000 + 150 * 10_000_000  # 3_500_000_000
CUSTOM = 10_000 * 200_000 + 2_000 * 800_000  # 3_600_000_000

EXPECTED: dict[str, dict[str, dict[str, Any]]] = {
    "svc-openinference": {
        "gpt-4o-mini": {"in": 1200, "out": 300, "cached": 1000, "reasoning": 50,
                        "cost": PLAIN_WITH_CACHE},
        "gpt-4o": {"in": 800, "out": 150, "cached": 512, "reasoning": 0,
                   "cost": STREAM_WITH_CACHE},
    },
    "svc-traceloop": {
        "gpt-4o-mini": {"in": 1200, "out": 300, "cached": 1000, "reasoning": 50,
                        "cost": PLAIN_WITH_CACHE},
        "gpt-4o": {"in": 800, "out": 150, "cached": 512, "reasoning": None,
                   "cost": STREAM_WITH_CACHE},
    },
    "svc-v2": {
        "gpt-4o-mini": {"in": 1200, "out": 300, "cached": None, "reasoning": None,
                        "cost": PLAIN_NO_CACHE},
        "gpt-4o": {"in": 800, "out": 150, "cached": None, "reasoning": None,
                   "cost": STREAM_NO_CACHE},
    },
}  # fmt: skip
EXPECTED["svc-v2-events"] = EXPECTED["svc-v2"]
# From metrics alone openai-v2 reports what its spans do: input and output tokens per call.
EXPECTED["svc-v2-metrics"] = EXPECTED["svc-v2"]

CONFIG = """
[plugins.llmops]
content = "mask"

[[plugins.llmops.prices]]
pattern = "acme-llm-*"
input = 0.20
output = 0.80
"""


def _wait(check: Any, timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def llm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server that every instrumentation exported its calls to (run side by side, each in
    its own process: the instrumentors patch the openai module globally)."""
    base = tmp_path_factory.mktemp("llmops")
    config = base / "opstrata.toml"
    config.write_text(CONFIG)
    server = ServerProcess(base / "data", config_file=config).start()
    try:
        procs = {
            service: subprocess.Popen(
                [sys.executable, "-m", "tests.llmops_fake_openai", inst, server.http_base,
                 service, EXPORTS.get(service, "spans,logs")],
                cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True,
            )
            for service, (inst, env) in {**RUNS, **METRICS_ONLY}.items()
        }  # fmt: skip
        for service, proc in procs.items():
            output, _ = proc.communicate(timeout=120)
            assert proc.returncode == 0, f"{service}: {output}"

        def all_in() -> bool:
            calls = server.api("/api/v1/llmops/calls", limit=1000).json()["calls"]
            usage = server.api("/api/v1/llmops/usage", service="svc-v2-metrics").json()["rows"]
            return len(calls) >= 5 * len(RUNS) and sum(r["calls"] for r in usage) >= 5

        _wait(all_in, what="every call stored")
        yield server
    finally:
        assert server.stop() == 0, "".join(server.output)


def _calls(server: ServerProcess, **params: Any) -> list[dict[str, Any]]:
    reply = server.api("/api/v1/llmops/calls", limit=1000, **params)
    assert reply.status_code == 200, reply.text
    return reply.json()["calls"]


def _by_model(calls: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["request_model"]: c for c in calls}


@pytest.mark.parametrize("service", list(RUNS))
def test_each_call_is_recorded_once_with_exact_tokens_and_cost(
    llm_server: ServerProcess, service: str
) -> None:
    calls = _calls(llm_server, service=service)
    assert sorted(c["request_model"] for c in calls) == sorted(
        ["gpt-4o-mini", "gpt-4o", "acme-llm-7b", "mystery-model", FAIL_MODEL]
    )
    by_model = _by_model(calls)
    for model, want in EXPECTED[service].items():
        call = by_model[model]
        assert call["response_model"] == model + DATED
        assert call["provider"] == "openai"
        assert call["operation"] == "chat"
        assert call["input_tokens"] == want["in"]
        assert call["output_tokens"] == want["out"]
        assert call["total_tokens"] == want["in"] + want["out"]
        assert call["cache_read_tokens"] == want["cached"]
        assert call["reasoning_tokens"] == want["reasoning"]
        assert call["cost_pico_usd"] == want["cost"]
        assert call["cost_usd"] == want["cost"] / 10**12
        assert call["cost_source"] == "table"
        assert call["is_error"] is False
        # openai-v2 puts a streamed call's finish reason only in its output messages, which
        # EVENT_ONLY keeps off the span: then the span has none.
        streamed_events_only = service == "svc-v2-events" and model == "gpt-4o"
        assert call["finish_reason"] == ("" if streamed_events_only else "stop")
    custom = by_model["acme-llm-7b"]
    assert (custom["cost_pico_usd"], custom["cost_source"]) == (CUSTOM, "table")
    unknown = by_model["mystery-model"]
    assert unknown["input_tokens"] == 40
    assert unknown["cost_usd"] is None and unknown["cost_source"] is None


@pytest.mark.parametrize("service", list(RUNS))
def test_failing_call_has_normalised_error_type(llm_server: ServerProcess, service: str) -> None:
    failed = _calls(llm_server, service=service, error="true")
    assert [c["request_model"] for c in failed] == [FAIL_MODEL]
    assert failed[0]["error_type"] == "BadRequestError"
    assert failed[0]["is_error"] is True


def test_streaming_calls_have_time_to_first_token(llm_server: ServerProcess) -> None:
    for service in ("svc-openinference", "svc-traceloop"):
        stream = _by_model(_calls(llm_server, service=service))["gpt-4o"]
        assert stream["ttft_ms"] is not None
        assert 0 < stream["ttft_ms"] <= stream["duration_ms"]
    # openai-v2 records no first-token time: none is made up.
    assert _by_model(_calls(llm_server, service="svc-v2"))["gpt-4o"]["ttft_ms"] is None


@pytest.mark.parametrize(
    ("service", "source"),
    [
        ("svc-openinference", "span"),
        ("svc-traceloop", "span"),
        ("svc-v2", "span"),
        ("svc-v2-events", "event"),  # EVENT_ONLY: the messages come from the log event
    ],
)
def test_messages_are_stored_masked(llm_server: ServerProcess, service: str, source: str) -> None:
    plain = _by_model(_calls(llm_server, service=service))["gpt-4o-mini"]
    reply = llm_server.api(f"/api/v1/llmops/calls/{plain['trace_id']}/{plain['span_id']}")
    assert reply.status_code == 200, reply.text
    detail = reply.json()
    assert detail["messages_source"] == source
    messages = detail["messages"]
    roles = [m["role"] for m in messages["input"]]
    assert roles == ["system", "user"]
    user = messages["input"][1]["content"]
    assert user == "I am [EMAIL], [PHONE], [CARD], [API_KEY]. Hi!"
    assert messages["output"] == [{"role": "assistant", "content": "Hello! Reach me at [EMAIL]."}]
    text = reply.text
    for secret in (*SECRETS, "bob@example.com"):
        assert secret not in text


def test_usage_groups_by_service_and_model_exactly(llm_server: ServerProcess) -> None:
    reply = llm_server.api("/api/v1/llmops/usage", group_by="service,model", latency="true")
    assert reply.status_code == 200, reply.text
    rows = {(r["group"]["service"], r["group"]["model"]): r for r in reply.json()["rows"]}
    # svc-v2 sends spans and metrics of the same calls: counted once, from the spans.
    # svc-v2-metrics sends only metrics: its calls are counted from them, to the same sums.
    for service, models in EXPECTED.items():
        for model, want in models.items():
            row = rows[(service, model + DATED)]
            assert row["calls"] == 1 and row["errors"] == 0
            assert row["input_tokens"] == want["in"]
            assert row["output_tokens"] == want["out"]
            assert row["cache_read_tokens"] == (want["cached"] or 0)
            assert row["cost_pico_usd"] == want["cost"]
            assert row["unpriced_calls"] == 0
            # From metrics: the operation.duration histogram's buckets, interpolated.
            assert row["latency_ms"]["p50"] > 0
        totals = [r for (s, _), r in rows.items() if s == service]
        assert sum(r["calls"] for r in totals) == 5
        assert sum(r["errors"] for r in totals) == 1
        assert sum(r["cost_pico_usd"] for r in totals) == (
            sum(m["cost"] for m in models.values()) + CUSTOM
        )
        # The unknown model and the failed call are unpriced, not free.
        assert sum(r["unpriced_calls"] for r in totals) == 2


def test_usage_by_model_and_day(llm_server: ServerProcess) -> None:
    reply = llm_server.api("/api/v1/llmops/usage", group_by="model", bucket="1d")
    body = reply.json()
    assert body["bucket_seconds"] == 86400
    day_ns = 86400 * 10**9
    mini = [r for r in body["rows"] if r["group"]["model"] == "gpt-4o-mini" + DATED]
    assert sum(r["calls"] for r in mini) == len(RUNS) + len(METRICS_ONLY)
    assert all(r["bucket_unix_nano"] % day_ns == 0 for r in body["rows"])
    assert sum(r["cost_pico_usd"] for r in mini) == 2 * PLAIN_WITH_CACHE + 3 * PLAIN_NO_CACHE
    # The day rollup answers this; with latency the day sketches add percentiles: same sums.
    detailed = llm_server.api(
        "/api/v1/llmops/usage", group_by="model", bucket="1d", latency="true"
    ).json()
    strip = ("latency_ms", "ttft_ms")
    assert [{k: v for k, v in r.items() if k not in strip} for r in detailed["rows"]] == [
        {k: v for k, v in r.items() if k not in strip} for r in body["rows"]
    ]
    bad = llm_server.api("/api/v1/llmops/usage", group_by="model;drop table x")
    assert bad.status_code == 400


def test_models_report_unpriced_models(llm_server: ServerProcess) -> None:
    body = llm_server.api("/api/v1/llmops/models").json()
    assert body["unpriced_models"] == [FAIL_MODEL, "mystery-model" + DATED]
    assert body["unpriced_calls"] == 2 * len(RUNS)
    models = {m["model"]: m for m in body["models"]}
    assert models["gpt-4o-mini" + DATED]["price_pattern"] == "gpt-4o-mini*"
    assert models["acme-llm-7b" + DATED]["price_pattern"] == "acme-llm-*"
    assert models["mystery-model" + DATED]["priced"] is False
    assert models[FAIL_MODEL]["error_rate"] == 1.0


def test_sessions_users_and_prompt_versions_from_openinference(llm_server: ServerProcess) -> None:
    session = llm_server.api("/api/v1/llmops/sessions/sess-42").json()
    assert session["calls"] == 5
    assert session["users"] == ["user-7"]
    assert session["services"] == ["svc-openinference"]
    assert [c["time_unix_nano"] for c in session["call_list"]] == sorted(
        c["time_unix_nano"] for c in session["call_list"]
    )
    assert llm_server.api("/api/v1/llmops/sessions/nope").status_code == 404
    prompts = llm_server.api("/api/v1/llmops/prompts").json()
    assert len(prompts) == 1
    versions = prompts[0]["versions"]
    assert [v["version"] for v in versions] == ["v2"]
    assert versions[0]["calls"] == 5 and versions[0]["errors"] == 1


def test_metrics_only_service_is_counted_from_its_genai_metrics(llm_server: ServerProcess) -> None:
    by_source = llm_server.api("/api/v1/llmops/usage", group_by="service,source").json()["rows"]
    sources = {(r["group"]["service"], r["group"]["source"]): r["calls"] for r in by_source}
    assert sources[("svc-v2-metrics", "metric")] == 5
    # svc-v2 also sent metrics for its calls: they are counted from its spans only.
    assert [s for (svc, s) in sources if svc == "svc-v2"] == ["span"]
    failed = llm_server.api(
        "/api/v1/llmops/usage", group_by="error_type", service="svc-v2-metrics"
    ).json()["rows"]
    assert {r["group"]["error_type"]: r["calls"] for r in failed} == {"": 4, "BadRequestError": 1}
    without = llm_server.api(
        "/api/v1/llmops/usage", service="svc-v2-metrics", metrics="false"
    ).json()["rows"]
    assert without == []
    # A question metrics cannot answer (users) leaves them out rather than guessing.
    by_user = llm_server.api("/api/v1/llmops/usage", group_by="user").json()["rows"]
    assert sum(r["calls"] for r in by_user) == 5 * len(RUNS)
