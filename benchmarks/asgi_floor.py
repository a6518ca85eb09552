"""The floor of the HTTP server itself: uvicorn (same defaults as ``normserve serve``: uvloop and
httptools when installed) running a raw ASGI app that reads the body and answers 11 bytes.

Beside ``GET /v2/health/live`` on the real server, it separates what uvicorn costs from what the
application stack (FastAPI, Starlette, middlewares, routing) adds.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from benchmarks.http_client import HttpError, get
from benchmarks.server_process import HOST, free_port, stop_process

__all__ = ["app", "uvicorn_floor_process"]

_BODY = b'{"ok":true}'
_HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"11")]


async def app(
    scope: dict[str, Any],
    receive: Callable[[], Awaitable[dict[str, Any]]],
    send: Callable[[dict[str, Any]], Awaitable[None]],
) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _BODY})


@contextlib.contextmanager
def uvicorn_floor_process(timeout_s: float = 30.0) -> Iterator[int]:
    """uvicorn serving :func:`app` on a free loopback port, in its own process; yields the port."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "benchmarks.asgi_floor:app", "--host", HOST]
    command += ["--port", str(port), "--log-level", "warning", "--no-access-log"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(OSError, HttpError):
                if get(HOST, port, "/", timeout_s=1.0).status == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("uvicorn floor server did not start")
            time.sleep(0.02)
        yield port
    finally:
        stop_process(proc, signal.SIGTERM, grace_s=10)
