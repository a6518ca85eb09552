"""Raw HTTP/1.1 over loopback sockets, for requests no well-behaved client would send.

A request is written byte for byte (broken framing, lying headers, half bodies, early
disconnects); the response is read with the benchmarks' incremental parser.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping

from benchmarks.http_client import HttpError, HttpResponse, ResponseParser

__all__ = ["HttpResponse", "exchange", "open_socket", "read_response", "request_bytes"]


def request_bytes(
    method: str,
    path: str,
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
    *,
    content_length: int | str | None = None,
) -> bytes:
    """One request; ``Content-Length`` is the body's unless ``content_length`` says otherwise."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    length = len(body) if content_length is None else content_length
    if method != "GET" or body:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def open_socket(port: int, timeout_s: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_response(sock: socket.socket, timeout_s: float = 10.0) -> HttpResponse:
    """The next response on ``sock``; ``HttpError`` when it closes or ``timeout_s`` passes."""
    parser = ResponseParser()
    deadline = time.monotonic() + timeout_s
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(1 << 16)
        except TimeoutError:
            raise HttpError(f"no response within {timeout_s} s") from None
        if not data:
            raise HttpError("connection closed before a whole response")
        responses = parser.feed(data)
        if responses:
            return responses[0]


def exchange(port: int, raw: bytes, timeout_s: float = 10.0) -> HttpResponse:
    """Send ``raw`` on a fresh connection and read one response."""
    with open_socket(port, timeout_s) as sock:
        sock.sendall(raw)
        return read_response(sock, timeout_s)
