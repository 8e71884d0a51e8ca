"""Limits applied while decoding, and the tally of what they cut."""

from __future__ import annotations

import msgspec

__all__ = ["DecodeLimits", "Tally"]


class DecodeLimits(msgspec.Struct, frozen=True):
    """Per-item bounds that keep one hostile request from costing unbounded memory or CPU.

    ``max_attributes``: attributes kept per item (resource, scope, span, event, link, log
    record, data point); the rest are dropped and counted.
    ``max_value_chars``: a string value, or the JSON rendering of an array/map value, is cut to
    this many characters and counted.
    ``max_depth``: nesting of array/map ``AnyValue``s rendered; deeper levels become ``"..."``.
    """

    max_attributes: int = 128
    max_value_chars: int = 16_384
    max_depth: int = 16


class Tally:
    """Counts of cut data, kept by one decode call and reported with its result."""

    __slots__ = ("dropped_attributes", "truncated_values")

    def __init__(self) -> None:
        self.dropped_attributes = 0
        self.truncated_values = 0
