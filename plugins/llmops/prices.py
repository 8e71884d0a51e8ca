"""Model prices: the shipped table (``prices.toml``) behind the entries from settings.

Costs are integers in pico-dollars (1e-12 USD), so that sums over millions of calls are exact and
the API's figures can be checked to the last digit; a price in dollars per million tokens is
pico-dollars per token times 1e-6.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from opstrata.plugins.llmops.config import PriceEntry

__all__ = ["PICO", "ModelPrice", "PriceTable", "shipped_entries"]

PICO = 10**12
"""Pico-dollars per dollar."""
_SEPARATOR = pa.scalar("\x1f", pa.string())  # typed: see recognise._EMPTY


def _per_token(usd_per_million: float) -> int:
    # Decimal of the text, not of the binary float: 0.075 is 75,000 pUSD/token exactly.
    return int(Decimal(repr(usd_per_million)) * 10**6)


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Pico-dollars per token by token type, and the pattern that matched."""

    pattern: str
    input: int
    output: int
    cache_read: int
    cache_write: int
    reasoning: int

    @classmethod
    def of(cls, entry: PriceEntry) -> ModelPrice:
        inp, out = _per_token(entry.input), _per_token(entry.output)

        def pick(value: float | None, default: int) -> int:
            return default if value is None else _per_token(value)

        return cls(
            entry.pattern,
            inp,
            out,
            pick(entry.cache_read, inp),
            pick(entry.cache_write, inp),
            pick(entry.reasoning, out),
        )


def shipped_entries() -> list[PriceEntry]:
    """The price table shipped with opstrata."""
    text = resources.files("opstrata.plugins.llmops").joinpath("prices.toml").read_text()
    return msgspec.convert(tomllib.loads(text).get("model", []), list[PriceEntry])


class PriceTable:
    """Looks prices up by model name; answers are cached per (provider, model)."""

    def __init__(self, entries: list[PriceEntry]) -> None:
        self._entries = [
            (re.compile(fnmatch.translate(e.pattern.lower())), e.provider.lower(), ModelPrice.of(e))
            for e in entries
        ]
        self._cache: dict[tuple[str, str], ModelPrice | None] = {}

    def lookup(self, provider: str, model: str) -> ModelPrice | None:
        key = (provider, model)
        if key not in self._cache:
            found = None
            name, prov = model.lower(), provider.lower()
            for pattern, only, price in self._entries:
                if (not only or only == prov) and pattern.match(name):
                    found = price
                    break
            self._cache[key] = found
        return self._cache[key]

    def costs(
        self,
        provider: pa.Array,
        response_model: pa.Array,
        request_model: pa.Array,
        tokens: dict[str, np.ndarray],
    ) -> tuple[np.ndarray, np.ndarray]:
        """Cost in pico-dollars of each call, and whether its model has a price. Models are
        looked up once per distinct (provider, response model, requested model), found with
        one Arrow dictionary encoding; then costs are column arithmetic."""
        n = len(provider)
        key = pc.binary_join_element_wise(provider, response_model, request_model, _SEPARATOR)
        encoded = pc.dictionary_encode(key)
        codes = encoded.indices.to_numpy(zero_copy_only=False)
        distinct = encoded.dictionary.to_pylist()
        table = np.zeros((len(distinct) + 1, 5), dtype=np.int64)
        found = np.zeros(len(distinct) + 1, dtype=bool)
        for code, text in enumerate(distinct):
            prov, response, request = text.split("\x1f")
            price = (self.lookup(prov, response) if response else None) or (
                self.lookup(prov, request) if request else None
            )
            if price is not None:
                found[code] = True
                table[code] = (
                    price.input,
                    price.cache_read,
                    price.cache_write,
                    price.output,
                    price.reasoning,
                )
        rates = table[codes] if n else np.zeros((0, 5), dtype=np.int64)
        priced = found[codes] if n else np.zeros(0, dtype=bool)
        inp, out = tokens["input"], tokens["output"]
        read, write, reason = tokens["cache_read"], tokens["cache_write"], tokens["reasoning"]
        # Input counts include cached tokens and output counts include reasoning tokens (the
        # GenAI conventions' and OpenAI's accounting), so those are priced apart, not twice.
        plain_in = np.maximum(inp - read - write, 0)
        plain_out = np.maximum(out - reason, 0)
        cost = (
            plain_in * rates[:, 0]
            + read * rates[:, 1]
            + write * rates[:, 2]
            + plain_out * rates[:, 3]
            + reason * rates[:, 4]
        )
        return cost, priced
