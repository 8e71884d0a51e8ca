"""Which attribute names carry what, under each convention an LLM call may be recorded with.

Every field lists its keys best first: the OpenTelemetry GenAI semantic conventions (current,
then deprecated names), OpenInference, Traceloop / OpenLLMetry (which now writes the GenAI names
and used to write ``llm.usage.*`` and ``gen_ai.prompt.N.*``), vLLM's server spans. A span that
carries two conventions is still one call: the first key present with a value wins, field by
field (an empty value, or a number field's value that is not a number, counts as absent).
"""

from __future__ import annotations

__all__ = [
    "CONVENTION_OF_PREFIX",
    "ERROR_EVENT",
    "FIELDS",
    "MARKER_KEYS",
    "MESSAGE_EVENTS",
    "MESSAGE_PREFIXES",
    "NON_CALL_OPERATIONS",
    "NUMBER_FIELDS",
    "OPERATION_DETAILS_EVENT",
    "TOKEN_FIELDS",
    "TTFT_EVENTS",
]

FIELDS: dict[str, tuple[str, ...]] = {
    "provider": (
        "gen_ai.provider.name",
        "gen_ai.system",
        "llm.provider",
        "llm.system",
        "llm.vendor",
    ),
    "request_model": ("gen_ai.request.model", "llm.request.model"),
    "response_model": ("gen_ai.response.model", "llm.model_name", "llm.response.model"),
    "operation": ("gen_ai.operation.name", "llm.request.type"),
    "oi_kind": ("openinference.span.kind",),
    "oi_invocation": ("llm.invocation_parameters",),
    "input_tokens": (
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.prompt_tokens",
        "llm.token_count.prompt",
        "llm.usage.prompt_tokens",
    ),
    "output_tokens": (
        "gen_ai.usage.output_tokens",
        "gen_ai.usage.completion_tokens",
        "llm.token_count.completion",
        "llm.usage.completion_tokens",
    ),
    "total_tokens": (
        "gen_ai.usage.total_tokens",
        "llm.token_count.total",
        "llm.usage.total_tokens",
    ),
    "cache_read_tokens": (
        "gen_ai.usage.cache_read.input_tokens",
        "gen_ai.usage.cache_read_input_tokens",
        "llm.token_count.prompt_details.cache_read",
        "gen_ai.usage.input_tokens_details.cached_tokens",
    ),
    "cache_write_tokens": (
        "gen_ai.usage.cache_creation.input_tokens",
        "gen_ai.usage.cache_creation_input_tokens",
        "llm.token_count.prompt_details.cache_write",
    ),
    "reasoning_tokens": (
        "gen_ai.usage.reasoning.output_tokens",
        "gen_ai.usage.reasoning_tokens",
        "llm.token_count.completion_details.reasoning",
        "gen_ai.usage.output_tokens_details.reasoning_tokens",
    ),
    "cost": ("llm.cost.total", "gen_ai.usage.cost", "gen_ai.cost.total"),
    "cost_input": ("llm.cost.prompt",),
    "cost_output": ("llm.cost.completion",),
    "ttft_seconds": (
        "gen_ai.latency.time_to_first_token",
        "gen_ai.response.time_to_first_chunk",
        "gen_ai.server.time_to_first_token",
    ),
    "e2e_seconds": ("gen_ai.latency.e2e",),
    "finish_reasons": (
        "gen_ai.response.finish_reasons",
        "llm.finish_reason",
        "llm.response.finish_reason",
        "gen_ai.completion.0.finish_reason",
    ),
    "error_type": ("error.type",),
    "prompt_name": (
        "gen_ai.prompt.name",
        "llm.prompt_template.name",
        "traceloop.prompt.key",
    ),
    "prompt_version": (
        "gen_ai.prompt.version",
        "llm.prompt_template.version",
        "traceloop.prompt.version",
    ),
    "prompt_template": ("llm.prompt_template.template", "traceloop.prompt.template"),
    "session_id": (
        "session.id",
        "gen_ai.conversation.id",
        "traceloop.association.properties.session_id",
        "gen_ai.session.id",
    ),
    "user_id": (
        "user.id",
        "enduser.id",
        "gen_ai.user.id",
        "traceloop.association.properties.user_id",
    ),
    "input_messages": ("gen_ai.input.messages",),
    "output_messages": ("gen_ai.output.messages",),
    "system_instructions": ("gen_ai.system_instructions",),
    "event_name": ("event.name",),
}

TOKEN_FIELDS = (
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)

NUMBER_FIELDS = frozenset(
    {
        *TOKEN_FIELDS,
        "cost",
        "cost_input",
        "cost_output",
        "ttft_seconds",
        "e2e_seconds",
    }
)
"""Fields read as numbers: a key whose value is not one does not hide a later key (the other
fields' keys are passed over when their value is empty)."""

MARKER_KEYS = frozenset(
    {
        "gen_ai.operation.name",
        "gen_ai.provider.name",
        "gen_ai.system",
        "gen_ai.request.model",
        "gen_ai.response.model",
        "llm.model_name",
        "llm.request.type",
        "llm.request.model",
        "openinference.span.kind",
        "gen_ai.latency.e2e",
    }
)
"""A span (or log record) with none of these keys is not looked at further."""

NON_CALL_OPERATIONS = frozenset({"execute_tool", "invoke_agent", "create_agent", "invoke_workflow"})
"""GenAI operations that are not a model call (their child spans are)."""

CONVENTION_OF_PREFIX = (
    ("openinference.", "openinference"),
    ("llm.token_count.", "openinference"),
    ("llm.model_name", "openinference"),
    ("llm.usage.", "traceloop"),
    ("llm.request.type", "traceloop"),
    ("traceloop.", "traceloop"),
    ("gen_ai.latency.", "vllm"),
    ("gen_ai.", "genai"),
)

MESSAGE_PREFIXES = (
    "llm.input_messages.",
    "llm.output_messages.",
    "gen_ai.prompt.",
    "gen_ai.completion.",
)
"""Per-message attributes: OpenInference's ``llm.input_messages.N.message.role`` and Traceloop's
older ``gen_ai.prompt.N.role`` / ``gen_ai.completion.N.content``."""

TTFT_EVENTS = frozenset(
    {"First Token Stream Event", "gen_ai.content.completion.chunk", "llm.content.completion.chunk"}
)
"""Span events whose first occurrence marks the first streamed token."""

ERROR_EVENT = "exception"

OPERATION_DETAILS_EVENT = "gen_ai.client.inference.operation.details"
MESSAGE_EVENTS = {
    "gen_ai.system.message": "system",
    "gen_ai.user.message": "user",
    "gen_ai.assistant.message": "assistant",
    "gen_ai.tool.message": "tool",
    "gen_ai.choice": "assistant",
}
"""The deprecated per-message events (span events or log records) and the role each implies."""
