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
    """Event-time bucket whose calls are judged together against the entity's recent calls."""
    warmup_buckets: int = 5
    """Buckets an entity must have seen before spikes, regressions and bursts can fire."""
    p_value: float = 1e-4
    """A bucket alerts only when a change this unlikely under "nothing changed" is seen (exact
    small-sample tests: a bucket of a few calls is weak evidence and cannot reach it on noise)."""
    window_buckets: int = 3
    """A bucket too sparse to decide alone is also tested pooled with the buckets before it,
    up to this many in all (1: each bucket alone); the bucket itself must still show the
    effect, so an alert ends with the first normal bucket."""
    baseline_calls: int = 512
    """Recent calls kept per entity as its baseline (a ring; busy entities keep a spread subset
    of each bucket, so it spans at least 30 buckets)."""
    per_call_factor: float = 1.5
    """Cost or tokens per call: a spike needs the bucket's mean per call at least this multiple
    of the usual mean per call (and a significant share of calls above the usual 95th pct)."""
    spike_factor: float = 3.0
    """Cost or tokens per bucket (volume): a spike when the bucket's total is above this multiple
    of the entity's usual daily high (99th percentile of its buckets over the last day)."""
    latency_factor: float = 1.5
    """Latency or TTFT: a regression needs the bucket's p95 at least this multiple of the usual
    p95 (and a significant share of calls above the usual p95)."""
    min_calls: int = 3
    """Buckets with fewer calls for an entity are not judged per call (latency, cost and tokens
    per call, errors); volume still is."""
    error_rate: float = 0.05
    """An error burst needs at least this share of the bucket's calls failed (and twice the
    usual share, and a significant excess over it) ..."""
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
