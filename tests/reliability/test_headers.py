"""Hostile headers against a real server: wrong content types, unknown codings, gzip bombs,
lying or oversized lengths, malformed HTTP. Each is a 4xx with ``{"error"}`` (or, for a
content type, ignored as documented), and the server answers correctly afterwards.

``Content-Type`` is not used to choose a decoder: V2 clients send none, ``application/json``
or ``application/octet-stream`` for the same bodies (tritonclient sends the latter for JSON),
so the body's own framing decides, as in Triton.
"""

from __future__ import annotations

import gzip
import time
import tracemalloc
import zlib

import pytest

from benchmarks.server_process import memory_kib
from normserve.service.errors import PayloadTooLarge
from normserve.service.http.codings import decompress
from tests.reliability.conftest import MAX_BODY_BYTES, assert_error, port_of
from tests.reliability.raw_http import exchange, open_socket, read_response, request_bytes

pytestmark = pytest.mark.usefixtures("healthy_after")

INFER = "/v2/models/affine/versions/1/infer"
BODY = b'{"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}'


def zeros_gzip(size: int, chunk: int = 1 << 20) -> bytes:
    """``size`` zero bytes, gzipped without holding them in memory."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(chunk)
    parts = [packer.compress(zeros) for _ in range(size // chunk)]
    return b"".join([*parts, packer.flush()])


@pytest.mark.parametrize(
    "content_type",
    [
        "text/html",
        "multipart/form-data; boundary=x",
        "application/x-www-form-urlencoded",
        "application/octet-stream",
        "application/json; charset=latin-1",
        "\u00ff/\u00fe",
    ],
)
def test_any_content_type_is_ignored_and_the_body_decides(healthy_after, content_type):
    port = port_of(healthy_after)
    good = exchange(port, request_bytes("POST", INFER, BODY, {"Content-Type": content_type}))
    assert good.status == 200, good.body
    form = b"--x\r\nContent-Disposition: form-data; name=inputs\r\n\r\n[]\r\n--x--"
    bad = exchange(port, request_bytes("POST", INFER, form, {"Content-Type": content_type}))
    assert_error(bad, 400, "not valid JSON")


@pytest.mark.parametrize("coding", ["br", "compress", "zstd", "gzip, gzip", "x-gzip;q=1"])
def test_unsupported_content_encoding_is_415(healthy_after, coding):
    raw = request_bytes("POST", INFER, gzip.compress(BODY), {"Content-Encoding": coding})
    assert_error(exchange(port_of(healthy_after), raw), 415, "gzip, deflate or identity")


@pytest.mark.parametrize(
    ("body", "coding", "needle"),
    [
        (BODY, "gzip", "not valid gzip data"),
        (gzip.compress(BODY)[:-12], "gzip", "truncated"),
        (gzip.compress(BODY) + b"trailing", "gzip", "trailing bytes"),
        (b"\x78\x9c garbage", "deflate", "not valid deflate data"),
        (b"", "gzip", "not valid gzip data"),
    ],
)
def test_corrupt_compressed_bodies_are_400(healthy_after, body, coding, needle):
    raw = request_bytes("POST", INFER, body, {"Content-Encoding": coding})
    assert_error(exchange(port_of(healthy_after), raw), 400, needle)


def test_a_gzip_bomb_is_refused_without_being_inflated(healthy_after):
    """60 MiB of zeros in a body under the 64 KiB limit: 413, and the server's peak memory does
    not grow by anything like 60 MiB (it inflates at most the limit plus one byte)."""
    bomb = zeros_gzip(60 << 20)
    assert len(bomb) < MAX_BODY_BYTES
    pid = healthy_after.proc.pid
    peak_before = memory_kib(pid)["VmHWM"]
    started = time.perf_counter()
    raw = request_bytes("POST", INFER, bomb, {"Content-Encoding": "gzip"})
    response = exchange(port_of(healthy_after), raw)
    elapsed = time.perf_counter() - started
    assert_error(response, 413, f"inflates past the limit of {MAX_BODY_BYTES} bytes")
    grown_mib = (memory_kib(pid)["VmHWM"] - peak_before) / 1024
    assert grown_mib < 16, f"peak RSS grew by {grown_mib:.1f} MiB"
    assert elapsed < 2.0  # inflating 60 MiB, let alone parsing it, would take longer


def test_inflating_stops_at_the_limit_in_memory_too():
    """The decoder itself: 128 MiB of zeros against a 1 MiB limit allocate about 1 MiB."""
    bomb = zeros_gzip(128 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLarge):
            decompress(bomb, "gzip", 1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"peak allocation {peak / 2**20:.1f} MiB"


def test_content_length_over_the_limit_is_refused_before_the_body_is_sent(healthy_after):
    """Only the headers are sent: the 413 comes back without the server waiting for a body."""
    with open_socket(port_of(healthy_after)) as sock:
        sock.sendall(request_bytes("POST", INFER, content_length=10**12))
        response = read_response(sock, timeout_s=3.0)
    assert_error(response, 413, "request body of 1000000000000 bytes exceeds the limit")


def test_expect_100_continue_over_the_limit_gets_413_not_continue(healthy_after):
    with open_socket(port_of(healthy_after)) as sock:
        headers = {"Expect": "100-continue"}
        sock.sendall(request_bytes("POST", INFER, headers=headers, content_length=10**9))
        response = read_response(sock, timeout_s=3.0)
    assert_error(response, 413, "exceeds the limit")


def test_a_chunked_body_over_the_limit_is_413(healthy_after):
    chunk = b"%x\r\n%s\r\n" % (32 << 10, b" " * (32 << 10))
    raw = (
        f"POST {INFER} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        + chunk * 3
        + b"0\r\n\r\n"
    )
    assert_error(exchange(port_of(healthy_after), raw), 413, "exceeds the limit")


def post_head(*headers: str, body: bytes = b"") -> bytes:
    return "\r\n".join([f"POST {INFER} HTTP/1.1", "Host: x", *headers, "", ""]).encode() + body


@pytest.mark.parametrize(
    "raw",
    [
        post_head("Content-Length: -5"),
        post_head("Content-Length: 3", "Content-Length: 4", body=b"abcd"),
        post_head("Content-Length: ten"),
        post_head("Content-Length: 1", "Transfer-Encoding: chunked", body=b"0\r\n\r\n"),
        b"NOT HTTP AT ALL\r\n\r\n",
        b"GET /v2/health/live HTTP/9.9\r\n\r\n",
        b"GET /v2/models/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
    ids=[
        "negative length",
        "two lengths",
        "length not a number",
        "length and chunked",
        "garbage",
        "HTTP/9.9",
        "raw non-ASCII target",
    ],
)
def test_malformed_http_is_a_json_400_and_the_connection_closes(healthy_after, raw):
    with open_socket(port_of(healthy_after)) as sock:
        sock.sendall(raw)
        response = read_response(sock, timeout_s=3.0)
        assert_error(response, 400, "malformed HTTP request")
        assert response.headers["connection"] == "close"
        sock.settimeout(3.0)
        assert sock.recv(1) == b""  # closed by the server


@pytest.mark.parametrize(
    "accept", ["gzip;q=abc", "*;q=0", "identity;q=0", "\u00ff", "gzip;q=nan", ";;,,"]
)
def test_odd_accept_encoding_never_fails_a_request(healthy_after, accept):
    response = exchange(
        port_of(healthy_after), request_bytes("POST", INFER, BODY, {"Accept-Encoding": accept})
    )
    assert response.status == 200
