"""A minimal HTTP/1.1 keep-alive client over raw sockets, cheap enough not to measure itself.

Requests are encoded once into bytes and sent as they are; responses are parsed incrementally
(``Content-Length`` or chunked bodies, which is everything uvicorn sends). No redirects, no TLS,
no retries: the benchmarks talk only to a server they started on 127.0.0.1.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "HttpConnection",
    "HttpError",
    "HttpResponse",
    "ResponseParser",
    "encode_request",
    "get",
]

_MAX_HEADER_BYTES = 64 * 1024


class HttpError(RuntimeError):
    """A malformed response, a closed connection or a timeout."""


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: dict[str, str]  # lower-case names; a repeated header keeps its last value
    body: bytes


def encode_request(
    method: str,
    path: str,
    *,
    host: str,
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
) -> bytes:
    """One complete HTTP/1.1 request as bytes; ``Content-Length`` is set from ``body``."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    for name, value in (headers or {}).items():
        if name.lower() in {"host", "content-length"}:
            raise ValueError(f"header {name!r} is set by encode_request")
        lines.append(f"{name}: {value}")
    if body or method not in {"GET", "HEAD"}:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class ResponseParser:
    """Feed bytes as they arrive; get back every response completed so far, in order."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._head: tuple[int, dict[str, str]] | None = None
        self._length: int | None = None  # body bytes expected; None while chunked
        self._chunks: list[bytes] = []
        self._chunked = False

    @property
    def idle(self) -> bool:
        """No partial response is buffered."""
        return self._head is None and not self._buffer

    def feed(self, data: bytes) -> list[HttpResponse]:
        self._buffer += data
        done: list[HttpResponse] = []
        while True:
            response = self._next()
            if response is None:
                return done
            done.append(response)

    def _next(self) -> HttpResponse | None:
        if self._head is None and not self._parse_head():
            return None
        assert self._head is not None
        if self._chunked:
            body = self._parse_chunks()
            if body is None:
                return None
        else:
            assert self._length is not None
            if len(self._buffer) < self._length:
                return None
            body = bytes(self._buffer[: self._length])
            del self._buffer[: self._length]
        status, headers = self._head
        self._head = None
        return HttpResponse(status=status, headers=headers, body=body)

    def _parse_head(self) -> bool:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > _MAX_HEADER_BYTES:
                raise HttpError("response head exceeds 64 KiB")
            return False
        lines = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
        del self._buffer[: end + 4]
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise HttpError(f"malformed status line {lines[0][:80]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise HttpError(f"malformed header line {line[:80]!r}")
            headers[name.strip().lower()] = value.strip()
        self._head = (int(parts[1]), headers)
        self._chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self._chunks = []
        if self._chunked:
            self._length = None
        elif "content-length" in headers:
            self._length = int(headers["content-length"])
        elif int(parts[1]) in {204, 304} or 100 <= int(parts[1]) < 200:
            self._length = 0
        else:
            raise HttpError("response has neither Content-Length nor chunked encoding")
        return True

    def _parse_chunks(self) -> bytes | None:
        while True:
            line_end = self._buffer.find(b"\r\n")
            if line_end < 0:
                return None
            size_text = bytes(self._buffer[:line_end]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise HttpError(f"malformed chunk size {size_text[:20]!r}") from None
            if size == 0:
                trailer_end = self._buffer.find(b"\r\n\r\n", line_end)
                if trailer_end < 0:
                    return None
                del self._buffer[: trailer_end + 4]
                body = b"".join(self._chunks)
                self._chunks = []
                return body
            start = line_end + 2
            if len(self._buffer) < start + size + 2:
                return None
            self._chunks.append(bytes(self._buffer[start : start + size]))
            del self._buffer[: start + size + 2]


class HttpConnection:
    """A blocking keep-alive connection with Nagle off: one request at a time."""

    def __init__(self, host: str, port: int, *, timeout_s: float = 30.0) -> None:
        self.host, self.port = host, port
        self._sock = socket.create_connection((host, port), timeout=timeout_s)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._parser = ResponseParser()

    def request(self, raw: bytes) -> HttpResponse:
        """Send one encoded request and read its response."""
        self._sock.sendall(raw)
        while True:
            try:
                data = self._sock.recv(1 << 20)
            except TimeoutError:
                raise HttpError("timed out waiting for a response") from None
            if not data:
                raise HttpError("connection closed by the server")
            responses = self._parser.feed(data)
            if responses:
                if len(responses) > 1 or not self._parser.idle:
                    raise HttpError("the server sent more than one response to one request")
                return responses[0]

    def timed(self, raw: bytes) -> tuple[float, HttpResponse]:
        """``(seconds from first byte sent to last byte received, response)``."""
        start = time.perf_counter()
        response = self.request(raw)
        return time.perf_counter() - start, response

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> HttpConnection:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def get(host: str, port: int, path: str, *, timeout_s: float = 5.0) -> HttpResponse:
    """One GET on a fresh connection (health checks, metadata)."""
    with HttpConnection(host, port, timeout_s=timeout_s) as conn:
        return conn.request(encode_request("GET", path, host=f"{host}:{port}"))
