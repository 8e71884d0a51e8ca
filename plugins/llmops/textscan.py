"""Which texts of a string column may hold something to mask, found from its bytes at once.

Arrow's regex kernels cost ~0.4 µs per text and pass whatever they search for, so a pre-filter
run per text costs as much as the masking it saves. Here the column's data buffer is searched as
one block: numpy finds every ``@``, every run of digits and every key prefix (``sk-``, ``AKIA``,
``gh?_``, ``bearer`` …, found from their rarer bytes: ``-``, ``_``, ``A``, ``b``). Each answer is
a superset of the texts the corresponding pattern can match, so the exact patterns then run on
those texts only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

__all__ = ["Flags", "byte_sizes", "escaped_brackets", "scan"]

_AT = ord("@")
_ZERO, _NINE = ord("0"), ord("9")
_BACKSLASH, _BRACKET = ord("\\"), ord("[")


@dataclass(frozen=True, slots=True)
class Flags:
    """Row numbers (sorted, unique) of the texts that may hold each kind of match."""

    at: np.ndarray  # an "@": a possible e-mail address
    keys: np.ndarray  # a key prefix: sk-, AKIA, AIza, gh?_, xox?-, hf_, bearer (any case)
    digits: np.ndarray  # 7 digits with at most 3 other bytes between neighbours


def _parts(texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The offsets (``len + 1``, absolute into the data) and data bytes of a string array."""
    offsets_buffer, data_buffer = texts.buffers()[1:3]
    if offsets_buffer is None:  # e.g. an empty array
        return np.zeros(len(texts) + 1, dtype=np.int32), np.zeros(0, dtype=np.uint8)
    offsets = np.frombuffer(offsets_buffer, dtype=np.int32)
    offsets = offsets[texts.offset : texts.offset + len(texts) + 1]
    if data_buffer is None:
        return offsets, np.zeros(0, dtype=np.uint8)
    return offsets, np.frombuffer(data_buffer, dtype=np.uint8)


def byte_sizes(texts: pa.Array) -> np.ndarray:
    """The size in bytes of each text (null: 0)."""
    return np.diff(_parts(texts)[0])


def _rows_of(positions: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    return np.searchsorted(offsets, positions, side="right") - 1


def _at(block: np.ndarray, where: np.ndarray, text: bytes) -> np.ndarray:
    """Which of the positions ``where`` start ``text`` in ``block`` (bytes past its end: no)."""
    where = where[where + len(text) <= len(block)]
    ok = np.ones(len(where), dtype=bool)
    for i, byte in enumerate(text):
        ok &= block[where + i] == byte
    return where[ok]


def _key_starts(block: np.ndarray) -> np.ndarray:
    """Positions in ``block`` where a key prefix of privacy's API-key pattern may start (each
    alternative of the pattern contains one of these)."""
    dash = np.flatnonzero(block == ord("-"))
    under = np.flatnonzero(block == ord("_"))
    upper_a = np.flatnonzero(block == ord("A"))
    b = np.flatnonzero((block | 0x20) == ord("b"))
    found = [
        _at(block, dash[dash >= 2] - 2, b"sk-"),
        _at(block, dash[dash >= 4] - 4, b"xox"),
        _at(block, under[under >= 2] - 2, b"hf_"),
        _at(block, under[under >= 3] - 3, b"gh"),
        _at(block, upper_a, b"AKIA"),
        _at(block, upper_a, b"AIza"),
    ]
    b = b[b + 6 <= len(block)]
    lower = np.ones(len(b), dtype=bool)
    for i, byte in enumerate(b"earer", start=1):  # bearer, in any case (ASCII letters only)
        lower &= (block[b + i] | 0x20) == byte
    found.append(b[lower])
    return np.concatenate(found)


def scan(texts: pa.Array) -> Flags:
    """The :class:`Flags` of ``texts`` (a ``string`` array; null texts have no bytes and are
    never flagged)."""
    offsets, data = _parts(texts)
    start, end = int(offsets[0]), int(offsets[-1])
    block = data[start:end]
    at = np.unique(_rows_of(np.flatnonzero(block == _AT) + start, offsets))
    digit = np.flatnonzero((block >= _ZERO) & (block <= _NINE)) + start
    digits = np.zeros(0, dtype=np.int64)
    if len(digit) >= 7:
        rows = _rows_of(digit, offsets)
        # A run: digits at most 4 bytes apart in one text; a run of 7 may match the pattern.
        breaks = np.flatnonzero((np.diff(digit) > 4) | (np.diff(rows) != 0)) + 1
        starts = np.r_[0, breaks]
        lengths = np.diff(np.r_[starts, len(digit)])
        digits = np.unique(rows[starts[lengths >= 7]])
    keys = np.unique(_rows_of(_key_starts(block) + start, offsets))
    return Flags(at, keys, digits)


def escaped_brackets(texts: pa.Array) -> np.ndarray:
    """Rows whose text has a backslash right before a ``[``: only there can a placeholder
    follow a JSON escape that a match cut (the exact test then runs on those alone)."""
    offsets, data = _parts(texts)
    start, end = int(offsets[0]), int(offsets[-1])
    block = data[start:end]
    hits = np.flatnonzero((block[1:] == _BRACKET) & (block[:-1] == _BACKSLASH)) + start
    return np.unique(_rows_of(hits, offsets))
