"""What happens to captured message content before it is stored: kept, masked or dropped.

Masking replaces what identifies people or unlocks accounts with a placeholder naming what was
there, e.g. ``[EMAIL]``: e-mail addresses, phone numbers, payment card numbers (13 to 19 digits
that pass the Luhn check, with spaces or dashes between groups) and API keys or bearer tokens.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

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
_KEY_HINT = re.compile(r"sk-|AKIA|AIza|gh[pousr]_|xox|hf_|(?i:bearer)")
_DIGITS = re.compile(r"\d(?:[ ().+-]{0,3}\d){6}")
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
        self._extra = [re.compile(p) for p in extra_patterns]

    @property
    def keeps_content(self) -> bool:
        return self.mode != "drop"

    def apply(self, text: str | None) -> str | None:
        if text is None or self.mode == "drop":
            return None
        text = text[: self.max_chars]
        if self.mode == "mask":
            # Cheap tests first: most text has no key prefix, no "@" and no run of 7 digits,
            # and then the costlier patterns are not run at all.
            if _KEY_HINT.search(text):
                text = _API_KEY.sub("[API_KEY]", text)
            if "@" in text:
                text = _EMAIL.sub("[EMAIL]", text)
            if _DIGITS.search(text):
                text = _PHONE.sub(_phone, _CARD.sub(_card, text))
            for pattern in self._extra:
                text = pattern.sub("[MASKED]", text)
        return text
