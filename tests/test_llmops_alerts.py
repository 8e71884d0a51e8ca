"""LLMOps alerts stay quiet on noisy but normal traffic and still catch real faults quickly.

Traffic is written with the real OpenTelemetry SDK and sent over OTLP/HTTP to a real server
with the default alert settings: a few calls per one-minute bucket (a daily shape squeezed into
three hours, 2 to 10 calls a minute), lognormal latencies, TTFTs and token counts, 1 % failed
calls (without a response model, as real failures are). One service sees only that; four
others see it and then a latency regression, a cost spike (a prompt five times longer), an
error burst, a surge of calls. The statistics themselves are checked without a server.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import Status, StatusCode

from opstrata.plugins.llmops.detect_stats import betabinom_sf, error_p, upper_tail_p
from tests.otelsdk import make_spans, span_exporter
from tests.serverproc import ServerProcess

MINUTE = 60 * 10**9
T0 = (time.time_ns() // MINUTE - 600) * MINUTE  # ten hours ago, on a minute
NORMAL_MINUTES = 150
FAULT_MINUTES = 4
ONSET = T0 + NORMAL_MINUTES * MINUTE
STREAMS = {  # service: (model, fault); one model each, all in the shipped price table
    "quiet-svc": ("gpt-4.1-nano", None),
    "slow-svc": ("gpt-4o-mini", "latency"),
    "costly-svc": ("gpt-4.1-mini", "cost"),
    "failing-svc": ("gpt-4o", "errors"),
    "surging-svc": ("gpt-5-mini", "surge"),  # a runaway loop: fifteen times the calls
}


def _calls_per_minute(minute: int) -> float:
    """2 to 10 calls a minute: a daily shape over three hours (the faults start at the mean)."""
    return 6.0 * (1 + 0.65 * math.sin(2 * math.pi * (minute - NORMAL_MINUTES) / 180))


def _stream(tracer: trace.Tracer, model: str, fault: str | None, rng: np.random.Generator,
            minutes: range) -> None:  # fmt: skip
    for minute in minutes:
        faulty = fault if minute >= NORMAL_MINUTES else None
        surge = 15 if faulty == "surge" else 1
        for _ in range(rng.poisson(surge * _calls_per_minute(minute))):
            start = T0 + minute * MINUTE + int(rng.integers(MINUTE - 10**9))
            input_tokens = int(rng.lognormal(math.log(900), 0.35))
            if faulty == "cost":
                input_tokens *= 5
            output_tokens = max(1, int(rng.lognormal(math.log(220), 0.5)))
            ttft = rng.lognormal(math.log(0.35), 0.3)
            seconds = ttft + output_tokens * 0.011 * rng.uniform(0.8, 1.2)
            if faulty == "latency":
                ttft, seconds = ttft * 4, seconds * 4
            failed = rng.random() < (0.6 if faulty == "errors" else 0.01)
            attributes: dict[str, Any] = {
                "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                "gen_ai.request.model": model,
            }  # fmt: skip
            if failed:
                seconds = ttft
                attributes["error.type"] = "openai.RateLimitError"
            else:
                attributes.update({
                    "gen_ai.response.model": f"{model}-2025-01-01",
                    "gen_ai.usage.input_tokens": input_tokens,
                    "gen_ai.usage.output_tokens": output_tokens,
                    "gen_ai.response.time_to_first_chunk": round(float(ttft), 4),
                })  # fmt: skip
            span = tracer.start_span(f"chat {model}", attributes=attributes, start_time=start)
            if failed:
                span.set_status(Status(StatusCode.ERROR, "rate limited"))
            span.end(end_time=start + int(seconds * 1e9))


def _send(server: ServerProcess, minutes: range, rng: np.random.Generator) -> None:
    for service, (model, fault) in STREAMS.items():
        spans = make_spans(service, lambda t, m=model, f=fault: _stream(t, m, f, rng, minutes))
        exporter = span_exporter(server, "http")
        assert exporter.export(spans) is SpanExportResult.SUCCESS
        exporter.shutdown()


def _alerts(server: ServerProcess) -> list[dict[str, Any]]:
    reply = server.api("/api/v1/alerts", plugin="llmops", limit=1000)
    assert reply.status_code == 200, reply.text
    return reply.json()["alerts"]


WANTED = {
    ("latency_regression", "llm_model", "gpt-4o-mini"),
    ("ttft_regression", "llm_model", "gpt-4o-mini"),
    ("cost_spike", "llm_model", "gpt-4.1-mini"),
    ("token_spike", "llm_model", "gpt-4.1-mini"),
    ("cost_spike", "service", "costly-svc"),
    ("error_burst", "llm_model", "gpt-4o"),
    ("error_burst", "service", "failing-svc"),
    ("cost_spike", "llm_model", "gpt-5-mini"),
    ("token_spike", "service", "surging-svc"),
}


@pytest.fixture(scope="module")
def alerts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[dict[str, Any]]]:
    base = tmp_path_factory.mktemp("llmalerts")
    server = ServerProcess(base / "data").start()
    try:
        rng = np.random.default_rng(7)
        for first in range(0, NORMAL_MINUTES + FAULT_MINUTES, 30):
            _send(server, range(first, min(first + 30, NORMAL_MINUTES + FAULT_MINUTES)), rng)

        def every_fault_seen() -> list[dict[str, Any]] | None:
            found = _alerts(server)
            keys = {(a["kind"], a["entity"]["kind"], a["entity"]["name"]) for a in found}
            return found if keys >= WANTED else None

        deadline, found = time.monotonic() + 60, None
        while found is None and time.monotonic() < deadline:
            found = every_fault_seen()
            time.sleep(0.3)
        time.sleep(1.0)  # buckets closed in the same pass may still be folding in
        yield _alerts(server) if found is not None else []
    finally:
        assert server.stop() == 0


def test_normal_noisy_sparse_traffic_raises_no_alert(alerts: list[dict[str, Any]]) -> None:
    assert alerts, "the faults' alerts never came: nothing was judged"
    quiet = [a for a in alerts if a["entity"]["name"] in ("quiet-svc", "gpt-4.1-nano")]
    assert quiet == []
    before = [a["summary"] for a in alerts if a["first_seen_unix_nano"] < ONSET]
    assert before == [], "alerts on normal traffic before any fault"


def test_regression_cost_spike_and_error_burst_alert_within_two_buckets(
    alerts: list[dict[str, Any]],
) -> None:
    found = {(a["kind"], a["entity"]["kind"], a["entity"]["name"]): a for a in alerts}
    assert set(found) >= WANTED
    for key in WANTED:
        alert = found[key]
        assert ONSET <= alert["first_seen_unix_nano"] <= ONSET + MINUTE, key
        evidence = alert["evidence"]
        assert evidence["observed"] > evidence["expected"], key
        if evidence["details"]["test"] != "volume":
            assert evidence["details"]["p_value"] <= 1e-4, key
        assert evidence["exemplar_trace_ids"], key
    # Failed calls carry no response model: they count with the model that was asked for.
    assert found[("error_burst", "llm_model", "gpt-4o")]["evidence"]["observed"] > 0.3
    spike = found[("cost_spike", "llm_model", "gpt-4.1-mini")]["evidence"]["details"]
    assert spike["test"] == "per_call"
    assert spike["USD_per_call"] > 2 * spike["usual_USD_per_call"]
    # A surge of ordinary calls is a spike by volume (far above the usual daily high), not
    # per call.
    surge = found[("cost_spike", "llm_model", "gpt-5-mini")]["evidence"]
    assert surge["details"]["test"] == "volume"
    assert surge["details"]["calls"] > 3 * surge["details"]["usual_high_calls"]
    # Each fault raises only its own kinds: a slow model is not also a cost spike.
    kinds = {k[0] for k in found if k[2] in ("gpt-4o-mini", "slow-svc")}
    assert kinds <= {"latency_regression", "ttft_regression"}
    assert {k[0] for k in found if k[2] in ("gpt-5-mini", "surging-svc")} <= {
        "cost_spike",
        "token_spike",
    }


def test_tail_test_holds_its_false_alarm_rate_on_lognormal_noise() -> None:
    """Exchangeable buckets of 3 to 30 calls against baselines of 40 to 512: the share of
    p-values at or below alpha stays at or below alpha (exact test, discrete: below)."""
    rng = np.random.default_rng(3)
    alpha, trials, hits = 0.01, 4000, 0
    for _ in range(trials):
        base = rng.lognormal(0, 0.8, int(rng.integers(40, 513)))
        bucket = rng.lognormal(0, 0.8, int(rng.integers(3, 31)))
        hits += upper_tail_p(base, bucket) <= alpha
    assert hits / trials <= alpha * 1.3
    # ... and it has power: a bucket of 6 calls four times slower is caught.
    base = rng.lognormal(0, 0.5, 512)
    assert upper_tail_p(base, 4 * rng.lognormal(0, 0.5, 6)) < 1e-4
    assert upper_tail_p(base, rng.lognormal(0, 0.5, 6)) > 1e-4


def test_error_test_accounts_for_the_baseline_size() -> None:
    # Three failures in five calls: alarming after 500 clean calls, not after 10.
    assert error_p(3, 5, 0, 500) < 1e-4
    assert error_p(3, 5, 0, 10) > error_p(3, 5, 0, 500)
    # A model that usually fails 20 % of the time is not bursting at 3 of 5.
    assert error_p(3, 5, 100, 500) > 0.01


def test_beta_binomial_tail_matches_scipy() -> None:
    from scipy.stats import betabinom

    cases = [(6, 6, 26, 487), (4, 8, 26, 487), (3, 5, 0.5, 549.5), (1, 1, 1, 1), (0, 4, 2, 3),
             (9, 8, 2, 3), (50, 300, 26, 487), (40, 200, 3, 40)]  # fmt: skip
    for k, n, a, b in cases:
        assert betabinom_sf(k, n, a, b) == pytest.approx(betabinom.sf(k - 1, n, a, b), rel=1e-6)
