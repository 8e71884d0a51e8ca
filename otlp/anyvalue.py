"""``AnyValue`` and attribute lists rendered as strings, with limits.

Values become strings the way the Collector's ``pcommon.Value.AsString`` does, which is what its
ClickHouse exporter stores: strings as they are, booleans ``true``/``false``, integers and floats
in decimal, bytes in base64, arrays and maps as compact JSON.

Attribute walking is the most expensive part of decoding (each key/value pair is a protobuf
object), so rendered pairs are memoised by their serialised bytes: the same ``http.method=GET``
arriving in every span is rendered once.
"""

from __future__ import annotations

import base64
import math

import msgspec

from opstrata.otlp.limits import DecodeLimits, Tally

__all__ = ["AttributeRenderer", "render_anyvalue"]

_json_encode = msgspec.json.Encoder().encode
_CACHE_MAX = 200_000


def _float_text(x: float) -> str:
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    if x == int(x) and abs(x) < 1e16:
        return str(int(x))
    return repr(x)


def _plain(value, depth: int, limits: DecodeLimits, tally: Tally):
    """An AnyValue as a JSON-ready Python value (for arrays and maps)."""
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "string_value":
        return value.string_value
    if which == "bool_value":
        return value.bool_value
    if which == "int_value":
        return value.int_value
    if which == "double_value":
        x = value.double_value
        return x if math.isfinite(x) else _float_text(x)
    if which == "bytes_value":
        return base64.b64encode(value.bytes_value).decode("ascii")
    if depth >= limits.max_depth:
        tally.truncated_values += 1
        return "..."
    if which == "array_value":
        return [_plain(v, depth + 1, limits, tally) for v in value.array_value.values]
    return {kv.key: _plain(kv.value, depth + 1, limits, tally) for kv in value.kvlist_value.values}


def render_anyvalue(value, limits: DecodeLimits, tally: Tally) -> str:
    """One AnyValue as the string stored for it, cut to ``limits.max_value_chars``."""
    which = value.WhichOneof("value")
    if which == "string_value":
        text = value.string_value
    elif which is None:
        return ""
    elif which == "int_value":
        return str(value.int_value)
    elif which == "bool_value":
        return "true" if value.bool_value else "false"
    elif which == "double_value":
        return _float_text(value.double_value)
    elif which == "bytes_value":
        text = base64.b64encode(value.bytes_value).decode("ascii")
    else:
        text = _json_encode(_plain(value, 0, limits, tally)).decode("utf-8")
    if len(text) > limits.max_value_chars:
        tally.truncated_values += 1
        return text[: limits.max_value_chars]
    return text


class AttributeRenderer:
    """Appends attribute lists to flat key/value columns, memoising rendered pairs."""

    __slots__ = ("_cache", "limits")

    def __init__(self, limits: DecodeLimits) -> None:
        self.limits = limits
        self._cache: dict[bytes, tuple[str, str]] = {}

    def pairs(self, kvs, tally: Tally) -> tuple[list[str], list[str]]:
        """Keys and rendered values of one attribute list (for values reused many times)."""
        keys: list[str] = []
        values: list[str] = []
        self.extend(kvs, keys, values, tally)
        return keys, values

    def extend(self, kvs, keys: list[str], values: list[str], tally: Tally) -> int:
        """Append the pairs of ``kvs`` to ``keys``/``values``; return how many were appended."""
        n = len(kvs)
        if n == 0:
            return 0
        limit = self.limits.max_attributes
        if n > limit:
            tally.dropped_attributes += n - limit
            kvs = kvs[:limit]
            n = limit
        cache = self._cache
        if len(cache) > _CACHE_MAX:
            cache.clear()
        start = len(keys)
        for kv in kvs:
            raw = kv.SerializeToString()
            pair = cache.get(raw)
            if pair is None:
                cut_before = tally.truncated_values
                pair = (kv.key, render_anyvalue(kv.value, self.limits, tally))
                # A pair that was cut is not memoised, so that every cut is counted.
                if tally.truncated_values == cut_before:
                    cache[raw] = pair
            keys.append(pair[0])
            values.append(pair[1])
        if n > 1 and len(set(keys[start:])) != n:
            n = _dedupe_tail(keys, values, start)
        return n


def _dedupe_tail(keys: list[str], values: list[str], start: int) -> int:
    """Collapse repeated keys appended since ``start``; the last value wins, as in the SDKs."""
    merged = dict(zip(keys[start:], values[start:], strict=True))
    del keys[start:], values[start:]
    keys.extend(merged.keys())
    values.extend(merged.values())
    return len(merged)
