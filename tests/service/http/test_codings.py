"""HTTP content codings for infer bodies: gzip and deflate both ways, within the body limit."""

from __future__ import annotations

import gzip
import zlib

import numpy as np
import pytest

from normserve.service.errors import BadRequest, PayloadTooLarge, UnsupportedEncoding
from normserve.service.http.codings import choose_encoding, compress, decompress


@pytest.mark.parametrize(
    ("coding", "pack"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", lambda b: zlib.compress(b)[2:-4]),  # raw deflate, as some clients send
        ("identity", lambda b: b),
        (None, lambda b: b),
    ],
)
def test_request_bodies_inflate(coding, pack):
    body = b'{"inputs": []}' * 100
    assert decompress(pack(body), coding, 1 << 20) == body


def test_inflating_past_the_limit_is_413_without_inflating_it_all():
    bomb = gzip.compress(b"\0" * (8 << 20))  # 8 MiB of zeros in a few KiB
    assert len(bomb) < 64 << 10
    with pytest.raises(PayloadTooLarge, match="inflates past the limit of 1048576 bytes"):
        decompress(bomb, "gzip", 1 << 20)


@pytest.mark.parametrize(
    ("body", "coding", "error"),
    [
        (b"not gzip at all", "gzip", BadRequest),
        (gzip.compress(b"x" * 1000)[:-10], "gzip", BadRequest),
        (b"anything", "br", UnsupportedEncoding),
    ],
)
def test_bad_codings_are_4xx(body, coding, error):
    with pytest.raises(error) as raised:
        decompress(body, coding, 1 << 20)
    assert 400 <= raised.value.status < 500


@pytest.mark.parametrize(
    ("header", "chosen"),
    [
        (None, None),
        ("gzip", "gzip"),
        ("deflate", "deflate"),
        ("br, deflate;q=0.5", "deflate"),
        ("gzip;q=0, deflate", "deflate"),
        ("identity", None),
        ("*", "gzip"),
    ],
)
def test_accept_encoding_negotiation(header, chosen):
    assert choose_encoding(header) == chosen


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_compress_round_trips_with_the_standard_library(coding):
    body = np.arange(1000, dtype=np.float32).tobytes()
    packed = compress(body, coding)
    assert (gzip.decompress(packed) if coding == "gzip" else zlib.decompress(packed)) == body


def test_identity_codings_pass_the_body_through():
    assert decompress(b"abc", "", 10) == b"abc"
    assert decompress(b"abc", " Identity ", 10) == b"abc"
