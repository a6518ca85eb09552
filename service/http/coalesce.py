"""One write per small answer: a response's head goes out with its body.

uvicorn writes a response's status line and headers when the app sends
``http.response.start``, and the body when it sends ``http.response.body``: two ``send()``
system calls and, with ``TCP_NODELAY``, two TCP segments for every answer, so the client wakes
twice as well. ``HeadWithBody`` stands in for the connection's transport inside one request
cycle: it holds the head back when a body of known length must follow, and writes both in one
call. Everything else (``100 Continue``, chunked and ``HEAD`` answers, bodies of length 0, a
cycle that fails) is written as it comes.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

__all__ = ["JOIN_BELOW_BYTES", "HeadWithBody"]

JOIN_BELOW_BYTES = 256 * 1024
"""Bodies up to this size are copied behind the head; larger ones follow it in a second write
(a copy of a large body costs more than the system call it saves)."""


class HeadWithBody:
    """The transport as one request cycle sees it; any other attribute is the transport's.

    It refers to its cycle weakly: the cycle refers to it, and a reference cycle would keep
    every finished request's scope and body alive until a full garbage collection."""

    __slots__ = ("_cycle", "_head", "_head_seen", "_transport")

    def __init__(self, transport: asyncio.Transport, cycle: RequestResponseCycle) -> None:
        self._transport = transport
        self._cycle = weakref.ref(cycle)
        self._head: bytes | None = None
        self._head_seen = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        head = self._head
        if head is not None:
            self._head = None
            if len(data) <= JOIN_BELOW_BYTES:
                self._transport.write(head + data)
                return
            self._transport.write(head)
        elif (
            not self._head_seen and (cycle := self._cycle()) is not None and cycle.response_started
        ):
            # uvicorn marks the response started, then writes its head: this is the head.
            self._head_seen = True
            if (
                cycle.chunked_encoding is False
                and cycle.expected_content_length > 0
                and cycle.scope["method"] != "HEAD"
            ):
                self._head = bytes(data)  # a body of that length is the next write
                return
        self._transport.write(data)

    def close(self) -> None:
        head, self._head = self._head, None
        if head is not None:  # the body never came (the app failed mid-answer): the head alone
            self._transport.write(head)
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
