"""What happens to captured message content before it is stored: kept, masked or dropped.

Masking replaces what identifies people or unlocks accounts with a placeholder naming what was
there, e.g. ``[EMAIL]``: e-mail addresses, phone numbers, payment card numbers (13 to 19 digits
that pass the Luhn check, with spaces or dashes between groups) and API keys or bearer tokens.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from opstrata.plugins.llmops.textscan import (
    byte_sizes,
    email_windows,
    escaped_brackets,
    scan,
    splice,
)

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


# The same patterns in RE2 (pyarrow.compute runs them over a whole column in C++), for the JSON
# text of messages as the instrumentation sent it. A key may follow a JSON escape (``\\n``), so
# the word boundary before it is spelled out and kept in the replacement.
_RE2_API_KEY = (
    r"(^|[^A-Za-z0-9_]|\\[nrtbf]|\\u[0-9a-fA-F]{4})"
    r"(?:sk-(?:proj-|ant-)?[A-Za-z0-9_-]{16,}|AKIA[0-9A-Z]{16}|AIza[0-9A-Za-z_-]{35}"
    r"|gh[pousr]_[A-Za-z0-9]{30,}|xox[abprs]-[A-Za-z0-9-]{10,}|hf_[A-Za-z0-9]{30,})"
    r"|(?i:bearer)(?:\s|\\[nrt])+[A-Za-z0-9._~+/=-]{16,}"
)
# A text without any key prefix (sk-, AKIA, AIza, gh?_, xox?-, hf_, bearer) has no key: the
# column's bytes are searched for them at once (:func:`.textscan.scan`), as for "@" and digits.
_RE2_EMAIL = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
_RE2_DIGITS = r"\d(?:[ ().+-]{0,3}\d){6}"
# A placeholder right after an odd number of backslashes: the match ate part of a JSON escape
# (``\\nbob@example.com``), so that text is masked the slow, exact way instead.
_RE2_BROKEN = r"(?:^|[^\\])(?:\\\\)*\\\[(?:EMAIL|PHONE|CARD|API_KEY|MASKED)\]"


def _mask_emails(texts: pa.Array) -> pa.Array:
    """``texts`` with e-mail addresses replaced as RE2 replaces them over the whole texts, but
    run on the bytes around each "@" only (:func:`.textscan.email_windows`): the texts with an
    "@" are whole JSON messages, a few KB each, their addresses a few dozen bytes."""
    # The windows read int32 offsets of one unsliced, null-free string array (what a take
    # hands over); anything else (large_string, chunks, slices, nulls): the whole texts.
    if (
        not isinstance(texts, pa.Array)
        or texts.type != pa.string()
        or texts.null_count
        or texts.offset
    ):
        return pc.replace_substring_regex(texts, _RE2_EMAIL, "[EMAIL]")
    spans, windows = email_windows(texts)
    if not spans:
        return texts
    masked = pc.replace_substring_regex(windows, _RE2_EMAIL, "[EMAIL]")
    return splice(texts, spans, masked)


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
        self._max_chars = pa.scalar(max_chars, pa.int32())  # typed: see recognise._EMPTY
        self._extra = [re.compile(p) for p in extra_patterns]

        self._re2_extra: list[str] = []
        for pattern in extra_patterns:
            try:  # RE2 when it accepts the pattern (no look-arounds, no back-references)
                pc.replace_substring_regex(pa.array([""]), pattern, "")
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                self._re2_extra = []
                break
            self._re2_extra.append(pattern)
        self._all_re2 = len(self._re2_extra) == len(self._extra)

    @property
    def keeps_content(self) -> bool:
        return self.mode != "drop"

    def apply_json(self, texts: pa.Array) -> tuple[pa.Array, np.ndarray]:
        """Mask a column of message JSON texts (``gen_ai.input.messages`` as sent) without
        parsing them: e-mails, keys and extra patterns are replaced by RE2 over the whole column
        at once. Returns the masked texts and the rows that must instead be parsed and masked
        message by message with :meth:`apply` (``exact``): those longer than
        ``max_message_chars`` (each message is cut to it), those with a run of 7 digits (card
        and phone numbers need the Luhn check and look-arounds RE2 has not), those where a match
        ate part of a JSON escape, and all of them when an extra pattern is not RE2."""
        texts = texts.cast(pa.string()) if texts.type != pa.string() else texts
        exact = self._too_long(texts)
        if self.mode != "mask":
            return texts, exact
        if not self._all_re2:
            return texts, pc.is_valid(texts).to_numpy(zero_copy_only=False)
        if self._re2_extra:  # every text goes through every pattern
            rows = np.flatnonzero(pc.is_valid(texts).to_numpy(zero_copy_only=False))
            keys, digits = True, rows
        else:  # only the texts that may match each pattern (see textscan)
            flags = scan(texts)
            keys = len(flags.keys) > 0
            rows = np.union1d(flags.at, flags.keys) if keys else flags.at
            digits = flags.digits
        if len(digits):  # card and phone numbers: the exact way
            found = pc.match_substring_regex(texts.take(pa.array(digits)), _RE2_DIGITS)
            exact[digits[found.to_numpy(zero_copy_only=False)]] = True
        if len(rows) == 0:
            return texts, exact
        some = texts.take(pa.array(rows))
        if keys:
            some = pc.replace_substring_regex(some, _RE2_API_KEY, r"\1[API_KEY]")
        some = _mask_emails(some)
        for pattern in self._re2_extra:
            some = pc.replace_substring_regex(some, pattern, "[MASKED]")
        suspect = escaped_brackets(some)  # only there can a match have cut a JSON escape
        if len(suspect):
            broken = pc.match_substring_regex(some.take(pa.array(suspect)), _RE2_BROKEN)
            exact[rows[suspect[broken.to_numpy(zero_copy_only=False)]]] = True
        replace = np.zeros(len(texts), dtype=bool)
        replace[rows] = True
        return pc.replace_with_mask(texts, pa.array(replace), some), exact

    def _too_long(self, texts: pa.Array) -> np.ndarray:
        """Texts of more than ``max_chars`` characters; only those of more bytes can be."""
        sizes = byte_sizes(texts)
        exact = np.zeros(len(texts), dtype=bool)
        long = np.flatnonzero(sizes > self.max_chars)
        if len(long):
            chars = pc.utf8_length(texts.take(pa.array(long)))
            exact[long] = pc.fill_null(pc.greater(chars, self._max_chars), False).to_numpy(
                zero_copy_only=False
            )
        return exact

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
