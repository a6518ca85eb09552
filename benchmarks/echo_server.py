"""A trivial HTTP/1.1 keep-alive server: the load generator's ceiling and its smoke test target.

Every request is answered at once with a small fixed body; ``/status/<code>`` answers that
status and ``/chunked`` answers with a chunked body. It counts the requests it has answered.
Run it alone (``python -m benchmarks.echo_server --port N``) to measure the load generator
without a real server's cost, or in a thread (``EchoServer``) inside a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from types import TracebackType

from benchmarks.server_process import stop_process

__all__ = ["EchoServer", "echo_process", "serve_forever"]

_BODY = b'{"ok":true}'
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 503: "Service Unavailable"}


def _response(path: str) -> bytes:
    if path == "/chunked":
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked"
        return head + b"\r\n\r\n5\r\n" + _BODY[:5] + b"\r\n6\r\n" + _BODY[5:] + b"\r\n0\r\n\r\n"
    status = 200
    if path.startswith("/status/") and path[8:].isdigit():
        status = int(path[8:])
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(_BODY)}\r\n\r\n"
    )
    return head.encode("latin-1") + _BODY


class _Handler(asyncio.Protocol):
    def __init__(self, counter: list[int]) -> None:
        self.counter = counter
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        out = bytearray()
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            length = 0
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                break
            del self.buffer[: end + 4 + length]
            path = head[0].split(" ")[1]
            out += _response(path)
            self.counter[0] += 1
        if out and self.transport is not None:
            self.transport.write(bytes(out))


async def serve_forever(host: str, port: int, counter: list[int] | None = None) -> None:
    box = counter if counter is not None else [0]
    server = await asyncio.get_running_loop().create_server(lambda: _Handler(box), host, port)
    async with server:
        await server.serve_forever()


class EchoServer:
    """The server on its own event loop in a daemon thread; ``port`` is picked by the OS."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self._counter = [0]
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._handlers: list[_Handler] = []
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def answered(self) -> int:
        return self._counter[0]

    def __enter__(self) -> EchoServer:
        def handler() -> _Handler:
            made = _Handler(self._counter)
            self._handlers.append(made)
            return made

        self._server = self._loop.run_until_complete(
            self._loop.create_server(handler, self.host, 0)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._thread.start()
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for handler in list(self._handlers):
                if handler.transport is not None:
                    handler.transport.close()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


@contextlib.contextmanager
def echo_process(host: str = "127.0.0.1", timeout_s: float = 20.0) -> Iterator[int]:
    """The server in its own process (its own core, its own GIL); yields its port."""
    with socket.socket() as s:
        s.bind((host, 0))
        port = int(s.getsockname()[1])
    command = [sys.executable, "-m", "benchmarks.echo_server", "--host", host, "--port", str(port)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                socket.create_connection((host, port), timeout=1.0).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("echo server did not start") from None
                time.sleep(0.02)
        yield port
    finally:
        stop_process(proc, signal.SIGTERM, grace_s=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    asyncio.run(serve_forever(args.host, args.port))


if __name__ == "__main__":
    main()
