"""Reading query parameters: times, durations, attribute filters. Bad input is a 400."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

from litestar import Request
from litestar.exceptions import ValidationException
from litestar.params import Parameter

__all__ = [
    "MAX_LIMIT",
    "MAX_POINTS",
    "Cursor",
    "Limit",
    "TimeParam",
    "attribute_filters",
    "parse_duration",
    "parse_time",
    "parse_trace_id",
]

MAX_LIMIT = 1000
"""The hard cap of every page size."""
MAX_POINTS = 11_000
"""Most steps a range query or a RED series may have (``(end - start) / step``)."""
_MAX_NS = 2**63 - 1

Limit = Annotated[int, Parameter(ge=1, le=MAX_LIMIT, description=f"Page size, 1-{MAX_LIMIT}.")]
Cursor = Annotated[
    str | None,
    Parameter(description="`next_cursor` of the previous page.", max_length=64),
]
TimeParam = Annotated[
    str | None,
    Parameter(
        description="RFC 3339 (`2026-11-25T10:00:00.123456789Z`) or Unix nanoseconds.",
        max_length=64,
    ),
]

_RFC3339 = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
)
_TRACE_ID = re.compile(r"^[0-9a-fA-F]{32}$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)$")
_UNITS = {
    "ns": 1,
    "us": 10**3,
    "µs": 10**3,
    "ms": 10**6,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
}


def parse_time(text: str | None, name: str) -> int | None:
    """Unix nanoseconds from an RFC 3339 timestamp (with a zone) or an integer of nanoseconds."""
    if text is None or text == "":
        return None
    text = text.strip()
    if text.isdigit():
        value = int(text)
        if value > _MAX_NS:
            raise ValidationException(detail=f"{name}: Unix nanoseconds out of range")
        return value
    match = _RFC3339.match(text)
    if not match:
        raise ValidationException(
            detail=f"{name}: expected RFC 3339 (2026-11-25T10:00:00Z) or Unix nanoseconds"
        )
    date, clock, fraction, zone = match.groups()
    zone = "+00:00" if zone in ("Z", "z") else zone
    try:
        moment = datetime.fromisoformat(f"{date}T{clock}{zone}")
    except ValueError as exc:
        raise ValidationException(detail=f"{name}: {exc}") from None
    seconds = int(moment.timestamp())
    nanos = int((fraction or ".0")[1:].ljust(9, "0"))
    value = seconds * 10**9 + nanos
    if not 0 <= value <= _MAX_NS:
        raise ValidationException(detail=f"{name}: time out of range (1970-2262)")
    return value


def parse_duration(text: str | None, name: str) -> int | None:
    """Nanoseconds from an integer (ns) or a number with a unit: ``250ms``, ``1.5s``, ``2m``."""
    if text is None or text == "":
        return None
    text = text.strip()
    if text.isdigit():
        value = int(text)
    else:
        match = _DURATION.match(text)
        if not match:
            raise ValidationException(
                detail=f"{name}: expected nanoseconds or a duration like 250ms, 1.5s, 2m"
            )
        value = int(float(match.group(1)) * _UNITS[match.group(2)])
    if value > _MAX_NS:
        raise ValidationException(detail=f"{name}: duration out of range")
    return value


def parse_trace_id(text: str) -> str:
    if not _TRACE_ID.match(text):
        raise ValidationException(detail="trace_id must be 32 hexadecimal digits")
    return text.lower()


def attribute_filters(request: Request, prefix: str) -> dict[str, str]:
    """``prefix.KEY=VALUE`` query parameters as ``{KEY: VALUE}`` (equality filters)."""
    out = {}
    for key, value in request.query_params.items():
        if key.startswith(prefix) and len(key) > len(prefix):
            if len(key) > 512 or len(value) > 4096:
                raise ValidationException(detail=f"{key}: attribute filter too long")
            out[key[len(prefix) :]] = value
    return out


def window_bounds(start: int | None, end: int | None) -> None:
    """400 when ``end`` is not after ``start``."""
    if start is not None and end is not None and end <= start:
        raise ValidationException(detail="end must be after start")


def step_ns(text: str | None, start: int, end: int, default: int) -> int:
    """The step of a series: at least 1 s, at most ``MAX_POINTS`` steps in the window."""
    step = parse_duration(text, "step") if text else default
    assert step is not None
    if step < 10**9:
        raise ValidationException(detail="step must be at least 1s")
    if (end - start) // step > MAX_POINTS:
        raise ValidationException(
            detail=f"step too small: more than {MAX_POINTS} steps between start and end"
        )
    return step
