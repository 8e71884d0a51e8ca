"""LLM calls from the gateway: GenAI semantic-convention client spans, usage, 429s and retries.

A mixin of :class:`~opstrata.demo.traces.TraceBuilder`: it uses the builder's generator, span
writer and log sink. Over the provider's per-minute limit (``llm_load`` above 1) a share of the
calls is answered with a 429 that the gateway retries with back-off, so a surge of calls shows
as slower, partly failing calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from opentelemetry.trace import SpanKind

if TYPE_CHECKING:
    from opstrata.demo.environment import Leaf, Pod
    from opstrata.demo.faults import Effects
    from opstrata.demo.traces import TickOutput, _Request

__all__ = ["LLM_MODELS", "LlmCall", "LlmCalls"]

_NS = 1_000_000_000
_BASE_ERROR_RATE = 0.004
_RATE_LIMITED = ("RateLimitError", "Rate limit reached for requests")
LLM_MODELS = {
    # kind: request model, response model, input median, output median, s/output token
    "assistant": ("gpt-4o-mini", "gpt-4o-mini-2024-07-18", 900.0, 220.0, 0.011),
    "review": ("gpt-4o", "gpt-4o-2024-08-06", 650.0, 90.0, 0.022),
}


@dataclass(frozen=True)
class LlmCall:
    request_model: str
    response_model: str
    input_tokens: int
    output_tokens: int
    seconds: float
    error: str


class LlmCalls:
    """The LLM part of the trace builder."""

    llm_load: dict[str, float]
    """Request model -> calls over the last minute relative to the provider's limit."""

    def _llm(
        self,
        leaf: Leaf,
        req: _Request,
        parent: int,
        pod: Pod,
        start: int,
        fx: Effects,
        out: TickOutput,
    ) -> tuple[int, tuple[str, str] | None]:
        """An LLM call; over the provider's rate limit, 429s and retries with back-off."""
        rng = self.rng
        model = LLM_MODELS[leaf.llm][0]
        over = self.llm_load.get(model, 0.0)
        throttled = max(0.0, 1.0 - 1.0 / over) if over > 1 else 0.0
        cursor, error = start, None
        for attempt in range(3):
            limited = rng.random() < throttled
            cursor, error = self._llm_attempt(leaf, req, parent, pod, cursor, fx, out, limited)
            if error is None or error[0] != "RateLimitError":
                break
            cursor += int(rng.uniform(0.5, 1.0) * 2**attempt * _NS)
        return cursor, error

    def _llm_attempt(
        self,
        leaf: Leaf,
        req: _Request,
        parent: int,
        pod: Pod,
        start: int,
        fx: Effects,
        out: TickOutput,
        limited: bool,
    ) -> tuple[int, tuple[str, str] | None]:
        rng = self.rng
        model, response_model, in_median, out_median, per_token = LLM_MODELS[leaf.llm]
        prompt = "assistant-answer" if leaf.llm == "assistant" else "fraud-review"
        version = "v7" if leaf.llm == "assistant" else "v3"
        if leaf.llm == "assistant" and fx.prompt_version:
            version = fx.prompt_version
            in_median *= fx.prompt_input_factor
            out_median *= fx.prompt_output_factor
        input_tokens = max(20, int(rng.lognormvariate(math.log(in_median), 0.35)))
        output_tokens = max(1, min(1024, int(rng.lognormvariate(math.log(out_median), 0.5))))
        failed = limited or rng.random() < _BASE_ERROR_RATE + fx.dep_errors.get("openai", 0.0)
        error = _RATE_LIMITED if failed else None
        ttft = rng.lognormvariate(math.log(0.35), 0.3) + input_tokens / 20000
        seconds = ttft if failed else ttft + output_tokens * per_token * rng.uniform(0.8, 1.2)
        seconds *= fx.dep_latency.get("openai", 1.0)
        end = start + int(seconds * _NS)
        span_id = self._id(64)
        attrs: dict[str, object] = dict(leaf.attributes)
        attrs.update(
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "openai",
                "gen_ai.request.model": model,
                "gen_ai.request.temperature": 0.2 if leaf.llm == "assistant" else 0.0,
                "gen_ai.request.max_tokens": 1024,
                "gen_ai.prompt.name": prompt,
                "llm.prompt_template.version": version,
                "gen_ai.conversation.id": f"conv-{req.trace_id % 100_000:05d}",
                "user.id": req.user,
                "peer.service": "openai",
                "http.response.status_code": 429 if failed else 200,
            }
        )
        if not failed:
            cached = 512 if input_tokens > 600 and rng.random() < 0.6 else 0
            attrs.update(
                {
                    "gen_ai.response.model": response_model,
                    "gen_ai.response.id": f"chatcmpl-{self._id(64):016x}",
                    "gen_ai.response.finish_reasons": ("length",)
                    if output_tokens >= 1024
                    else ("stop",),
                    "gen_ai.usage.input_tokens": input_tokens,
                    "gen_ai.usage.output_tokens": output_tokens,
                    "gen_ai.usage.cache_read.input_tokens": cached,
                }
            )
            if leaf.llm == "assistant":
                attrs["gen_ai.request.stream"] = True
                attrs["gen_ai.response.time_to_first_chunk"] = round(ttft, 4)
        self._span(
            out,
            f"chat {model}",
            req,
            span_id,
            parent,
            pod,
            SpanKind.CLIENT,
            start,
            end,
            attrs,
            "openai",
            error,
            self._exception(end, error) if error else (),
        )
        out.llm.append(
            LlmCall(
                model,
                response_model,
                0 if failed else input_tokens,
                0 if failed else output_tokens,
                seconds,
                error[0] if error else "",
            )
        )
        if failed:
            self.logs.write(
                pod,
                end,
                "WARN",
                f"openai returned 429 for {model}, backing off",
                req.trace_id,
                span_id,
            )
        else:
            self.logs.write(
                pod,
                end,
                "INFO",
                f"chat completion for {prompt} {version}: {input_tokens} prompt "
                f"tokens, {output_tokens} completion tokens in "
                f"{seconds * 1000:.0f} ms",
                req.trace_id,
                span_id,
            )
        return end, error
