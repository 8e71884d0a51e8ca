"""``/api/v1/llmops/``: usage, calls, models, prompts, sessions."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, get
from litestar.exceptions import NotFoundException, ValidationException
from litestar.params import Parameter

from opstrata.plugins.llmops import queries
from opstrata.plugins.llmops.queries import DIMENSIONS, Filters
from opstrata.plugins.llmops.store import cursor_of
from opstrata.runtime import Runtime

__all__ = ["LLMOpsController"]

Text = Annotated[str | None, Parameter(max_length=512)]
TimeParam = Annotated[
    str | None, Parameter(description="RFC 3339 or Unix nanoseconds.", max_length=64)
]
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_BUCKET = re.compile(r"^(\d+)([smhdw])$")
_HEX = re.compile(r"^[0-9a-f]*$")


class Percentiles(msgspec.Struct, frozen=True):
    p50: float | None
    p95: float | None
    p99: float | None


class UsageRow(msgspec.Struct, frozen=True):
    bucket_unix_nano: int | None
    group: dict[str, str]
    calls: int
    errors: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    total_tokens: int
    cost_usd: float
    cost_pico_usd: int
    unpriced_calls: int
    latency_ms: Percentiles | None = None
    ttft_ms: Percentiles | None = None


class UsageOut(msgspec.Struct, frozen=True):
    group_by: list[str]
    bucket_seconds: int | None
    rows: list[UsageRow]
    percentiles: str | None = None
    """With ``latency``: ``sketch`` (per model over whole days, within ~4.4 %) or ``approx``
    (t-digest over the calls)."""


class Message(msgspec.Struct, frozen=True):
    role: str
    content: str


class Messages(msgspec.Struct, frozen=True):
    input: list[Message]
    output: list[Message]


class CallOut(msgspec.Struct, frozen=True):
    time_unix_nano: int
    trace_id: str
    span_id: str
    service: str
    provider: str
    request_model: str
    response_model: str
    model: str
    operation: str
    source: str
    conventions: list[str]
    input_tokens: int | None
    output_tokens: int | None
    cache_read_tokens: int | None
    cache_write_tokens: int | None
    reasoning_tokens: int | None
    total_tokens: int | None
    cost_usd: float | None
    cost_pico_usd: int | None
    cost_source: str | None
    duration_ms: float
    ttft_ms: float | None
    finish_reason: str
    is_error: bool
    error_type: str
    prompt_name: str
    prompt_version: str
    session_id: str
    user_id: str
    messages: Messages | None = None
    messages_source: str | None = None


class CallPage(msgspec.Struct, frozen=True):
    calls: list[CallOut]
    next_cursor: str | None


class ModelOut(msgspec.Struct, frozen=True):
    model: str
    provider: str
    first_seen_unix_nano: int
    last_seen_unix_nano: int
    calls: int
    errors: int
    error_rate: float
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    total_tokens: int
    cost_usd: float
    cost_pico_usd: int
    unpriced_calls: int
    priced: bool
    price_pattern: str | None
    latency_ms: Percentiles | None
    ttft_ms: Percentiles | None


class ModelsOut(msgspec.Struct, frozen=True):
    models: list[ModelOut]
    unpriced_models: list[str]
    unpriced_calls: int
    percentiles: str = "approx"
    """``sketch`` (whole days: from the day sketches, within ~4.4 %) or ``approx`` (t-digest
    over the calls)."""


class PromptVersion(msgspec.Struct, frozen=True):
    version: str
    first_seen_unix_nano: int
    last_seen_unix_nano: int
    calls: int
    errors: int
    error_rate: float
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    total_tokens: int
    input_tokens_per_call: float
    output_tokens_per_call: float
    cost_usd: float
    cost_pico_usd: int
    cost_usd_per_call: float
    unpriced_calls: int
    latency_ms: Percentiles | None
    ttft_ms: Percentiles | None


class PromptOut(msgspec.Struct, frozen=True):
    prompt: str
    versions: list[PromptVersion]


class SessionOut(msgspec.Struct, frozen=True):
    session_id: str
    users: list[str]
    services: list[str]
    models: list[str]
    first_seen_unix_nano: int
    last_seen_unix_nano: int
    calls: int
    errors: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    total_tokens: int
    cost_usd: float
    cost_pico_usd: int
    unpriced_calls: int
    call_list: list[CallOut]


def parse_time(value: str | None, name: str) -> int | None:
    """RFC 3339 text or Unix nanoseconds → Unix nanoseconds."""
    if value is None or value == "":
        return None
    if value.isdigit():
        return int(value)
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValidationException(detail=f"{name}: not RFC 3339 or Unix nanoseconds") from exc
    if moment.tzinfo is None:
        raise ValidationException(detail=f"{name}: RFC 3339 needs a time zone")
    whole = int(moment.timestamp())
    return whole * 1_000_000_000 + moment.microsecond * 1000


def _bucket_ns(bucket: str | None) -> int | None:
    if not bucket:
        return None
    match = _BUCKET.match(bucket)
    if match is None or int(match.group(1)) == 0:
        raise ValidationException(detail="bucket: a count and a unit, e.g. 5m, 1h, 1d, 1w")
    return int(match.group(1)) * _UNITS[match.group(2)] * 1_000_000_000


def _group_by(text: str | None) -> list[str]:
    names = [g.strip() for g in (text or "").split(",") if g.strip()]
    unknown = [g for g in names if g not in DIMENSIONS]
    if unknown:
        raise ValidationException(
            detail=f"group_by: unknown {', '.join(unknown)}; one of {', '.join(DIMENSIONS)}"
        )
    return list(dict.fromkeys(names))


def _filters(
    start: str | None,
    end: str | None,
    errors: bool | None = None,
    trace_id: str | None = None,
    **equals: str | None,
) -> Filters:
    return Filters(parse_time(start, "start"), parse_time(end, "end"), equals, errors, trace_id)


def _as(value: Any, kind: type) -> Any:
    return msgspec.convert(value, kind)


class LLMOpsController(Controller):
    path = "/"

    @get("/usage", sync_to_thread=True)
    def usage(
        self,
        runtime: Runtime,
        group_by: Annotated[
            str | None,
            Parameter(description=f"Comma-separated: {', '.join(DIMENSIONS)}.", max_length=256),
        ] = None,
        bucket: Annotated[
            str | None, Parameter(description="Time bucket: 5m, 1h, 1d, 1w…", max_length=16)
        ] = None,
        latency: Annotated[
            bool, Parameter(description="Add latency and TTFT percentiles (slower).")
        ] = False,
        start: TimeParam = None,
        end: TimeParam = None,
        service: Text = None,
        provider: Text = None,
        model: Text = None,
        operation: Text = None,
        prompt: Text = None,
        prompt_version: Text = None,
        user: Text = None,
        session: Text = None,
        limit: Annotated[int, Parameter(ge=1, le=100_000)] = 10_000,
        metrics: Annotated[
            bool,
            Parameter(
                description="Count calls known only from GenAI metrics (services that send no "
                "spans for them)."
            ),
        ] = True,
    ) -> UsageOut:
        """Calls, tokens by type, cost and errors, grouped and bucketed in event time."""
        groups = _group_by(group_by)
        bucket_ns = _bucket_ns(bucket)
        filters = _filters(
            start, end, service=service, provider=provider, model=model, operation=operation,
            prompt=prompt, prompt_version=prompt_version, user=user, session=session,
        )  # fmt: skip
        from opstrata.plugins.llmops import plugin_state

        rows, source = queries.usage(
            cursor_of(runtime.store), filters, groups, bucket_ns, latency, limit,
            plugin_state().prices, metrics,
        )  # fmt: skip
        return UsageOut(
            group_by=groups,
            bucket_seconds=bucket_ns // 1_000_000_000 if bucket_ns else None,
            rows=_as(rows, list[UsageRow]),
            percentiles=source,
        )

    @get("/calls", sync_to_thread=True)
    def calls(
        self,
        runtime: Runtime,
        start: TimeParam = None,
        end: TimeParam = None,
        service: Text = None,
        provider: Text = None,
        model: Text = None,
        operation: Text = None,
        prompt: Text = None,
        prompt_version: Text = None,
        user: Text = None,
        session: Text = None,
        error_type: Text = None,
        error: bool | None = None,
        trace_id: Text = None,
        limit: Annotated[int, Parameter(ge=1, le=1000)] = 100,
        cursor: Annotated[str | None, Parameter(max_length=64)] = None,
    ) -> CallPage:
        """Calls, newest first."""
        before = None
        if cursor:
            time_text, _, span_id = cursor.partition(":")
            if not time_text.isdigit() or not _HEX.match(span_id):
                raise ValidationException(detail="cursor: not a next_cursor of this API")
            before = (int(time_text), span_id)
        filters = _filters(
            start, end, error, trace_id.lower() if trace_id else None, service=service,
            provider=provider, model=model, operation=operation, prompt=prompt,
            prompt_version=prompt_version, user=user, session=session, error_type=error_type,
        )  # fmt: skip
        found = queries.calls(cursor_of(runtime.store), filters, limit, before)
        next_cursor = (
            f"{found[-1]['time_unix_nano']}:{found[-1]['span_id']}" if len(found) == limit else None
        )
        return CallPage(calls=_as(found, list[CallOut]), next_cursor=next_cursor)

    @get("/calls/{trace_id:str}/{span_id:str}", sync_to_thread=True)
    def call(self, runtime: Runtime, trace_id: str, span_id: str) -> CallOut:
        """One call with its stored messages."""
        found = queries.call_detail(cursor_of(runtime.store), trace_id.lower(), span_id.lower())
        if found is None:
            raise NotFoundException(detail=f"no LLM call {trace_id}/{span_id}")
        return _as(found, CallOut)

    @get("/models", sync_to_thread=True)
    def models(self, runtime: Runtime, start: TimeParam = None, end: TimeParam = None) -> ModelsOut:
        """Every model called, with usage, cost, latency; the models without a price."""
        from opstrata.plugins.llmops import plugin_state

        rows, source = queries.models(cursor_of(runtime.store), _filters(start, end))
        prices = plugin_state().prices
        out = []
        for row in rows:
            price = prices.lookup(row["provider"] or "", row["model"]) if prices else None
            out.append(
                {**row, "priced": row["unpriced_calls"] == 0,
                 "price_pattern": price.pattern if price else None}
            )  # fmt: skip
        unpriced = sorted(r["model"] for r in rows if r["unpriced_calls"])
        return ModelsOut(
            models=_as(out, list[ModelOut]),
            unpriced_models=unpriced,
            unpriced_calls=sum(r["unpriced_calls"] for r in rows),
            percentiles=source,
        )

    @get("/prompts", sync_to_thread=True)
    def prompts(
        self,
        runtime: Runtime,
        prompt: Text = None,
        start: TimeParam = None,
        end: TimeParam = None,
    ) -> list[PromptOut]:
        """Prompt templates, each with its versions side by side (oldest first)."""
        found = queries.prompts(cursor_of(runtime.store), _filters(start, end, prompt=prompt))
        return _as(found, list[PromptOut])

    @get("/sessions/{session_id:str}", sync_to_thread=True)
    def session(self, runtime: Runtime, session_id: str) -> SessionOut:
        """One session's calls in order, with totals."""
        found = queries.session(cursor_of(runtime.store), session_id)
        if found is None:
            raise NotFoundException(detail=f"no LLM calls in session {session_id}")
        return _as(found, SessionOut)
