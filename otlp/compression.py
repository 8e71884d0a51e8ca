"""Request body decompression with the size limit applied to the output (gzip bombs stop at the
limit instead of filling memory)."""

from __future__ import annotations

import io
import zlib

import zstandard

from opstrata.errors import InvalidRequest, RequestTooLarge, UnsupportedMediaType

__all__ = ["SUPPORTED_ENCODINGS", "decompress"]

SUPPORTED_ENCODINGS = ("identity", "gzip", "deflate", "zstd")
_ZLIB_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def _too_large(limit: int) -> RequestTooLarge:
    return RequestTooLarge(f"request body exceeds {limit} bytes after decompression")


def _inflate(data: bytes, wbits: int, limit: int) -> bytes:
    out = bytearray()
    # gzip allows several members back to back; each needs a fresh decompressor.
    while data:
        engine = zlib.decompressobj(wbits)
        try:
            out += engine.decompress(data, limit + 1 - len(out))
        except zlib.error as exc:
            raise InvalidRequest(f"cannot decompress body: {exc}") from exc
        if len(out) > limit or engine.unconsumed_tail:
            raise _too_large(limit)
        if not engine.eof:
            raise InvalidRequest("cannot decompress body: truncated stream")
        data = engine.unused_data
    return bytes(out)


def decompress(data: bytes, content_encoding: str, limit: int) -> bytes:
    """The decompressed body; ``RequestTooLarge`` past ``limit`` bytes."""
    encoding = content_encoding.strip().lower() or "identity"
    if encoding == "identity":
        if len(data) > limit:
            raise _too_large(limit)
        return data
    if encoding in _ZLIB_WBITS:
        return _inflate(data, _ZLIB_WBITS[encoding], limit)
    if encoding == "zstd":
        try:
            with zstandard.ZstdDecompressor().stream_reader(
                io.BytesIO(data), read_across_frames=True
            ) as reader:
                out = reader.read(limit + 1)
        except zstandard.ZstdError as exc:
            raise InvalidRequest(f"cannot decompress body: {exc}") from exc
        if len(out) > limit:
            raise _too_large(limit)
        return out
    raise UnsupportedMediaType(
        f"unsupported Content-Encoding {content_encoding!r}; use one of "
        + ", ".join(SUPPORTED_ENCODINGS)
    )
