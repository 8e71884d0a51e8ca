"""What happens to captured message content before it is stored: kept, masked or dropped.

Masking replaces what identifies people or unlocks accounts with a placeholder naming what was
there, e.g. ``[EMAIL]``: e-mail addresses, phone numbers, payment card numbers (13 to 19 digits
that pass the Luhn check, with spaces or dashes between groups) and API keys or bearer tokens.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

__all__ = ["ContentPolicy"]

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_API_KEY = re.compile(
    r"\b(?:sk-(?:proj-|ant-)?[A-Za-z0-9_-]{16,}"  # OpenAI, Anthropic
    r"|AKIA[0-9A-Z]{16}"  # AWS access key id
    r"|AIza[0-9A-Za-z_-]{35}"  # Google
    r"|gh[pousr]_[A-Za-z0-9]{30,}"  # GitHub
    r"|xox[abprs]-[A-Za-z0-9-]{10,}"  # Slack
    r"|hf_[A-Za-z0-9]{30,})"  # Hugging Face
    r"|(?i:bearer)\s+[A-Za-z0-9._~+/=-]{16,}"
)
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_DATE = re.compile(r"\d{4}[-.]\d{2}[-.]\d{2}")
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,4}){1,4}(?!\w)"
)


def _luhn(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    return "[CARD]" if 13 <= len(digits) <= 19 and _luhn(digits) else match.group(0)


def _phone(match: re.Match[str]) -> str:
    # At least 7 digits, so versions and small numbers stay; ISO dates stay too.
    text = match.group(0)
    digits = sum(c.isdigit() for c in text)
    return "[PHONE]" if digits >= 7 and not _DATE.fullmatch(text) else text


class ContentPolicy:
    """``apply(text)`` is what is stored of a message text (``None``: nothing is)."""

    def __init__(self, mode: str, extra_patterns: Sequence[str] = (), max_chars: int = 8192):
        self.mode = mode
        self.max_chars = max_chars
        steps: list[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]] = [
            (_API_KEY, "[API_KEY]"),
            (_EMAIL, "[EMAIL]"),
            (_CARD, _card),
            (_PHONE, _phone),
        ]
        steps += [(re.compile(p), "[MASKED]") for p in extra_patterns]
        self._steps = steps

    @property
    def keeps_content(self) -> bool:
        return self.mode != "drop"

    def apply(self, text: str | None) -> str | None:
        if text is None or self.mode == "drop":
            return None
        text = text[: self.max_chars]
        if self.mode == "mask":
            for pattern, replacement in self._steps:
                text = pattern.sub(replacement, text)
        return text
