"""HTTP content codings for infer bodies: gzip and deflate, both ways, within the body limit."""

from __future__ import annotations

import zlib

from normserve.service.errors import BadRequest, PayloadTooLarge, UnsupportedEncoding

__all__ = ["choose_encoding", "compress", "decompress"]

_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def decompress(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """The inflated body; more than ``limit`` bytes once inflated is refused (413)."""
    if content_encoding is None:
        return body
    coding = content_encoding.strip().lower()
    if coding in ("", "identity"):
        return body
    if coding not in _WBITS:
        raise UnsupportedEncoding(
            f"Content-Encoding {content_encoding[:32]!r} is not supported; use gzip, deflate "
            "or identity"
        )
    inflated = _inflate(body, _WBITS[coding], limit, coding)
    if inflated is None and coding == "deflate":  # some clients send raw deflate, no zlib header
        inflated = _inflate(body, -zlib.MAX_WBITS, limit, coding)
    if inflated is None:
        raise BadRequest(f"request body is not valid {coding} data")
    return inflated


_PIECE = 1 << 20  # inflated a MiB at a time: a bomb is refused before one big buffer exists


def _inflate(body: bytes, wbits: int, limit: int, coding: str) -> bytes | None:
    inflater = zlib.decompressobj(wbits)
    pieces: list[bytes] = []
    size = 0
    pending = body
    try:
        while True:
            piece = inflater.decompress(pending, _PIECE)
            pending = inflater.unconsumed_tail
            size += len(piece)
            if size > limit:
                raise PayloadTooLarge(f"request body inflates past the limit of {limit} bytes")
            if piece:
                pieces.append(piece)
            if inflater.eof or len(piece) < _PIECE:  # a full piece may have more behind it
                break
    except zlib.error:
        return None
    data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
    if not inflater.eof or inflater.unused_data:
        return None if not data else _truncated(coding)
    return data


def _truncated(coding: str) -> bytes:
    raise BadRequest(f"request body is truncated or has trailing bytes after its {coding} data")


def choose_encoding(accept_encoding: str | None) -> str | None:
    """gzip or deflate when the client accepts one (q > 0), gzip first; else None."""
    if not accept_encoding:
        return None
    accepted: dict[str, float] = {}
    for part in accept_encoding.lower().split(","):
        coding, _, params = part.strip().partition(";")
        q = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                q = float(params[2:])
            except ValueError:
                q = 0.0
        accepted[coding.strip()] = q
    for coding in ("gzip", "deflate"):
        if accepted.get(coding, accepted.get("*", 0.0)) > 0:
            return coding
    return None


def compress(body: bytes, coding: str) -> bytes:
    """gzip or zlib-wrapped deflate (what HTTP calls deflate), at a fast level."""
    compressor = zlib.compressobj(1, zlib.DEFLATED, _WBITS[coding])
    return compressor.compress(body) + compressor.flush()
