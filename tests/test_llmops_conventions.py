"""LLMOps from spans and log events written with the real OpenTelemetry SDK under each
convention's attribute names (current and deprecated GenAI names, OpenInference, Traceloop,
vLLM's server spans), and the alerts the calls raise: spikes, regressions, error bursts, a worse
prompt version, budgets — joined into incidents."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk._logs.export import LogRecordExportResult
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

from tests.otelsdk import log_exporter, make_logs, make_spans, resource, span_exporter
from tests.serverproc import ServerProcess

CONFIG = """
[plugins.llmops]
content = "keep"

[plugins.llmops.alerts]
bucket_seconds = 60
warmup_buckets = 3
min_calls = 3
prompt_min_calls = 5

[[plugins.llmops.budgets]]
kind = "user"
usd = 0.01
period = "day"
"""
MINUTE = 60 * 10**9
T0 = (time.time_ns() // MINUTE - 120) * MINUTE  # two hours ago, on a minute


def _wait(check: Any, timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("llmconv")
    config = base / "opstrata.toml"
    config.write_text(CONFIG)
    proc = ServerProcess(base / "data", config_file=config).start()
    yield proc
    assert proc.stop() == 0, "".join(proc.output)


def _send(server: ServerProcess, spans: Any) -> None:
    exporter = span_exporter(server, "http")
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    exporter.shutdown()


def _span(tracer: trace.Tracer, name: str, attributes: dict[str, Any], **kw: Any) -> str:
    start = kw.pop("start", None) or time.time_ns()
    duration = kw.pop("duration_ns", 50_000_000)
    error = kw.pop("error", None)
    span = tracer.start_span(name, attributes=attributes, start_time=start)
    if error:
        span.set_status(Status(StatusCode.ERROR, error))
    for event_name, event_attributes, offset in kw.pop("events", ()):
        span.add_event(event_name, event_attributes, timestamp=start + offset)
    span.end(end_time=start + duration)
    return format(span.get_span_context().span_id, "016x")


def _calls(server: ServerProcess, **params: Any) -> list[dict[str, Any]]:
    reply = server.api("/api/v1/llmops/calls", limit=1000, **params)
    assert reply.status_code == 200, reply.text
    return reply.json()["calls"]


def _call(server: ServerProcess, call: dict[str, Any]) -> dict[str, Any]:
    return server.api(f"/api/v1/llmops/calls/{call['trace_id']}/{call['span_id']}").json()


def test_conventions_are_read_and_a_span_with_two_counts_once(server: ServerProcess) -> None:
    ids: dict[str, str] = {}

    def build(tracer: trace.Tracer) -> None:
        # One span carrying both OpenInference and GenAI names, with a cost of its own.
        ids["both"] = _span(
            tracer,
            "ChatCompletion",
            {
                "openinference.span.kind": "LLM",
                "llm.model_name": "gpt-4o-mini",
                "llm.token_count.prompt": 100,
                "llm.token_count.completion": 10,
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "gpt-4o-mini",
                "gen_ai.response.model": "gpt-4o-mini",
                "gen_ai.usage.input_tokens": 100,
                "gen_ai.usage.output_tokens": 10,
                "gen_ai.provider.name": "openai",
                "llm.cost.total": 0.0123,
                "user.id": "u-both",
            },
        )
        # Deprecated GenAI names and Traceloop's older attributes (Anthropic, prompt caching).
        ids["old"] = _span(
            tracer,
            "anthropic.chat",
            {
                "gen_ai.system": "Anthropic",
                "gen_ai.request.model": "claude-3-5-haiku-20241022",
                "llm.request.type": "chat",
                "gen_ai.usage.prompt_tokens": 1000,
                "gen_ai.usage.completion_tokens": 100,
                "gen_ai.usage.cache_read_input_tokens": 400,
                "gen_ai.usage.cache_creation_input_tokens": 200,
                "llm.usage.total_tokens": 1100,
                "gen_ai.prompt.0.role": "user",
                "gen_ai.prompt.0.content": "Summarise this",
                "gen_ai.completion.0.role": "assistant",
                "gen_ai.completion.0.content": "Done",
                "gen_ai.completion.0.finish_reason": "end_turn",
                "traceloop.association.properties.user_id": "u-old",
                "traceloop.association.properties.session_id": "s-old",
                "traceloop.prompt.key": "summarise",
                "traceloop.prompt.version": "3",
                "error.type": "<class 'anthropic.RateLimitError'>",
            },
            error="rate limited",
        )
        # vLLM's server span.
        ids["vllm"] = _span(
            tracer,
            "llm_request",
            {
                "gen_ai.response.model": "meta-llama/Llama-3.1-8B-Instruct",
                "gen_ai.request.id": "cmpl-1",
                "gen_ai.usage.prompt_tokens": 64,
                "gen_ai.usage.completion_tokens": 32,
                "gen_ai.latency.time_to_first_token": 0.25,
                "gen_ai.latency.e2e": 1.5,
                "gen_ai.latency.time_in_queue": 0.01,
            },
            duration_ns=1_500_000_000,
        )
        # Agent and tool spans are not model calls, nor is an ordinary span.
        _span(
            tracer,
            "invoke_agent",
            {
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.agent.name": "helper",
                "gen_ai.request.model": "gpt-4o",
            },
        )
        _span(tracer, "execute_tool", {"gen_ai.operation.name": "execute_tool"})
        _span(tracer, "GET /", {"http.request.method": "GET"})
        # The older per-message span events.
        ids["events"] = _span(tracer, "chat gpt-4o", {
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 5,
            "gen_ai.usage.output_tokens": 2,
        }, start=time.time_ns(), events=[
            ("gen_ai.user.message", {"content": "hello there"}, 1_000),
            ("gen_ai.choice", {"content": "hi", "index": 0}, 2_000),
        ])  # fmt: skip

    _send(server, make_spans("conv-svc", build))
    calls = _wait(lambda: len(_calls(server, service="conv-svc")) >= 4 and
                  _calls(server, service="conv-svc"), what="calls")  # fmt: skip
    by_span = {c["span_id"]: c for c in calls}
    assert sorted(by_span) == sorted(ids.values()), "one call per LLM span, no agent/tool"

    both = by_span[ids["both"]]
    assert both["conventions"] == ["genai", "openinference"]
    assert (both["input_tokens"], both["output_tokens"]) == (100, 10)
    assert (both["cost_pico_usd"], both["cost_source"]) == (12_300_000_000, "span")

    old = by_span[ids["old"]]
    assert (old["provider"], old["model"]) == ("anthropic", "claude-3-5-haiku-20241022")
    assert (old["input_tokens"], old["output_tokens"], old["total_tokens"]) == (1000, 100, 1100)
    assert (old["cache_read_tokens"], old["cache_write_tokens"]) == (400, 200)
    # claude-3-5-haiku: 0.80 in, 0.08 cache read, 1.00 cache write, 4.00 out (USD per M).
    assert old["cost_pico_usd"] == 400 * 800_000 + 400 * 80_000 + 200 * 1_000_000 + 100 * 4_000_000
    assert (old["error_type"], old["is_error"]) == ("RateLimitError", True)
    assert (old["user_id"], old["session_id"]) == ("u-old", "s-old")
    assert (old["prompt_name"], old["prompt_version"]) == ("summarise", "3")
    assert old["finish_reason"] == "end_turn"
    assert set(old["conventions"]) == {"genai", "traceloop"}
    assert _call(server, old)["messages"] == {
        "input": [{"role": "user", "content": "Summarise this"}],
        "output": [{"role": "assistant", "content": "Done"}],
    }

    vllm = by_span[ids["vllm"]]
    assert vllm["model"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert (vllm["ttft_ms"], vllm["duration_ms"]) == (250.0, 1500.0)
    assert vllm["cost_usd"] is None  # no price for it: unpriced, reported, not free
    assert (
        "meta-llama/Llama-3.1-8B-Instruct"
        in server.api("/api/v1/llmops/models").json()["unpriced_models"]
    )
    assert "vllm" in vllm["conventions"]

    events = _call(server, by_span[ids["events"]])
    assert events["messages"] == {
        "input": [{"role": "user", "content": "hello there"}],
        "output": [{"role": "assistant", "content": "hi"}],
    }


def test_log_events_make_calls_and_carry_messages(server: ServerProcess) -> None:
    memory = InMemorySpanExporter()
    tracer_provider = TracerProvider(resource=resource("logs-svc"))
    tracer_provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = tracer_provider.get_tracer("genai")
    details = {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4.1-mini", "gen_ai.response.model": "gpt-4.1-mini",
        "gen_ai.usage.input_tokens": 2000, "gen_ai.usage.output_tokens": 500,
        "gen_ai.input.messages": json.dumps(
            [{"role": "user", "parts": [{"type": "text", "content": "from the event"}]}]
        ),
    }  # fmt: skip

    def emit(provider: Any) -> None:
        logger = provider.get_logger("genai")
        # Without a span: the event is the call.
        logger.emit(event_name="gen_ai.client.inference.operation.details",
                    attributes=details, timestamp=time.time_ns())  # fmt: skip
        # Inside a call's span: the deprecated message events are that call's messages.
        with tracer.start_as_current_span("chat gpt-4o", attributes={
            "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o",
            "gen_ai.usage.input_tokens": 7, "gen_ai.usage.output_tokens": 1,
        }):  # fmt: skip
            logger.emit(event_name="gen_ai.system.message", body={"content": "Be brief"})
            logger.emit(event_name="gen_ai.user.message", body={"content": "What is 2+2?"})
            logger.emit(event_name="gen_ai.choice",
                        body={"index": 0, "finish_reason": "stop",
                              "message": {"role": "assistant", "content": "4"}})  # fmt: skip

    exporter = log_exporter(server, "http")
    assert exporter.export(make_logs(emit)) is LogRecordExportResult.SUCCESS
    exporter.shutdown()
    tracer_provider.shutdown()
    _send(server, memory.get_finished_spans())

    calls = _wait(lambda: len(_calls(server, service="logs-svc")) == 2
                  and _calls(server, service="logs-svc"), what="both calls")  # fmt: skip
    by_model = {c["model"]: c for c in calls}
    event_call = by_model["gpt-4.1-mini"]
    assert (event_call["source"], event_call["span_id"]) == ("event", "")
    assert event_call["cost_pico_usd"] == 2000 * 400_000 + 500 * 1_600_000
    span_call = by_model["gpt-4o"]
    assert span_call["source"] == "span"
    detail = _call(server, span_call)
    assert detail["messages_source"] == "event"
    assert detail["messages"] == {
        "input": [{"role": "system", "content": "Be brief"},
                  {"role": "user", "content": "What is 2+2?"}],
        "output": [{"role": "assistant", "content": "4"}],
    }  # fmt: skip


def _minute_spans(tracer: trace.Tracer, minute: int, count: int, **over: Any) -> None:
    for i in range(count):
        failed = i < over.get("errors", 0)
        _span(tracer, "chat gpt-4o-mini", {
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "gpt-4o-mini", "gen_ai.response.model": "gpt-4o-mini",
            "gen_ai.usage.input_tokens": over.get("input", 1000),
            "gen_ai.usage.output_tokens": 100,
            "gen_ai.latency.time_to_first_token": over.get("ttft", 0.05),
            "gen_ai.prompt.name": "greet", "gen_ai.prompt.version": over.get("version", "v1"),
            "user.id": over.get("user", "regular"),
            **({"error.type": "openai.RateLimitError"} if failed else {}),
        }, start=T0 + minute * MINUTE + i * 1_000_000_000,
            duration_ns=over.get("duration_ns", 100_000_000),
            error="rate limited" if failed else None)  # fmt: skip


def test_alerts_for_spikes_regressions_errors_prompts_and_budgets(server: ServerProcess) -> None:
    for minute in range(6):  # the usual: 5 calls a minute, 1,000 tokens in, 100 ms
        _send(server, make_spans("chatbot", lambda t, m=minute: _minute_spans(t, m, 5)))
    # Minute 6: prompt v2 ships; calls get 20x the tokens, 10x slower, mostly failing.
    _send(server, make_spans("chatbot", lambda t: _minute_spans(
        t, 6, 5, input=20_000, duration_ns=1_000_000_000, ttft=0.5, errors=4, version="v2",
        user="big-spender")))  # fmt: skip
    for minute in (7, 8, 9):  # back to usual, moving event time on
        _send(server, make_spans("chatbot", lambda t, m=minute: _minute_spans(t, m, 5)))

    wanted = {
        ("cost_spike", "llm_model", "gpt-4o-mini"),
        ("token_spike", "llm_model", "gpt-4o-mini"),
        ("latency_regression", "llm_model", "gpt-4o-mini"),
        ("ttft_regression", "llm_model", "gpt-4o-mini"),
        ("error_burst", "llm_model", "gpt-4o-mini"),
        ("cost_spike", "service", "chatbot"),
        ("error_burst", "service", "chatbot"),
        ("prompt_regression", "prompt", "greet"),
        ("budget_exceeded", "user", "big-spender"),
    }

    def alerts() -> dict[tuple[str, str, str], dict[str, Any]] | None:
        found = server.api("/api/v1/alerts", plugin="llmops", limit=1000).json()["alerts"]
        keyed = {(a["kind"], a["entity"]["kind"], a["entity"]["name"]): a for a in found}
        return keyed if wanted <= set(keyed) else None

    found = _wait(alerts, what="every alert")
    onset = T0 + 6 * MINUTE
    for key in wanted - {("budget_exceeded", "user", "big-spender")}:
        alert = found[key]
        assert alert["layer"] == "llmops"
        assert alert["first_seen_unix_nano"] == onset, key
        assert alert["resource"]["service.name"] == "chatbot"
        assert alert["resource"]["host.name"] == "node-1"
        assert alert["evidence"]["exemplar_trace_ids"], key
        assert alert["evidence"]["observed"] > (alert["evidence"].get("expected") or 0)
    budget = found[("budget_exceeded", "user", "big-spender")]
    # 20,000 in + 100 out at gpt-4o-mini prices is $0.00306 a call: the 4th call crosses $0.01.
    assert budget["first_seen_unix_nano"] == onset + 3 * 1_000_000_000
    assert budget["evidence"]["observed"] == pytest.approx(4 * 0.00306)
    prompt = found[("prompt_regression", "prompt", "greet")]
    assert prompt["evidence"]["details"]["version"] == "v2"
    assert prompt["evidence"]["details"]["previous_version"] == "v1"
    spike = found[("cost_spike", "llm_model", "gpt-4o-mini")]
    assert spike["evidence"]["observed"] == pytest.approx(5 * 0.00306)
    assert not any(k[0] == "budget_exceeded" and k[2] == "regular" for k in found)

    def incident() -> list[dict[str, Any]]:
        incidents = server.api("/api/v1/incidents", limit=100).json()["incidents"]
        return [i for i in incidents if "gpt-4o-mini" in i["models"]]

    joined = _wait(incident, what="an incident for the model")
    assert "llmops" in joined[0]["layers"]
    assert "chatbot" in joined[0]["services"]
    # The normal minutes after the spike resolve the model's spike alerts.
    resolved = server.api("/api/v1/alerts", plugin="llmops", status="resolved").json()["alerts"]
    assert {a["kind"] for a in resolved if a["entity"]["name"] == "gpt-4o-mini"} >= {
        "cost_spike",
        "latency_regression",
        "error_burst",
    }


def test_drop_mode_stores_no_content(tmp_path: Path) -> None:
    config = tmp_path / "opstrata.toml"
    config.write_text('[plugins.llmops]\ncontent = "drop"\n')
    server = ServerProcess(tmp_path / "data", config_file=config).start()
    try:
        _send(server, make_spans("drop-svc", lambda t: _span(t, "chat", {
            "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o",
            "gen_ai.usage.input_tokens": 3, "gen_ai.usage.output_tokens": 1,
            "gen_ai.input.messages": json.dumps(
                [{"role": "user", "parts": [{"type": "text", "content": "secret plan"}]}]),
        })))  # fmt: skip
        call = _wait(lambda: _calls(server, service="drop-svc"), what="the call")[0]
        detail = server.api(f"/api/v1/llmops/calls/{call['trace_id']}/{call['span_id']}")
        assert detail.status_code == 200
        assert detail.json()["messages"] is None
        assert "secret plan" not in detail.text
        assert call["input_tokens"] == 3
    finally:
        assert server.stop() == 0


def test_calls_are_stored_once_across_a_kill_and_restart(tmp_path: Path) -> None:
    """Killed (-9) right after its spans were acknowledged, while their calls may still wait to
    be written: after the restart every call is there exactly once."""
    server = ServerProcess(tmp_path / "data").start()

    def calls_of(n: int, first: int) -> Any:
        def build(tracer: trace.Tracer) -> None:
            for i in range(first, first + n):
                _span(tracer, "chat", {
                    "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini",
                    "gen_ai.usage.input_tokens": 10, "gen_ai.usage.output_tokens": i,
                })  # fmt: skip

        return make_spans("crash-svc", build)

    try:
        _send(server, calls_of(20, 0))
        _wait(lambda: len(_calls(server, service="crash-svc")) == 20, what="first calls")
        _send(server, calls_of(30, 100))  # acknowledged = durable; the kill comes at once
        server.kill()
        server.start()
        _send(server, calls_of(5, 1000))

        def all_there() -> list[dict[str, Any]] | None:
            found = _calls(server, service="crash-svc")
            return found if len(found) >= 55 else None

        found = _wait(all_there, what="every call after the restart")
        time.sleep(1.5)  # a duplicate would show by now
        found = _calls(server, service="crash-svc")
        outputs = sorted(c["output_tokens"] for c in found)
        assert outputs == [*range(20), *range(100, 130), *range(1000, 1005)]
    finally:
        if server.proc is not None and server.proc.poll() is None:
            assert server.stop() == 0
