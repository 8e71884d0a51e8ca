"""A small OpenAI-compatible HTTP server on loopback, for driving the real ``openai`` client.

It answers ``POST /v1/chat/completions`` plainly or as a server-sent event stream (with the
usage chunk when ``stream_options.include_usage`` is set), with the usage the test gives it, and
fails with an OpenAI-shaped error body when the model is ``FAIL_MODEL``.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FAIL_MODEL", "FakeOpenAI", "Usage"]

FAIL_MODEL = "gpt-broken"


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": self.reasoning_tokens,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }


@dataclass
class FakeOpenAI:
    """``usage`` maps a requested model to the usage answered for it; the response model is
    the requested one with ``response_suffix`` appended (as OpenAI answers with a dated name)."""

    usage: dict[str, Usage]
    response_suffix: str = "-2024-07-18"
    reply: str = "Hello! Reach me at bob@example.com."
    requests: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                outer.requests.append(body)
                if self.path.rstrip("/").endswith("/chat/completions"):
                    outer._chat(self, body)
                else:
                    outer._send(self, 404, {"error": {"message": "no such path"}})

            def log_message(self, *args: object) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- answers ---------------------------------------------------------------------------------

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _chat(self, handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        model = body["model"]
        if model == FAIL_MODEL or model not in self.usage:
            self._send(
                handler,
                400,
                {
                    "error": {
                        "message": f"The model `{model}` does not exist",
                        "type": "invalid_request_error",
                        "param": "model",
                        "code": "model_not_found",
                    }
                },
            )
            return
        usage = self.usage[model].as_json()
        response_model = model + self.response_suffix
        created = int(time.time())
        if not body.get("stream"):
            self._send(
                handler,
                200,
                {
                    "id": "chatcmpl-fake1",
                    "object": "chat.completion",
                    "created": created,
                    "model": response_model,
                    "system_fingerprint": "fp_fake",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": self.reply},
                            "logprobs": None,
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                },
            )
            return
        handler.send_response(200)
        handler.send_header("content-type", "text/event-stream")
        handler.send_header("cache-control", "no-cache")
        handler.send_header("connection", "close")
        handler.end_headers()
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        words = self.reply.split(" ")
        base = {
            "id": "chatcmpl-fake2",
            "object": "chat.completion.chunk",
            "created": created,
            "model": response_model,
            "system_fingerprint": "fp_fake",
        }
        chunks: list[dict[str, Any]] = [
            {
                **base,
                "choices": [
                    {"index": 0, "delta": {"role": "assistant", "content": ""},
                     "logprobs": None, "finish_reason": None}
                ],
            }
        ]  # fmt: skip
        for n, word in enumerate(words):
            text = word if n == 0 else " " + word
            chunks.append(
                {
                    **base,
                    "choices": [
                        {"index": 0, "delta": {"content": text}, "logprobs": None,
                         "finish_reason": None}
                    ],
                }
            )  # fmt: skip
        chunks.append(
            {**base, "choices": [{"index": 0, "delta": {}, "logprobs": None,
                                  "finish_reason": "stop"}]}
        )  # fmt: skip
        if include_usage:
            chunks.append({**base, "choices": [], "usage": usage})
        for chunk in chunks:
            handler.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            handler.wfile.flush()
        handler.wfile.write(b"data: [DONE]\n\n")
        handler.wfile.flush()
        handler.close_connection = True


# -- driving the real openai client, instrumented, against the fake server -------------------

CALLS_MADE = {
    "plain": ("gpt-4o-mini", Usage(1200, 300, cached_tokens=1000, reasoning_tokens=50)),
    "stream": ("gpt-4o", Usage(800, 150, cached_tokens=512)),
    "custom": ("acme-llm-7b", Usage(10_000, 2_000)),
    "unknown": ("mystery-model", Usage(40, 10)),
}
"""What the driver calls (and the fake server answers): name → (requested model, usage)."""

SECRETS = (
    "alice@example.com",
    "+1 415-555-0132",
    "4111 1111 1111 1111",
    "sk-proj-abcdefghijklmnopqrstuvwx",
)
"""Personal data and a key in the user's message, for the masking checks."""


def drive(instrumentation: str, endpoint: str, service: str, exports: str = "spans,logs") -> None:
    """Instrument the openai client with ``instrumentation`` (``openinference``, ``traceloop``
    or ``otel-v2``), make the calls of ``CALLS_MADE`` plus a failing one, and export what
    ``exports`` names of spans, logs and metrics with the real OTLP/HTTP exporters to
    ``endpoint``. Metrics are cumulative and exported twice (after the first two calls and at
    the end), so that the second export repeats the first one's counts."""
    import openai
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    wanted = set(exports.split(","))
    resource = Resource.create({"service.name": service, "host.name": "llm-host-1"})
    tracer_provider = TracerProvider(resource=resource)
    if "spans" in wanted:
        tracer_provider.add_span_processor(
            SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint + "/v1/traces", timeout=30))
        )
    logger_provider = LoggerProvider(resource=resource)
    if "logs" in wanted:
        logger_provider.add_log_record_processor(
            SimpleLogRecordProcessor(OTLPLogExporter(endpoint=endpoint + "/v1/logs", timeout=30))
        )
    readers = []
    if "metrics" in wanted:
        readers.append(
            PeriodicExportingMetricReader(
                OTLPMetricExporter(endpoint=endpoint + "/v1/metrics", timeout=30),
                export_interval_millis=3_600_000,  # only when flushed below
            )
        )
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    if instrumentation == "openinference":
        from openinference.instrumentation.openai import OpenAIInstrumentor
    elif instrumentation == "traceloop":
        from opentelemetry.instrumentation.openai import OpenAIInstrumentor
    else:
        from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
    OpenAIInstrumentor().instrument(
        tracer_provider=tracer_provider,
        logger_provider=logger_provider,
        meter_provider=meter_provider,
    )
    fake = FakeOpenAI({model: usage for model, usage in CALLS_MADE.values()})
    client = openai.OpenAI(base_url=fake.base_url, api_key="sk-test-key", max_retries=0)
    user_text = "I am " + ", ".join(SECRETS) + ". Hi!"

    def context():  # session, user and prompt template where the instrumentation reads them
        if instrumentation == "openinference":
            from openinference.instrumentation import using_attributes

            return using_attributes(
                session_id="sess-42",
                user_id="user-7",
                prompt_template="Greet {name}",
                prompt_template_version="v2",
                prompt_template_variables={"name": "Alice"},
            )
        import contextlib

        return contextlib.nullcontext()

    with context():
        client.chat.completions.create(
            model=CALLS_MADE["plain"][0],
            messages=[
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": user_text},
            ],
        )
        stream = client.chat.completions.create(
            model=CALLS_MADE["stream"][0],
            messages=[{"role": "user", "content": "Stream to me"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert streamed == fake.reply, streamed
        meter_provider.force_flush()  # a first cumulative export, repeated by the last one
        for name in ("custom", "unknown"):
            client.chat.completions.create(
                model=CALLS_MADE[name][0], messages=[{"role": "user", "content": name}]
            )
        try:
            client.chat.completions.create(
                model=FAIL_MODEL, messages=[{"role": "user", "content": "fail"}]
            )
        except openai.BadRequestError:
            pass
        else:
            raise AssertionError("the failing call did not fail")
    tracer_provider.shutdown()
    logger_provider.shutdown()
    meter_provider.shutdown()
    fake.close()


if __name__ == "__main__":
    import sys

    drive(*sys.argv[1:5])
