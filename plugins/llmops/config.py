"""The LLMOps plugin's settings, ``[plugins.llmops]``."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

__all__ = ["AlertSettings", "Budget", "LLMOpsConfig", "PriceEntry", "parse_config"]


class PriceEntry(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """US dollars per million tokens for the models whose name matches ``pattern`` (a glob)."""

    pattern: str
    input: float
    output: float
    cache_read: float | None = None
    cache_write: float | None = None
    reasoning: float | None = None
    provider: str = ""


class Budget(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A spending limit: alert when ``kind`` ``name`` (``"*"``: each one) spends more than
    ``usd`` within one ``period`` of event time."""

    kind: Literal["user", "service", "session", "model"]
    name: str = "*"
    usd: float
    period: Literal["hour", "day", "month"] = "day"


class AlertSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    enabled: bool = True
    bucket_seconds: int = 60
    """Event-time bucket over which calls are summed before they are compared with the past."""
    warmup_buckets: int = 5
    """Buckets an entity must have seen before spikes and regressions can fire."""
    spike_factor: float = 3.0
    """Cost or tokens per bucket above this multiple of the usual (EWMA) amount is a spike."""
    latency_factor: float = 1.5
    """p95 latency or TTFT above this multiple of the usual p95 is a regression."""
    min_calls: int = 5
    """Buckets with fewer calls for an entity are not judged for latency and error rates."""
    error_rate: float = 0.2
    """An error burst: more than this share of an entity's calls in a bucket failed ..."""
    min_errors: int = 3
    """... and at least this many of them."""
    prompt_min_calls: int = 5
    """Calls of a new prompt version (and of the one before) needed to compare them."""


class LLMOpsConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    content: Literal["keep", "mask", "drop"] = "mask"
    """What happens to captured message content before it is stored: kept as is, masked
    (emails, phone numbers, card numbers, API keys replaced by placeholders), or dropped."""
    mask_patterns: list[str] = []
    """Extra regular expressions whose matches are masked too (when ``content = "mask"``)."""
    max_message_chars: int = 8192
    """Each message's text is cut to this many characters."""
    prices: list[PriceEntry] = []
    """Price entries tried before the shipped table: override or add models."""
    price_table: bool = True
    """Use the shipped price table (``prices.toml``) after the entries above."""
    budgets: list[Budget] = []
    alerts: AlertSettings = msgspec.field(default_factory=AlertSettings)


def parse_config(config: dict[str, Any]) -> LLMOpsConfig:
    """The validated settings; ``ValueError`` naming the bad key otherwise."""
    try:
        return msgspec.convert(config, LLMOpsConfig)
    except msgspec.ValidationError as exc:
        raise ValueError(f"plugins.llmops: {exc}") from exc
