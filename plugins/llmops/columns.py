"""Column-wise conversions of attribute values (Arrow strings) into call fields: numbers, error
class names, finish reasons, operation names. Each is a handful of Arrow compute calls over all
the calls of a group at once, never a Python loop over calls."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "Mapping",
    "error_class",
    "finish_reasons",
    "floats",
    "ints",
    "mapped",
    "model_of_invocation",
    "status_error_class",
    "text",
]

_NULL = pa.scalar(None, pa.string())
_EMPTY = pa.scalar("", pa.string())  # typed: see recognise._EMPTY
_INT = r"^\s*-?\d{1,18}\s*$"
_FLOAT = r"^\s*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\s*$"


def _none(mask: pa.Array, values: pa.Array) -> pa.Array:
    """``values`` where ``mask``, else null (null mask entries count as false)."""
    return pc.if_else(pc.fill_null(mask, False), values, _NULL)


def _absent(values: pa.Array) -> bool:
    # A field no call of the group has: skip the kernels (each costs some microseconds).
    return values.null_count == len(values)


def floats(values: pa.Array) -> pa.Array:
    """Attribute strings as float64; null where absent or not a number."""
    if _absent(values):
        return pa.nulls(len(values), pa.float64())
    try:
        return pc.cast(values, pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    ok = pc.match_substring_regex(values, _FLOAT)
    return pc.cast(pc.utf8_trim_whitespace(_none(ok, values)), pa.float64())


def ints(values: pa.Array) -> pa.Array:
    """Attribute strings as int64 (a float like ``"12.0"`` rounded half to even, as Python's
    ``round``); null where absent or not a number."""
    if _absent(values):
        return pa.nulls(len(values), pa.int64())
    try:  # the usual case: every value is a plain integer
        return pc.cast(values, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    ok = pc.fill_null(pc.match_substring_regex(values, _INT), False)
    out = pc.cast(pc.utf8_trim_whitespace(_none(ok, values)), pa.int64())
    other = pc.and_(pc.is_valid(values), pc.invert(ok))
    if pc.any(other).as_py():
        rounded = pc.round(floats(_none(other, values)), round_mode="half_to_even")
        # NaN, infinities and values past int64 would cast to garbage (NaN to -2**63): null.
        fits = pc.and_(pc.is_finite(rounded), pc.less(pc.abs(rounded), 2.0**63))
        rounded = pc.if_else(fits, rounded, pa.scalar(None, rounded.type))
        out = pc.coalesce(out, pc.cast(rounded, pa.int64(), safe=False))
    return out


def text(values: pa.Array) -> pa.Array:
    """Absent values as ``""`` (the calls table's text columns are not nullable in meaning)."""
    return pc.fill_null(values, "")


class Mapping:
    """A value-to-value table as Arrow arrays, made once (built per call it cost more than
    the lookup)."""

    def __init__(self, table: dict[str, str]) -> None:
        self.keys = pa.array(list(table), pa.string())
        self.targets = pa.array(list(table.values()), pa.string())


def mapped(values: pa.Array, mapping: Mapping) -> pa.Array:
    """Values found in ``mapping`` replaced by their mapping, others kept."""
    if _absent(values):
        return values
    found = pc.index_in(values, value_set=mapping.keys)
    return pc.coalesce(pc.take(mapping.targets, found), values)


def _per_distinct(
    values: pa.Array | pa.ChunkedArray, convert: Callable[[pa.Array], pa.Array]
) -> pa.Array:
    """``convert`` (an Arrow function of a string array) run on the distinct values only, then
    put back in place: a column of calls holds a handful of distinct error types or reasons,
    and the regex kernels cost per value."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    encoded = pc.dictionary_encode(values)
    return convert(encoded.dictionary).take(encoded.indices)


_CLASS_REPR = r"^.*?<class '([^']+)'>.*$"
_DOTTED = r"^[A-Za-z_][\w.]*\.(\w*)$"


def error_class(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The error's class name: ``<class 'openai.BadRequestError'>``, ``openai.BadRequestError``
    and ``BadRequestError`` are all ``BadRequestError``; other text is kept as is (trimmed)."""
    if _absent(values):
        return text(values)
    return text(_per_distinct(values, _class_names))


def _class_names(values: pa.Array) -> pa.Array:
    value = pc.utf8_trim(pc.utf8_trim_whitespace(values), "'\"")
    value = pc.replace_substring_regex(value, _CLASS_REPR, r"\1")
    return pc.replace_substring_regex(value, _DOTTED, r"\1")


_STATUS_PREFIX = r"^(?P<cls>[A-Za-z_][\w.]*(?:Error|Exception|Timeout|Exceeded))\b"


def status_error_class(messages: pa.Array) -> pa.Array:
    """The class name that starts a status message (``RateLimitError: ...``), else ``_OTHER``."""
    found = pc.extract_regex(pc.fill_null(messages, ""), _STATUS_PREFIX)
    name = pc.if_else(pc.is_valid(found), pc.struct_field(found, [0]), _NULL)
    return pc.if_else(pc.is_valid(name), error_class(name), pa.scalar("_OTHER"))


_REASON_CHARS = r'^\[|\]$|"|\s'
_OUTPUT_REASON = r'"finish_reason"\s*:\s*"(?P<r>[^"]*)"'


def finish_reasons(given: pa.Array, outputs: pa.Array) -> pa.Array:
    """Finish reasons as given (a JSON list like ``["stop"]`` becomes ``stop``, several
    ``stop,length``), else those inside ``gen_ai.output.messages`` (openai-v2 puts them only
    there for streamed calls)."""
    # Few distinct values (``["stop"]`` …): each is tidied once, then put back in place.
    encoded = pc.dictionary_encode(given)
    distinct = encoded.dictionary
    listed = pc.fill_null(pc.starts_with(distinct, "["), False)
    tidied = pc.if_else(listed, pc.replace_substring_regex(distinct, _REASON_CHARS, ""), distinct)
    reasons = tidied.take(encoded.indices)
    missing = pc.or_(pc.is_null(reasons), pc.equal(reasons, _EMPTY))
    if not pc.any(pc.and_(pc.fill_null(missing, True), pc.is_valid(outputs))).as_py():
        return text(reasons)
    # All the finish reasons of the output messages, in order, joined by commas: every part of
    # the text that is not a reason's value is removed, then the separators are tidied.
    only = pc.replace_substring_regex(outputs, r'(?s)"finish_reason"\s*:\s*"([^"]*)"|.', r"\1,")
    joined = pc.utf8_trim(pc.replace_substring_regex(only, r",+", ","), ",")
    return text(pc.if_else(pc.fill_null(missing, True), joined, reasons))


def model_of_invocation(invocation: pa.Array) -> pa.Array:
    """The ``model`` of OpenInference's ``llm.invocation_parameters`` JSON (the requested
    model is only there)."""
    if _absent(invocation):
        return invocation
    found = pc.extract_regex(invocation, r'"model"\s*:\s*"(?P<m>[^"\\]*)"')
    return pc.if_else(pc.is_valid(found), pc.struct_field(found, [0]), _NULL)


def present(values: pa.Array) -> np.ndarray:
    """Which values are given (not null), as numpy booleans."""
    return pc.is_valid(values).to_numpy(zero_copy_only=False)
