"""Built-in plugin ``llmops``: tokens, cost, latency and prompts of every LLM call, whichever
convention instrumented it (OpenTelemetry GenAI, OpenInference, Traceloop / OpenLLMetry, vLLM).

See ``docs/llmops.md``. Settings: ``[plugins.llmops]`` (:mod:`.config`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from opstrata.hookspecs import hookimpl
from opstrata.plugins.llmops.config import LLMOpsConfig, parse_config
from opstrata.plugins.llmops.prices import PriceTable, shipped_entries

__all__ = ["plugin_state"]


@dataclass
class _State:
    config: LLMOpsConfig
    prices: PriceTable | None = None


_state = _State(LLMOpsConfig())


def plugin_state() -> _State:
    """The configured settings and price table (for the API)."""
    return _state


@hookimpl
def opstrata_configure(config: dict[str, Any]) -> None:
    global _state
    parsed = parse_config(config)
    entries = list(parsed.prices) + (shipped_entries() if parsed.price_table else [])
    try:
        prices = PriceTable(entries)
    except Exception as exc:  # a bad glob
        raise ValueError(f"plugins.llmops.prices: {exc}") from exc
    _state = _State(parsed, prices)


@hookimpl
def opstrata_register_consumers(register: Callable[[Any], None]) -> None:
    from opstrata.plugins.llmops.consumer import LLMCalls

    register(LLMCalls(_state.config))


@hookimpl
def opstrata_register_routes(register: Callable[[Sequence[Any]], None]) -> None:
    from opstrata.plugins.llmops.api import LLMOpsController

    register([LLMOpsController])
