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

from opstrata.plugins.llmops import _textscan

__all__ = [
    "Flags",
    "byte_sizes",
    "email_windows",
    "escaped_brackets",
    "escaped_brackets_numpy",
    "scan",
    "scan_numpy",
    "splice",
]

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


def _distinct(rows: np.ndarray) -> np.ndarray:
    """The distinct values of sorted ``rows`` (``np.unique`` hashes them: ~2 ms for 30,000)."""
    if len(rows) < 2:
        return rows
    return rows[np.r_[True, rows[1:] != rows[:-1]]]


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


_PIECE = 1 << 20
"""The block is searched a piece of this many bytes at a time: each comparison makes a temporary
array of the piece's size, and temporaries of a whole column (10 MB for 30,000 calls) are fresh
pages every time, which cost more than the comparisons (2-3x slower than 1 MiB pieces here)."""
_OVERLAP = 8
"""Bytes past a piece's end a key prefix starting in it may need (``bearer``: 6)."""


def _digit_rows(digit: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Rows holding 7 digits with at most 3 other bytes between neighbours, from the sorted
    positions of every digit. Runs are found over the whole block first, and only the runs of 7
    or more are placed in their texts: a run that crosses from one text into the next (rare)
    is split at the boundary and its parts counted again."""
    if len(digit) < 7:
        return np.zeros(0, dtype=np.int64)
    starts = np.r_[0, np.flatnonzero(np.diff(digit) > 4) + 1]
    lengths = np.diff(np.r_[starts, len(digit)])
    long = lengths >= 7
    first, last = starts[long], starts[long] + lengths[long] - 1
    first_row, last_row = _rows_of(digit[first], offsets), _rows_of(digit[last], offsets)
    rows = [first_row[first_row == last_row]]
    for a, b in zip(first[first_row != last_row], last[first_row != last_row], strict=True):
        run_rows = _rows_of(digit[a : b + 1], offsets)
        parts = np.r_[0, np.flatnonzero(np.diff(run_rows)) + 1]
        sizes = np.diff(np.r_[parts, len(run_rows)])
        rows.append(run_rows[parts[sizes >= 7]])
    return np.unique(np.concatenate(rows)) if len(rows) > 1 else _distinct(rows[0])


def scan(texts: pa.Array) -> Flags:
    """The :class:`Flags` of ``texts`` (a ``string`` array; null texts have no bytes and are
    never flagged): one pass over the bytes in C (``_textscan``), the same rows as
    :func:`scan_numpy`."""
    offsets, data = _parts(texts)
    at, keys, digits = _textscan.scan(offsets, data)
    return Flags(*(np.frombuffer(rows, dtype=np.int64) for rows in (at, keys, digits)))


def scan_numpy(texts: pa.Array) -> Flags:
    """:func:`scan` with numpy: a dozen passes over the bytes (the reference)."""
    offsets, data = _parts(texts)
    start, end = int(offsets[0]), int(offsets[-1])
    ats, digits, keys = [], [], []
    for at in range(start, end, _PIECE):
        stop = min(at + _PIECE, end)
        piece = data[at:stop]
        ats.append(np.flatnonzero(piece == _AT) + at)
        # uint8 arithmetic wraps: bytes below "0" become large, so one comparison finds digits.
        digits.append(np.flatnonzero((piece - _ZERO) <= _NINE - _ZERO) + at)
        # Key prefixes may run past the piece: searched with a few bytes more, kept if they
        # start inside it.
        found = _key_starts(data[at : min(stop + _OVERLAP, end)])
        keys.append(found[found < stop - at] + at)
    if not ats:
        none = np.zeros(0, dtype=np.int64)
        return Flags(none, none, none)
    # Positions come sorted piece by piece, and so do their rows (key starts are sorted first:
    # each piece's come pattern by pattern).
    at_rows = _distinct(_rows_of(np.concatenate(ats), offsets))
    key_rows = np.unique(_rows_of(np.concatenate(keys), offsets))
    return Flags(at_rows, key_rows, _digit_rows(np.concatenate(digits), offsets))


def escaped_brackets(texts: pa.Array) -> np.ndarray:
    """Rows whose text has a backslash right before a ``[``: only there can a placeholder
    follow a JSON escape that a match cut (the exact test then runs on those alone). In C
    (``_textscan``: memchr to each "["), the same rows as :func:`escaped_brackets_numpy`."""
    offsets, data = _parts(texts)
    return np.frombuffer(_textscan.escaped_brackets(offsets, data), dtype=np.int64)


def escaped_brackets_numpy(texts: pa.Array) -> np.ndarray:
    """:func:`escaped_brackets` with numpy (the reference)."""
    offsets, data = _parts(texts)
    start, end = int(offsets[0]), int(offsets[-1])
    block = data[start:end]
    hits = np.flatnonzero((block[1:] == _BRACKET) & (block[:-1] == _BACKSLASH)) + start
    return np.unique(_rows_of(hits, offsets))


def email_windows(texts: pa.Array) -> tuple[bytes, pa.Array]:
    """Where privacy's e-mail pattern can match in ``texts`` (a ``string`` array without
    nulls): the byte spans (native int64 start, end pairs into the data) around each "@", and
    their bytes as one text, a newline between two windows (``_textscan.email_windows``). A
    replacement run over that text (one kernel call, not one per window: ~0.3 µs each) and put
    back with :func:`splice` is the one run over the whole texts, at a fraction of their
    bytes."""
    offsets, data = _parts(texts)
    spans, windows = _textscan.email_windows(offsets, data)
    return spans, pa.array([windows.decode()], pa.string())


def splice(texts: pa.Array, spans: bytes, windows: pa.Array) -> pa.Array:
    """``texts`` with the byte ``spans`` of :func:`email_windows` replaced by the windows, a
    newline between two, of the one text in ``windows``."""
    offsets, data = _parts(texts)
    joined = _parts(windows)
    start, end = int(joined[0][0]), int(joined[0][1])
    new_offsets, new_data = _textscan.splice(offsets, data, spans, joined[1][start:end])
    return pa.StringArray.from_buffers(
        len(texts), pa.py_buffer(new_offsets), pa.py_buffer(new_data)
    )
